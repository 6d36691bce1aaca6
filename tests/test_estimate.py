"""`carbond estimate`: a hand-computed case, a power model learned from the ledger, the UK forecast."""

import argparse
import io
import json
import sqlite3
import time
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbond.cli import build_parser
from carbond.config import from_mapping
from carbond.errors import JobInputError
from carbond.estimate import estimate, greenest, learn_power, parse_duration, run
from carbond.ledger import ACCOUNTED, Entry, Ledger
from carbond.ledger_columns import Details, connect, record_details

NOW = 1_763_800_000.0  # 2025-11-22T08:26:40Z


def cfg(**extra):
    base = {"cluster": "c1", "pue": 1.2, "embodied": {"g_per_node_hour": 64},
            "intensity": {"provider": "constant", "value": 200},
            "nodes": [{"match": "c[1-9]", "name": "cpu", "cpus": 64, "idle_watts": 200, "max_watts": 640},
                      {"match": "g[1-4]", "name": "gpu", "cpus": 64, "gpus": 4, "max_watts": 1600,
                       "weights": {"cpu": 5, "gpu": 250}}]}
    base.update(extra)
    return from_mapping(base)


def test_hand_computed_fallback_case():
    # 640 W / 64 CPUs = 10 W per CPU; 8 CPUs for 6 h = 0.48 kWh; x 200 g/kWh x PUE 1.2 = 115.2 g;
    # embodied 64 g per node-hour x 6 h x 8/64 of a node = 48 g.
    e = estimate(cfg(), cpus=8, gpus=0, seconds=6 * 3600, node_class="cpu", now=NOW)
    assert e.energy_consumption_kwh == pytest.approx(0.48)
    assert e.carbon_intensity_g_per_kwh == pytest.approx(200.0)
    assert e.operational_g == pytest.approx(115.2)
    assert e.embodied_g == pytest.approx(48.0)
    assert e.carbon_footprint_g == pytest.approx(163.2)
    assert e.how["power"] == "fallback: max_watts/cpus of node class cpu"


def test_learns_watts_per_cpu_and_gpu_from_measured_jobs(tmp_path):
    rnd = np.random.default_rng(3)
    led = Ledger(tmp_path, "c1")
    entries, details = [], []
    for i in range(40):
        c, g, s = int(rnd.integers(1, 64)), int(rnd.integers(0, 4)), float(rnd.uniform(600, 36000))
        e = (3.5 * c + 210.0 * g) * s * (1 + rnd.normal(0, 0.01))
        entries.append(Entry(str(i), ACCOUNTED, e, 1.0, "gpuq", "a", "u", NOW - 1000 * i))
        details.append(Details(str(i), NOW - 1000 * i - s, method="measured", coverage=1.0, node_class="gpu",
                               cpus=c, gpus=g))
    # an estimated job far off the model must be ignored
    entries.append(Entry("x", ACCOUNTED, 1e12, 1.0, "gpuq", "a", "u", NOW))
    details.append(Details("x", NOW - 100, method="estimated", coverage=0.0, node_class="gpu", cpus=1, gpus=0))
    led.record_many(entries)
    record_details(tmp_path, "c1", details)
    led.close()
    db = connect(tmp_path, readonly=True)
    e = estimate(cfg(), cpus=16, gpus=1, seconds=3600, node_class="gpu", db=db, now=NOW)
    assert e.how["power"].startswith("learned from") and "measured jobs of node class gpu" in e.how["power"]
    assert e.how["w_per_cpu"] == pytest.approx(3.5, rel=0.05)
    assert e.how["w_per_gpu"] == pytest.approx(210.0, rel=0.02)
    assert e.energy_consumption_kwh == pytest.approx((16 * 3.5 + 210) / 1000, rel=0.03)
    by_partition = estimate(cfg(), cpus=16, gpus=1, seconds=3600, partition="gpuq", db=db, now=NOW,
                            partitions=lambda: None)  # Slurm unreachable: the class the ledger recorded
    assert by_partition.energy_consumption_kwh == pytest.approx(e.energy_consumption_kwh)


def test_learn_power_exact_and_non_negative():
    c = np.array([1, 2, 4, 8.0])
    g = np.array([0, 1, 0, 2.0])
    s = np.array([100, 200, 300, 400.0])
    a, b = learn_power(c, g, s, (5 * c + 100 * g) * s)
    assert (a, b) == pytest.approx((5.0, 100.0))
    a, b = learn_power(c, g * 0, s, 7 * c * s)
    assert (a, b) == pytest.approx((7.0, 0.0))


