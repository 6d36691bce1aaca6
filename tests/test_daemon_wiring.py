"""What the daemon does beside the records (issue 8 and h2's leftovers), in process with fakes:
the breakdown hook after the ledger, the half-hour closer, the running gauge, the energy TRES,
het ids and v2 times from the record. Each inside the error boundary."""

from dataclasses import replace

import numpy as np
import pytest
from daemon_fakes import T0, job, rig
from prometheus_client import CollectorRegistry
from test_spool import GOOD, record_text

from carbond.config import from_mapping
from carbond.daemon import RecordContradicts, with_record
from carbond.energy import HALF_HOUR
from carbond.engine import Engine
from carbond.idle import Closer
from carbond.jobs import Job
from carbond.ledger import Ledger
from carbond.ledger_columns import connect
from carbond.metrics import Metrics
from carbond.running import RunningGauge
from carbond.slurm import SlurmUnsupported
from carbond.spool import parse_record

V2 = {"start_time": "1699999000", "end_time": "1699999990", "het_job_id": "", "het_job_offset": "", "sluid": ""}


def _v2(**values: str):
    v = dict(GOOD, job_id="312", array_job_id="", array_task_id="", **dict(V2, **values))
    return parse_record(record_text(v, head="carbond-spool 2").encode(), "/s/312.job")


def test_a_het_component_is_written_under_its_record_id():
    rec = _v2(het_job_id="311", het_job_offset="1")
    sacct = Job("312", 1.0, 2.0, ("n1", "n2", "n3"), (2.0, 1.0, 1.0), partition="debug", display_id="311+1")
    assert with_record(sacct, rec).display_id == "311+1"
    with pytest.raises(RecordContradicts):  # sacct's JobID must name the component the record does
        with_record(replace(sacct, display_id="312"), rec)


def test_v2_times_are_hints_only_where_sacct_has_none():
    rec = _v2()
    kept = with_record(Job("312", 5.0, 6.0, ("n1",), (1.0,), partition="debug", display_id="312"), rec)
    assert (kept.start, kept.end) == (5.0, 6.0)
    filled = with_record(Job("312", None, None, ("n1",), (1.0,), partition="debug", display_id="312"), rec)
    assert (filled.start, filled.end) == (1699999000.0, 1699999990.0)


def test_details_hook_gets_the_newly_counted_jobs_once(tmp_path):
    r = rig(tmp_path)
    calls = []
    r.daemon.details = lambda pairs, new: calls.append(([j.job_id for j, _ in pairs], new))
    r.slurm.add(job("7"))
    r.record("7")
    r.run()
    assert calls == [(["7"], [True])]
    r.record("7", name="7-again.job")  # a repeated record: acknowledged, nothing recorded again
    r.run()
    assert calls == [(["7"], [True])]
    assert r.slurm.written and not r.dead()


def test_a_failing_details_hook_never_holds_back_the_token(tmp_path):
    r = rig(tmp_path)

    def boom(pairs, new):
        raise OSError("disk full")

    r.daemon.details = boom
    r.slurm.add(job("8"))
    r.record("8")
    r.run()
    assert [raw for raw, _ in r.slurm.written] == ["8"]
    assert r.value("carbond_loop_errors_total", kind="spool") == 1.0  # contained and counted


class TresSlurm:
    """The FakeSlurm's energy TRES calls (mixed into an instance)."""

    def __init__(self, slurm, supported=True, refuse=False):
        self.calls, self.version_asks = [], 0
        slurm.supports_energy_tres = self.supports
        slurm.write_energy_tres = self.write
        self.supported, self.refuse = supported, refuse

    def supports(self):
        self.version_asks += 1
        return self.supported

    def write(self, facts, joules):
        if self.refuse:
            raise SlurmUnsupported(["sacctmgr"], 1, "Unknown option: tres")
        self.calls.append((facts.job.job_id, joules))


def test_energy_tres_after_the_token_measured_it_energy_without_pue(tmp_path):
    r = rig(tmp_path, write_energy_tres=True)
    tres = TresSlurm(r.slurm)
    for jid in ("1", "2"):
        r.slurm.add(job(jid))
        r.record(jid)
    r.run()
    entry = r.ledger.get("1")
    assert entry is not None and entry.pue == 1.5
    assert sorted(tres.calls) == [("1", pytest.approx(entry.energy_j)), ("2", pytest.approx(entry.energy_j))]
    assert entry.energy_j == pytest.approx(100.0 * 90)  # FakeEngine: 100 W x 90 s, no PUE in it
    assert tres.version_asks == 1


def test_energy_tres_off_by_default_and_unsupported_warned_once(tmp_path, caplog):
    r = rig(tmp_path)
    tres = TresSlurm(r.slurm)
    r.slurm.add(job("1"))
    r.record("1")
    r.run()
    assert tres.calls == [] and tres.version_asks == 0
    (tmp_path / "b").mkdir()
    r2 = rig(tmp_path / "b", write_energy_tres=True)
    tres2 = TresSlurm(r2.slurm, supported=False)
    for jid in ("1", "2", "3"):
        r2.slurm.add(job(jid))
        r2.record(jid)
    r2.run(2)
    assert tres2.calls == [] and tres2.version_asks == 1
    assert sum("write_energy_tres" in m for m in caplog.messages) == 1
    assert [raw for raw, _ in r2.slurm.written] == ["1", "2", "3"]


def test_energy_tres_refused_stops_trying_and_keeps_the_tokens(tmp_path):
    r = rig(tmp_path, write_energy_tres=True)
    TresSlurm(r.slurm, refuse=True)
    for jid in ("1", "2"):
        r.slurm.add(job(jid))
        r.record(jid)
    r.run()
    assert r.daemon._energy_tres is False
    assert [raw for raw, _ in r.slurm.written] == ["1", "2"] and not r.dead()


