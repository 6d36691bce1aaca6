"""Node energy = jobs + unattributed, for every node and half-hour of a day of mixed jobs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_footprint import FakeIntensity

from carbond.config import from_mapping
from carbond.energy import HALF_HOUR, build_trace, window
from carbond.engine import Engine
from carbond.idle import clip_jobs, close_window, ledger_rows
from carbond.jobs import Job

DAY0 = 1_700_006_400  # 2023-11-15T00:00:00Z
NODES = ("a1", "a2", "a3")


class WavyPower:
    """Each node's power varies every 30 s, with a gap on a2, so the windows cut real slopes."""

    def fetch_power(self, nodes, start, end):
        out = {}
        for n in nodes:
            k = NODES.index(n)
            t = np.arange(DAY0 - 600, DAY0 + 86400 + 600, 30.0)
            if n == "a2":
                t = t[(t < DAY0 + 30000) | (t > DAY0 + 31000)]
            out[n] = (t, 200 + 100 * np.sin(t / (900 + 100 * k)) + 10 * k)
        return out


def engine(idle="report"):
    cfg = from_mapping({"idle": idle, "nodes": [{"match": "a[1-3]", "cpus": 8, "idle_watts": 100, "max_watts": 300}]})
    return Engine(cfg, WavyPower(), FakeIntensity(100))


jobs_st = st.lists(
    st.tuples(st.floats(-3600, 86400), st.floats(60, 40000), st.sampled_from(NODES), st.integers(1, 4)),
    min_size=0, max_size=12)


@settings(max_examples=25, deadline=None)
@given(spec=jobs_st, policy=st.sampled_from(["report", "spread"]))
def test_every_node_and_half_hour_closes_exactly(spec, policy):
    jobs = [Job(str(i), DAY0 + s, DAY0 + s + d, (n,), (float(c),), partition="p")
            for i, (s, d, n, c) in enumerate(spec)]
    jobs.append(Job("running", DAY0 + 3600, None, ("a1",), (2.0,), partition="q"))
    table, parts = close_window(engine(policy), jobs, DAY0, DAY0 + 86400, policy, all_nodes=NODES)
    assert sorted(table.names) == sorted(NODES)
    m, j, u = table.measured_j, table.jobs_j, table.unattributed_j
    assert np.all(u >= 0) and np.all(j >= 0)
    assert np.allclose(j + u, m, rtol=1e-9, atol=0)
    # measured is the node's own energy in each half-hour, independently computed
    p = WavyPower().fetch_power(list(table.names), 0, 0)
    for i, n in enumerate(table.names):
        tr = build_trace(*p[n], 300)
        ref = window(tr, table.slots.astype(float), table.slots + float(HALF_HOUR))[0]
        assert np.allclose(m[i], ref, rtol=1e-12)
    if policy == "report":
        # jobs carry their CPU share: at most 1/8 per CPU of the node's energy in each half-hour
        assert np.all(j <= m * (1 + 1e-12))
    assert parts.get("a1") in ("p", "q")


def test_report_jobs_match_the_engine_footprints():
    jobs = [Job("1", DAY0 + 1000, DAY0 + 9000, ("a1",), (2.0,)), Job("2", DAY0 + 5000, DAY0 + 20000, ("a1",), (4.0,)),
            Job("3", DAY0 + 100, DAY0 + 50000, ("a2",), (8.0,))]
    eng = engine()
    fps = list(eng.account(jobs))
    table, _ = close_window(engine(), jobs, DAY0, DAY0 + 86400)
    measured_jobs = sum(fp.energy_kwh for fp in fps[:2]) * 3.6e6
    assert table.jobs_j[table.names.index("a1")].sum() == pytest.approx(measured_jobs, rel=1e-9)
    # the 8-CPU job holds all of a2 wherever it was measured; the gap is nobody's measured energy
    a2 = table.names.index("a2")
    assert table.unattributed_j[a2].sum() == pytest.approx(
        table.measured_j[a2].sum() - table.jobs_j[a2].sum(), rel=1e-12)