def test_greenest_start_in_a_window():
    # intensity per half-hour from slot 0: 300, 300, 100, 100, 300 ...; a 1 h job is greenest at 01:00
    v = np.array([300, 300, 100, 100, 300, 300.0])
    best, best_i, now_i = greenest(0, v, 600.0, 4 * 3600, 3600)
    assert (best, best_i) == (3600.0, 100.0)
    assert now_i == pytest.approx((1200 * 300 + 1800 * 300 + 600 * 100) / 3600)


def test_durations():
    assert parse_duration("6h") == 21600
    assert parse_duration("90m") == 5400
    assert parse_duration("45") == 2700
    assert parse_duration("1-12:00:00") == 129600
    assert parse_duration("2:30:00") == 9000
    assert parse_duration("30:00") == 1800
    assert parse_duration("2-12") == 216000
    with pytest.raises(JobInputError, match="cannot read duration"):
        parse_duration("soon")


def test_no_history_no_watts_is_a_clear_error():
    c = cfg(nodes=[{"match": "z1", "name": "bare"}])
    with pytest.raises(JobInputError, match="cannot estimate power"):
        estimate(c, cpus=1, gpus=0, seconds=60, node_class="bare", now=NOW)


def uk_forecast(api, now, horizon=48 * 3600):
    """The national endpoint for future half-hours: forecast only, `actual` null, nothing past 48 h."""
    from test_intensity_uk import fmt, ts

    def answer(req):
        import re

        m = re.search(r"intensity/([^/]+)/([^/]+)", req.path)
        lo, hi = ts(m.group(1)), ts(m.group(2))
        slots = range(-(-(lo - 1800) // 1800) * 1800, min(hi, int(now) + horizon) + 1, 1800)
        return 200, {"data": [{"from": fmt(s), "to": fmt(s + 1800),
                               "intensity": {"forecast": 50 if (s // 1800) % 48 in range(20, 28) else 250,
                                             "actual": None, "index": "moderate"}} for s in slots]}

    api.route(r"/intensity/([^/]+)/([^/]+)", answer)


def test_window_on_the_uk_forecast_shape(http_api):
    now = 1_763_769_600.0  # 2025-11-22T00:00Z; forecast 50 g/kWh from 10:00 to 14:00 UTC, else 250
    uk_forecast(http_api, now)
    c = cfg(intensity={"provider": "uk-carbon-intensity", "url": http_api.url})
    e = estimate(c, cpus=64, gpus=0, seconds=4 * 3600, node_class="cpu", window_s=24 * 3600, now=now)
    assert e.start == "2025-11-22T10:00:00Z"
    assert e.carbon_intensity_g_per_kwh == pytest.approx(50.0)
    w = e.window
    assert w["intensity_now_g_per_kwh"] == pytest.approx(250.0)
    assert w["saving_g"] == pytest.approx(0.64 * 4 * 200 * 1.2)
    assert w["sbatch_begin"] == "--begin=" + time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now + 36000))
    assert e.how["intensity"] == "uk-carbon-intensity (forecast)"
    # a job reaching past the 48 h horizon: the missing half-hours take the forecast a day earlier, said so
    late = estimate(c, cpus=1, gpus=0, seconds=6 * 3600, node_class="cpu", start=now + 45 * 3600, now=now)
    assert "5 half-hour(s) without a forecast take the value a day earlier" in late.how["intensity"]


def test_cli_json_carries_the_seed_fields(tmp_path):
    c = cfg(state_dir=str(tmp_path))
    args = build_parser().parse_args(["estimate", "--nodes-class", "cpu", "--cpus", "8", "--time", "6h", "--json"])
    assert isinstance(args, argparse.Namespace)
    buf = io.StringIO()
    assert run(args, c, out=buf) == 0
    d = json.loads(buf.getvalue())
    assert d["carbon_footprint_g"] == pytest.approx(163.2)
    assert d["energy_consumption_kwh"] == pytest.approx(0.48)
    assert d["carbon_intensity_g_per_kwh"] == pytest.approx(200.0)
    assert d["how"]["power"].startswith("fallback")


def test_provider_without_forecast_uses_the_day_before(tmp_path):
    # a CSV that ends now: tomorrow's half-hours take today's values (persistence)
    day0 = 1_763_769_600  # 2025-11-22T00:00Z
    def z(t):
        return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(t))

    rows = ["from,to,intensity"] + [f"{z(day0 + 1800 * k)},{z(day0 + 1800 * k + 1800)},{300 if k < 24 else 100}"
                                    for k in range(48)]
    path = tmp_path / "i.csv"
    path.write_text("\n".join(rows) + "\n")
    c = cfg(intensity={"provider": "csv", "path": str(path)})
    e = estimate(c, cpus=64, gpus=0, seconds=3600, node_class="cpu", start=day0 + 86400 + 13 * 3600, now=day0)
    assert e.carbon_intensity_g_per_kwh == pytest.approx(100.0)
    assert "2 half-hour(s) without a forecast take the value a day earlier" in e.how["intensity"]


