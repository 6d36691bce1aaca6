"""`carbond report` from the ledger: totals equal the ledger's sums; the migration is idempotent."""

import io
import json
import random
import sqlite3

import pytest

from carbond.errors import JobInputError
from carbond.ledger import ACCOUNTED, DEAD, WRITTEN, Entry, Ledger
from carbond.ledger_columns import COLUMNS, Details, connect, migrate, record_details, record_unattributed
from carbond.summary import UNATTRIBUTED, parse_groups, totals, write

DAY = 86400
T0 = 1_700_000_000 - 1_700_000_000 % DAY  # 2023-11-14 00:00 UTC


def _fill(tmp_path, n=300, seed=1):
    rnd = random.Random(seed)
    ledger = Ledger(tmp_path, "c1")
    entries, details = [], []
    for i in range(n):
        end = T0 + rnd.uniform(0, 40 * DAY)
        e = rnd.uniform(1e3, 1e7)
        emb = rnd.uniform(0, 50)
        op = e / 3.6e6 * rnd.uniform(50, 300)
        state = rnd.choice([ACCOUNTED, WRITTEN, DEAD])
        entries.append(Entry(str(i), state, e, op + emb, rnd.choice("pq"), rnd.choice(["a1", "a2", "a3"]),
                             rnd.choice(["u1", "u2"]), end))
        details.append(Details(str(i), end - 3600, op, emb, "measured", rnd.choice([1.0, 0.5, 0.0]),
                               rnd.choice(["cpu", "gpu"]), 8, 1, e * 0.3, "actual", e * rnd.choice([0, 1])))
    ledger.record_many(entries)
    counted = sum(e.state != DEAD for e in entries)
    with_details = details[: n * 2 // 3]  # the rest as from a daemon that does not record details yet
    assert record_details(tmp_path, "c1", with_details) == sum(e.state != DEAD for e in entries[: len(with_details)])
    assert record_details(tmp_path, "c1", with_details) == 0  # once only: the rollup counts each job once
    assert counted > 0
    ledger.close()
    return entries, details


def test_report_totals_equal_ledger_sums(tmp_path):
    entries, details = _fill(tmp_path)
    db = connect(tmp_path)
    counted = [e for e in entries if e.state != DEAD]
    lines = totals(db, "c1", ["account"])
    assert sum(x.jobs for x in lines) == len(counted)
    for acc in ("a1", "a2", "a3"):
        mine = [e for e in counted if e.account == acc]
        line = next(x for x in lines if x.group == (acc,))
        assert line.jobs == len(mine)
        assert line.energy_kwh == pytest.approx(sum(e.energy_j for e in mine) / 3.6e6, rel=1e-12)
        assert line.co2e_g == pytest.approx(sum(e.co2e_g for e in mine), rel=1e-12)
        d = {x.job_id: x for x in details[: len(details) * 2 // 3]}  # jobs without details: all operational
        assert line.embodied_g == pytest.approx(sum(d[e.job_id].embodied_g for e in mine if e.job_id in d), rel=1e-12)
        assert line.operational_g + line.embodied_g == pytest.approx(line.co2e_g, rel=1e-12)
        assert line.gpu_energy_kwh * 3.6e6 == pytest.approx(sum(0.3 * e.energy_j for e in mine if e.job_id in d),
                                                            rel=1e-9)
        meas = sum(e.energy_j * (d[e.job_id].coverage if e.job_id in d else 1.0) for e in mine)
        assert line.measured_share == pytest.approx(meas / sum(e.energy_j for e in mine), rel=1e-9)
    by_month = totals(db, "c1", ["month", "partition"])
    assert {x.group[0] for x in by_month} == {"2023-11", "2023-12"}
    assert sum(x.energy_kwh for x in by_month) == pytest.approx(sum(x.energy_kwh for x in lines), rel=1e-12)
    # a range keeps only jobs that ended in it
    part = totals(db, "c1", ["day"], start=T0, end=T0 + DAY)
    assert sum(x.jobs for x in part) == sum(1 for e in counted if e.end_time < T0 + DAY)
    # a range off whole days is summed from the jobs themselves, to the same answer
    odd = totals(db, "c1", ["account"], start=T0 + 3600, end=T0 + 20 * DAY + 7)
    mine = [e for e in counted if T0 + 3600 <= e.end_time < T0 + 20 * DAY + 7]
    assert sum(x.jobs for x in odd) == len(mine)
    assert sum(x.co2e_g for x in odd) == pytest.approx(sum(e.co2e_g for e in mine), rel=1e-12)


def test_unattributed_energy_lines(tmp_path):
    _fill(tmp_path, n=20)
    db = connect(tmp_path)
    record_unattributed(db, "c1", [("n1", T0, "p", "cpu", 3.6e6), ("n2", T0 + 1800, "q", "gpu", 7.2e6)])
    record_unattributed(db, "c1", [("n1", T0, "p", "cpu", 1.8e6)])  # a re-run replaces
    by_part = {x.group: x for x in totals(db, "c1", ["partition"])}
    assert by_part[("p",)].unattributed_kwh == pytest.approx(0.5)
    assert by_part[("q",)].unattributed_kwh == pytest.approx(2.0)
    by_acc = {x.group: x for x in totals(db, "c1", ["account"])}
    assert by_acc[(UNATTRIBUTED,)].unattributed_kwh == pytest.approx(2.5)
    assert by_acc[(UNATTRIBUTED,)].jobs == 0


def test_old_ledger_without_details_reads_as_measured_operational(tmp_path):
    ledger = Ledger(tmp_path, "c1")
    ledger.record(Entry("1", ACCOUNTED, 3.6e6, 200.0, "p", "a", "u", T0))
    ledger.close()
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    (line,) = totals(db, "c1", ["account", "node_class"])
    assert (line.energy_kwh, line.operational_g, line.embodied_g, line.measured_share) == (1.0, 200.0, 0.0, 1.0)


def test_migration_is_idempotent_and_tolerates_columns_added_elsewhere(tmp_path):
    Ledger(tmp_path, "c1").close()
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    db.execute("ALTER TABLE jobs ADD COLUMN method TEXT")  # e.g. the daemon's own schema change
    added = migrate(db)
    assert "method" not in added and set(added) == set(COLUMNS) - {"method"}
    assert migrate(db) == []


def test_output_formats(tmp_path):
    _fill(tmp_path, n=30)
    db = connect(tmp_path)
    lines = totals(db, "c1", ["user"])
    for fmt in ("table", "csv", "json"):
        buf = io.StringIO()
        write(lines, ["user"], fmt, buf)
        text = buf.getvalue()
        assert "u1" in text and "u2" in text
    buf = io.StringIO()
    write(lines, ["user"], "json", buf)
    first = json.loads(buf.getvalue().splitlines()[0])
    assert first["user"] == "u1" and first["jobs"] > 0 and "embodied_g" in first


def test_bad_grouping_names_the_valid_ones():
    with pytest.raises(JobInputError, match="account, user"):
        parse_groups("account,colour")


def test_unattributed_ranges_by_day_and_by_half_hour(tmp_path):
    _fill(tmp_path, n=5)
    db = connect(tmp_path)
    record_unattributed(db, "c1", [("n1", T0 + 1800 * k, "p", "cpu", 3.6e5) for k in range(96)])  # two days
    whole = {x.group: x.unattributed_kwh for x in totals(db, "c1", ["day"]) if x.unattributed_kwh}
    assert whole == {("2023-11-14",): pytest.approx(4.8), ("2023-11-15",): pytest.approx(4.8)}
    first = {x.group: x.unattributed_kwh for x in totals(db, "c1", ["day"], start=T0, end=T0 + DAY)}
    assert first[("2023-11-14",)] == pytest.approx(4.8) and ("2023-11-15",) not in first
    half = {x.group: x.unattributed_kwh for x in totals(db, "c1", ["month"], start=T0 + 3600, end=T0 + 7200)}
    assert half[("2023-11",)] == pytest.approx(0.2)


def test_after_record_fills_the_breakdown_the_daemon_recorded(tmp_path):
    from test_footprint import MIDNIGHT, FakeIntensity, FakePower

    from carbond.config import from_mapping
    from carbond.engine import Engine
    from carbond.jobs import Job
    from carbond.ledger_columns import after_record

    cfg = from_mapping({"cluster": "c1", "nodes": [{"match": "n1", "name": "small", "cpus": 4}]})
    jobs = [Job("1", MIDNIGHT, MIDNIGHT + 3600, ("n1",), (2.0,), partition="p", account="a", user="u")]
    fps = list(Engine(cfg, FakePower({"n1": (MIDNIGHT - 60, MIDNIGHT + 3660, 400)}), FakeIntensity(100)).account(jobs))
    led = Ledger(tmp_path, "c1")
    new = led.record_many([Entry.from_footprint(j, fp) for j, fp in zip(jobs, fps, strict=True)])
    led.close()
    assert after_record(tmp_path, cfg, list(zip(jobs, fps, strict=True)), new) == 1
    (line,) = totals(connect(tmp_path), "c1", ["node_class"])
    assert line.group == ("small",) and line.energy_kwh == pytest.approx(0.2) and line.measured_share == 1.0
    assert line.operational_g == pytest.approx(20.0)


def test_cli_groupings_match_the_report():
    from carbond import subcommands, summary

    assert subcommands.GROUPS == tuple(summary.GROUPS)


def test_readme_commands_run_through_the_cli(tmp_path, capsys):
    from carbond.cli import main

    _fill(tmp_path, n=50)
    conf = tmp_path / "c.yaml"
    conf.write_text(f"cluster: c1\nstate_dir: {tmp_path}\nintensity: {{provider: constant, value: 200}}\n"
                    "nodes: [{match: 'n[1-4]', name: fresh, cpus: 64, max_watts: 640}]\n")
    assert main(["--config", str(conf), "report", "--by", "account,month"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["account", "month", "jobs"] and "a1" in out
    assert main(["--config", str(conf), "report", "--by", "node_class,day", "--start", "2023-11-14T00:00:00Z",
                 "--end", "2023-12-01T00:00:00Z", "--csv"]) == 0
    assert capsys.readouterr().out.startswith("node_class,day,jobs,energy_kwh")
    assert main(["--config", str(conf), "estimate", "--nodes-class", "fresh", "--cpus", "8", "--time", "6h",
                 "--window", "24h"]) == 0
    out = capsys.readouterr().out
    assert "Energy: 0.48 kWh" in out and "Submit with: sbatch --begin=" in out
    assert main(["--config", str(conf), "report", "--by", "colour"]) == 1
    assert "valid: account, user" in capsys.readouterr().err


def test_rollup_does_not_depend_on_who_fills_method(tmp_path):
    ledger = Ledger(tmp_path, "c1")
    ledger.record_many([Entry(str(i), ACCOUNTED, 3.6e6, 100.0, "p", "a", "u", T0 + i) for i in range(3)])
    ledger.close()
    db = connect(tmp_path)
    db.execute("UPDATE jobs SET method='measured'")  # e.g. the daemon's own column, filled at insert
    assert record_details(db, "c1", [Details("0", T0 - 60, 90.0, 10.0, "measured", 1.0, "cpu", 1, 0, 0.0)]) == 1
    (line,) = totals(db, "c1", ["account"])
    assert (line.jobs, line.energy_kwh, line.co2e_g, line.embodied_g) == (3, 3.0, 300.0, 10.0)