def test_spread_hands_idle_to_the_jobs_on_the_node():
    jobs = [Job("1", DAY0, DAY0 + 1800, ("a1",), (2.0,)), Job("2", DAY0, DAY0 + 1800, ("a1",), (6.0,))]
    table, _ = close_window(engine("spread"), jobs, DAY0, DAY0 + 1800, "spread")
    i = table.names.index("a1")
    assert table.unattributed_j[i, 0] == pytest.approx(0.0, abs=1e-6)
    assert table.job_extra_j.sum() == pytest.approx(0.0, abs=1e-6)  # the two jobs already hold all 8 CPUs
    jobs = [Job("1", DAY0, DAY0 + 1800, ("a1",), (2.0,))]
    table, _ = close_window(engine("spread"), jobs, DAY0, DAY0 + 1800, "spread")
    assert table.job_extra_j[0] == pytest.approx(0.75 * table.measured_j[0, 0])


def test_clip_and_rows():
    jobs = [Job("1", DAY0 - 100, DAY0 + 100, ("a1",), (1.0,)), Job("2", None, None, ("a1",)),
            Job("3", DAY0 + 100, None, ("a2",), (1.0,)), Job("4", DAY0 + 5000, DAY0 + 6000, ("a3",))]
    got = clip_jobs(jobs, DAY0, DAY0 + 1800)
    assert [(j.job_id, j.start - DAY0, j.end - DAY0) for j in got] == [("1", 0, 100), ("3", 100, 1800)]
    table, parts = close_window(engine(), [Job("1", DAY0, DAY0 + 1800, ("a1",), (8.0,), partition="p")],
                                DAY0, DAY0 + 1800, all_nodes=["a1", "a2"])
    rows = ledger_rows(table, parts, lambda n: "cpu")
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("a1", DAY0, "p", "cpu"), ("a2", DAY0, "", "cpu")]
    assert rows[0][4] == pytest.approx(0.0, abs=1e-6) and rows[1][4] > 0


class FakeSlurm:
    def __init__(self, jobs):
        self.jobs = jobs

    def _read(self, selection):
        from types import SimpleNamespace

        return {j.job_id: SimpleNamespace(job=j) for j in self.jobs}

    def node_cpus(self):
        return {n: 8 for n in NODES}

    def read_runs(self, job_ids):
        """Each job ran once, as its record says; asked only for jobs this fake listed."""
        assert set(job_ids) <= {j.job_id for j in self.jobs}
        return {}


def test_spread_is_recorded_and_reported_with_the_jobs(tmp_path):
    from carbond.idle import close_and_record
    from carbond.ledger import Entry, Ledger
    from carbond.ledger_columns import Details, connect, record_details
    from carbond.summary import UNATTRIBUTED, totals

    job = Job("1", DAY0, DAY0 + 1800, ("a1",), (2.0,), partition="p", account="acct", user="u")
    eng = engine("spread")
    (fp,) = eng.account([job])
    led = Ledger(tmp_path, "")
    led.record(Entry.from_footprint(job, fp))
    led.close()
    record_details(tmp_path, "", [Details.of(job, fp, "")])
    db = connect(tmp_path)
    table, rows = close_and_record(eng.cfg, eng, FakeSlurm([job]), DAY0, DAY0 + 1800, db)
    measured = {n: table.measured_j[i].sum() for i, n in enumerate(table.names)}
    (spread,) = table.spread
    assert spread[2] == pytest.approx(measured["a1"] - fp.energy_kwh * 3.6e6, rel=1e-9)  # the other 6/8 of a1
    lines = {x.group: x for x in totals(db, "", ["account"])}
    assert lines[("acct",)].energy_kwh * 3.6e6 == pytest.approx(measured["a1"], rel=1e-9)
    assert lines[("acct",)].spread_kwh * 3.6e6 == pytest.approx(spread[2], rel=1e-9)
    assert lines[("acct",)].co2e_g == pytest.approx(measured["a1"] / 3.6e6 * 100, rel=1e-9)
    assert lines[(UNATTRIBUTED,)].unattributed_kwh * 3.6e6 == pytest.approx(measured["a2"] + measured["a3"], rel=1e-9)