# ---- issue 15: through `python -m carbond --config X estimate`, numbers computed by hand --------------

T = 1_800_000_000.0  # 2027-01-15T08:00:00Z
NODE_W = 320.0  # every cpu node draws this, so a 16-CPU job on a 64-CPU node draws 80 W: 5 W per CPU


class FlatPower:
    """NODE_W on the configured cpu nodes, a sample every 30 s, only inside the window asked for."""

    def __init__(self, nodes):
        self.nodes, self.asked = set(nodes), []

    def fetch_power(self, nodes, start, end):
        assert set(nodes) <= self.nodes and start < end, (nodes, start, end)
        self.asked.append((tuple(nodes), start, end))
        t = np.arange(np.ceil(start / 30) * 30, end + 1e-9, 30.0)
        return {n: (t, np.full(t.size, NODE_W)) for n in nodes}


def write_config(tmp_path, sinfo=None, **extra):
    """A YAML config: cpu nodes c[1-9] (64 CPUs, max 640 W), gpu nodes g[1-4] (64 CPUs, 4 GPUs, max 1600 W);
    Slurm's clients in tmp_path/bin: a `sinfo` that prints `sinfo` for exactly the call carbond makes."""
    import yaml

    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    if sinfo is not None:
        script = bindir / "sinfo"
        expected = "-h -N -M c1 -o %R|%N|%c"
        script.write_text(f'#!/bin/sh\n[ "$*" = "{expected}" ] || {{ echo "sinfo asked: $*" >&2; exit 9; }}\n'
                          f"cat <<'END'\n{sinfo}END\n")
        script.chmod(0o755)
    doc = {"cluster": "c1", "state_dir": str(tmp_path / "state"), "pue": 1.2, "embodied": {"g_per_node_hour": 64},
           "intensity": {"provider": "constant", "value": 200}, "slurm": {"sacct": str(bindir / "sacct")},
           "nodes": [{"match": "c[1-9]", "name": "cpu", "cpus": 64, "idle_watts": 200, "max_watts": 640},
                     {"match": "g[1-4]", "name": "gpu", "cpus": 64, "gpus": 4, "max_watts": 1600,
                      "weights": {"cpu": 5, "gpu": 250}}], **extra}
    path = tmp_path / "carbond.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(config, *args):
    """`python -m carbond --config X estimate ...`: (exit status, JSON or stderr)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    p = subprocess.run([sys.executable, "-m", "carbond", "--config", str(config), "estimate", *args, "--json"],
                       capture_output=True, text=True, env=env, timeout=60, check=False)
    return p.returncode, (json.loads(p.stdout) if p.returncode == 0 else p.stderr.strip())


def record_as_the_daemon(config, jobs):
    """Account (job, runs, suspend intervals) as the daemon does (every run from sacct -D, without
    the recorded suspends; one engine pass; pieces combined) and record them with their breakdown."""
    from functools import partial

    from carbond.config import load
    from carbond.engine import Engine
    from carbond.intensity import IntensitySource, make_provider
    from carbond.ledger_columns import after_record
    from carbond.publish import Publisher
    from carbond.runs import combine, pieces

    c = load(str(config))
    power = FlatPower([n for j, runs, _ in jobs for r in runs for n in r.nodes])
    eng = Engine(c, power, IntensitySource(make_provider(c), None))
    plan = [(j, pieces(j, runs, suspends)) for j, runs, suspends in jobs]
    fps = iter(list(eng.account([p.job for _, ps in plan for p in ps])))
    pairs = [(j, combine(j.job_id, [(p, next(fps)) for p in ps])) for j, ps in plan]
    assert all(fp.status == "ok" for _, fp in pairs), pairs
    led = Ledger(c.state_dir, c.cluster)
    try:
        Publisher(led, None, None, "admin_comment").record(pairs, write=False,
                                                            on_recorded=partial(after_record, c.state_dir, c))
    finally:
        led.close()
    assert power.asked
    return pairs


def history():
    """Five 16-CPU jobs in partition cpuq: one plain hour; two requeued (half an hour, then an hour on
    another node); two suspended for 30 min of a 90 min run (intervals recorded). Each ran 80 W for
    the seconds it really ran: 3600, 5400, 5400, 3600, 3600."""
    from carbond.jobs import Job
    from carbond.slurm import Run

    out = []

    def job(i, start, end, node):
        return Job(str(i), start, end, (node,), (16.0,), partition="cpuq", account="a", user="u")

    out.append((job(1, T, T + 3600, "c1"), [Run("1", "COMPLETED", T, T + 3600, ("c1",), 16, 0.0)], ()))
    for i in (2, 3):
        out.append((job(i, T + 3600, T + 7200, "c3"),
                    [Run(str(i), "REQUEUED", T, T + 1800, ("c2",), 16, 0.0),
                     Run(str(i), "COMPLETED", T + 3600, T + 7200, ("c3",), 16, 0.0)], ()))
    for i in (4, 5):
        out.append((job(i, T, T + 5400, "c4"), [Run(str(i), "COMPLETED", T, T + 5400, ("c4",), 16, 1800.0)],
                    ((T + 1200, T + 3000),)))
    return out


def test_learns_from_the_seconds_really_run(tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "state").mkdir()
    # and a job suspended 15 min of 90 without recorded intervals: charged 5/6 of its run pro rata, its
    # seconds unknown (method mixed): not a measurement to learn from
    from carbond.jobs import Job
    from carbond.slurm import Run

    pro_rata = (Job("6", T, T + 5400, ("c5",), (16.0,), partition="cpuq"),
                [Run("6", "COMPLETED", T, T + 5400, ("c5",), 16, 900.0)], ())
    pairs = record_as_the_daemon(config, [*history(), pro_rata])
    assert [fp.energy_kwh * 3.6e6 for _, fp in pairs] == pytest.approx([80 * s for s in (3600, 5400, 5400, 3600,
                                                                                          3600, 4500)], rel=1e-12)
    assert [fp.method for _, fp in pairs] == ["measured"] * 5 + ["mixed"]
    rc, d = cli(config, "--nodes-class", "cpu", "--cpus", "16", "--time", "1h")
    assert rc == 0, d
    # every job drew 80 W over the seconds it ran: 5 W per CPU; 16 CPUs 1 h = 0.08 kWh x 200 g/kWh x 1.2
    assert d["how"]["w_per_cpu"] == pytest.approx(5.0, rel=1e-9)
    assert d["power_w"] == pytest.approx(80.0, rel=1e-9)
    assert d["operational_g"] == pytest.approx(0.08 * 200 * 1.2, rel=1e-9)
    assert d["embodied_g"] == pytest.approx(64 * 16 / 64, rel=1e-12)
    assert "recorded without their run seconds" not in d["how"]["power"]
    # a row recorded before its run seconds were kept: end - start (its last hour: 80 x 5400 J / 3600 s
    # = 120 W = 7.5 W/CPU), said so; the model is the mean of the per-CPU watts (all jobs alike)
    db = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
    db.execute("UPDATE jobs SET charged_s = NULL WHERE job_id = '2'")
    db.commit()
    db.close()
    rc, d = cli(config, "--nodes-class", "cpu", "--cpus", "16", "--time", "1h")
    assert d["how"]["w_per_cpu"] == pytest.approx((5 + 7.5 + 5 + 5 + 5) / 5, rel=1e-9)
    assert "1 recorded without their run seconds" in d["how"]["power"]


def test_partition_charges_embodied_by_the_cpus_held(tmp_path):
    config = write_config(tmp_path, sinfo="cpuq|c1|64\ncpuq|c2|64\ngpuq|g1|64\ngpuq|g2|64\n")
    (tmp_path / "state").mkdir()
    record_as_the_daemon(config, history())
    rc, d = cli(config, "--partition", "cpuq", "--cpus", "1", "--time", "1h")
    assert rc == 0, d
    # 1 CPU of a 64-CPU node for 1 h: 64 g/node-hour x 1/64 = 1 g; 5 W x 1 h = 0.005 kWh x 200 x 1.2 = 1.2 g
    assert d["embodied_g"] == pytest.approx(1.0, rel=1e-12)
    assert d["operational_g"] == pytest.approx(1.2, rel=1e-9)
    assert d["carbon_footprint_g"] == pytest.approx(2.2, rel=1e-9)
    assert "1/64 CPUs" in d["how"]["embodied"] and "node class cpu" in d["how"]["node_class"]
    # no history in gpuq: its nodes' class (gpu, from sinfo) gives the fallback and the node's CPUs:
    # 1600 W / 64 = 25 W per CPU x 8 CPUs = 200 W: 0.2 kWh x 240 = 48 g; embodied 64 x 8/64 = 8 g
    rc, d = cli(config, "--partition", "gpuq", "--cpus", "8", "--time", "1h")
    assert rc == 0, d
    assert (d["power_w"], d["operational_g"], d["embodied_g"]) == pytest.approx((200.0, 48.0, 8.0), rel=1e-12)
    assert d["how"]["node_class"] == "partition gpuq: nodes g[1-2] (sinfo), node class gpu, 64 CPUs per node"


def test_power_never_exceeds_max_watts_per_node(tmp_path):
    config = write_config(tmp_path)
    # a whole GPU node without history: 64 CPUs x 1600/64 W + 4 GPUs x 250 W = 2600 W > 1600 W max_watts
    rc, d = cli(config, "--nodes-class", "gpu", "--cpus", "64", "--gpus", "4", "--time", "1h")
    assert rc == 0, d
    assert d["power_w"] == pytest.approx(1600.0, rel=1e-12)
    assert d["operational_g"] == pytest.approx(1.6 * 200 * 1.2, rel=1e-12)
    assert "capped at max_watts 1600 W x 1 node(s)" in d["how"]["max_power"]
    # two nodes' worth (8 GPUs on 4-GPU nodes): at most 3200 W; embodied 64 g x 128/64 node-hours
    rc, d = cli(config, "--nodes-class", "gpu", "--cpus", "128", "--gpus", "8", "--time", "1h")
    assert (d["power_w"], d["embodied_g"]) == pytest.approx((3200.0, 128.0), rel=1e-12)
    # 8 CPUs + 1 GPU: 8 x 25 + 250 = 450 W, under the cap and unchanged
    rc, d = cli(config, "--nodes-class", "gpu", "--cpus", "8", "--gpus", "1", "--time", "1h")
    assert d["power_w"] == pytest.approx(450.0, rel=1e-12)
    assert d["how"]["max_power"] == "within max_watts 1600 W x 1 node(s) = 1600 W"


def test_unknown_class_or_partition_names_the_known_ones(tmp_path):
    config = write_config(tmp_path, sinfo="cpuq|c1|64\ngpuq|g1|64\n")
    rc, err = cli(config, "--nodes-class", "cpus", "--cpus", "1", "--time", "1h")
    assert rc == 1 and err == "carbond: unknown node class 'cpus': the config's node classes are cpu, gpu"
    rc, err = cli(config, "--partition", "cpu", "--cpus", "1", "--time", "1h")
    assert rc == 1 and err.endswith("unknown partition 'cpu': Slurm's partitions are cpuq, gpuq")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20_000), st.integers(1, 5_000), st.booleans()), min_size=1, max_size=6),
       st.randoms())
def test_charged_seconds_is_the_union_of_the_periods(runs, rnd):
    """Pieces (some with a fraction of a second) cut at half-hours as the engine cuts them, in any order:
    the seconds charged are the measure of their union (counted here by half-second cells)."""
    from carbond.footprint import Period
    from carbond.ledger_columns import charged_seconds
    from carbond.times import iso

    cells, periods = set(), []
    for a, n, half in runs:
        a = T + a + (0.5 if half else 0.0)
        b = a + n
        cells.update(range(round((a - T) * 2), round((b - T) * 2)))
        cuts = [a, *(k * 1800.0 for k in range(int(a // 1800) + 1, int(-(-b // 1800)))), b]
        periods += [Period(iso(x), iso(y), 0.0, None, "constant", None) for x, y in pairwise(cuts)]
    rnd.shuffle(periods)
    assert charged_seconds(periods) == pytest.approx(len(cells) / 2, abs=1e-6)
    assert charged_seconds([]) is None


def test_partition_without_slurm_takes_the_class_its_jobs_recorded(tmp_path):
    config = write_config(tmp_path)  # no sinfo beside sacct: Slurm cannot be asked
    (tmp_path / "state").mkdir()
    record_as_the_daemon(config, history())
    rc, d = cli(config, "--partition", "cpuq", "--cpus", "32", "--time", "30m")
    assert rc == 0, d
    # 5 W per CPU learned x 32 CPUs x 0.5 h = 0.08 kWh x 240 = 19.2 g; embodied 64 x 32/64 x 0.5 h = 16 g
    assert (d["power_w"], d["operational_g"], d["embodied_g"]) == pytest.approx((160.0, 19.2, 16.0), rel=1e-9)
    assert d["how"]["node_class"] == "partition cpuq: node class cpu, recorded for its jobs in the ledger " \
                                     "(Slurm not reachable)"
    rc, err = cli(config, "--partition", "gpuq", "--cpus", "1", "--time", "1h")
    assert rc == 1 and err == ("carbond: unknown partition 'gpuq': Slurm (sinfo) cannot be asked; "
                               "partitions in the ledger: cpuq")