# ---- the half-hour closer and the running gauge on a real Engine ---------------------------------

SLOT = (T0 // HALF_HOUR) * HALF_HOUR


class FlatPower:
    def fetch_power(self, nodes, start, end):
        t = np.arange(SLOT - 4 * HALF_HOUR, SLOT + 4 * HALF_HOUR, 30.0)
        return {n: (t, np.full(t.size, 200.0)) for n in nodes}

    def latest_sample(self, nodes, since):
        return {n: SLOT + HALF_HOUR for n in nodes}


class Intensity:
    def lookup(self, start, end):
        from types import SimpleNamespace

        first = int(start // HALF_HOUR) * HALF_HOUR
        n = int((end - first) // HALF_HOUR) + 2
        return SimpleNamespace(first_slot=first, values=np.full(n, 100.0), kinds=["actual"] * n, stale=[False] * n)


class ClusterSlurm:
    def __init__(self, jobs):
        self.jobs, self.reads = jobs, []

    def _read(self, selection):
        from types import SimpleNamespace

        self.reads.append(selection)
        return {j.job_id: SimpleNamespace(job=j) for j in self.jobs}

    def node_cpus(self):
        return {"n1": 2, "n2": 2}

    def read_runs(self, job_ids):
        """Each job ran once, as its record says; asked only for jobs this fake listed."""
        assert set(job_ids) <= {j.job_id for j in self.jobs}
        return {}


def _engine(tmp_path):
    cfg = from_mapping({"state_dir": str(tmp_path), "settle_seconds": 60, "nodes": [{"match": "n[1-2]", "cpus": 2}]})
    return cfg, Engine(cfg, FlatPower(), Intensity())


def test_closer_closes_each_half_hour_once_after_settling_and_resumes_from_the_ledger(tmp_path):
    cfg, eng = _engine(tmp_path)
    Ledger(tmp_path, cfg.cluster).close()
    now = [SLOT + 61.0]
    slurm = ClusterSlurm([Job("1", SLOT - HALF_HOUR, SLOT + 600, ("n1",), (1.0,), partition="p")])
    metrics = Metrics(CollectorRegistry(), cfg.cluster)
    closer = Closer(cfg, eng, slurm, metrics, lambda: now[0])
    assert closer.run() == 0 and closer.next_slot == SLOT  # a new ledger starts at the current half-hour
    now[0] = SLOT + HALF_HOUR + 30  # over, not settled
    closer.not_before = 0.0
    assert closer.run() == 0 and slurm.reads == []
    now[0] = SLOT + HALF_HOUR + 61
    assert closer.run() == 1
    assert closer.run() == 0  # once
    db = connect(tmp_path)
    rows = db.execute("SELECT node, slot, energy_j FROM unattributed ORDER BY node").fetchall()
    # n1: 200 W x 1800 s minus the job's 1/2 for 600 s; n2 (no job) wholly idle
    assert rows == [("n1", SLOT, pytest.approx(200 * 1800 - 100 * 600)), ("n2", SLOT, pytest.approx(200 * 1800))]
    metrics.totals.invalidate()
    assert metrics.registry.get_sample_value("carbond_unattributed_energy_joules_total",
                                             {"cluster": cfg.cluster, "partition": "p"}) == pytest.approx(300000)
    closer.close()
    again = Closer(cfg, eng, slurm, metrics, lambda: now[0] + 2 * HALF_HOUR)
    assert again.run() == 2 and again.next_slot == SLOT + 3 * HALF_HOUR  # resumes after the ledger's newest
    again.close()


def test_closer_failure_waits_before_trying_again(tmp_path):
    cfg, eng = _engine(tmp_path)
    Ledger(tmp_path, cfg.cluster).close()
    now = [SLOT + HALF_HOUR + 61]

    class Down(ClusterSlurm):
        def _read(self, selection):
            self.reads.append(selection)
            raise OSError("sacct hung")

    slurm = Down([])
    closer = Closer(cfg, eng, slurm, Metrics(CollectorRegistry(), cfg.cluster), lambda: now[0], next_slot=SLOT)
    with pytest.raises(OSError):
        closer.run()
    assert closer.run() == 0 and len(slurm.reads) == 1  # not hammered
    now[0] += 61
    with pytest.raises(OSError):
        closer.run()
    assert len(slurm.reads) == 2 and closer.next_slot == SLOT
    closer.close()


def test_running_gauge_sets_the_emissions_so_far(tmp_path):
    cfg, eng = _engine(tmp_path)
    slurm = ClusterSlurm([Job("5", SLOT, None, ("n1",), (2.0,), partition="p")])
    reg = CollectorRegistry()
    gauge = RunningGauge(eng, slurm, Metrics(reg, cfg.cluster), lambda: SLOT + 3600.0)
    grams = gauge.run()
    # the whole node (2 of 2 CPUs) at 200 W until the newest sample (SLOT + 30 min), 100 g/kWh
    assert grams == pytest.approx(200 * 1800 / 3.6e6 * 100, rel=1e-9)
    assert reg.get_sample_value("carbond_running_jobs_emissions_grams", {"cluster": cfg.cluster}) == grams
    assert gauge.run() is None  # not due again yet


def test_daemon_contains_closer_and_gauge_failures(tmp_path):
    r = rig(tmp_path)

    class Boom:
        def run(self):
            raise RuntimeError("bug")

    r.daemon.closer, r.daemon.running = Boom(), Boom()
    r.slurm.add(job("9"))
    r.record("9")
    r.run()
    assert [raw for raw, _ in r.slurm.written] == ["9"]
    assert r.value("carbond_loop_errors_total", kind="internal") == 2.0
