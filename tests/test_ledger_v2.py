"""Ledger additions for the daemon: the PUE each job was accounted with (migrated into old ledgers),
the origin of a row, suspend intervals, fixed skip labels, re-publishing an unwritable job."""

import math
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from carbond import ledger as L
from carbond.footprint import JobFootprint
from carbond.jobs import Job

OLD_SCHEMA = """
CREATE TABLE jobs (cluster TEXT NOT NULL, job_id TEXT NOT NULL, state TEXT NOT NULL, energy_j REAL NOT NULL DEFAULT 0,
    co2e_g REAL NOT NULL DEFAULT 0, partition TEXT NOT NULL DEFAULT '', account TEXT NOT NULL DEFAULT '',
    user TEXT NOT NULL DEFAULT '', end_time REAL, token TEXT, recorded_at REAL NOT NULL, written_at REAL,
    reason TEXT, PRIMARY KEY (cluster, job_id)) WITHOUT ROWID;
INSERT INTO jobs (cluster, job_id, state, energy_j, co2e_g, recorded_at, reason)
    VALUES ('c1', '1', 'written', 10, 2, 1, NULL),
           ('c1', '2', 'unwritable', 5, 1, 1, 'sacctmgr refused: sacctmgr -i modify job where jobid=2 set x');
"""


def test_an_old_ledger_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    with sqlite3.connect(tmp_path / L.FILENAME) as db:
        db.executescript(OLD_SCHEMA)
    with L.Ledger(tmp_path, "c1") as led:
        assert led.get("1").state == L.WRITTEN and led.pue_of("1") is None  # unknown, never a default
        assert led.skipped_counts() == {"refused": 1}
        job = Job("3", 0.0, 10.0, ("n1",), (1.0,))
        fp = JobFootprint("3", "ok", energy_kwh=1e-3, co2e_g=0.3, pue=1.35)
        led.record_many([L.Entry.from_footprint(job, fp, token="carbond:co2e_g=0.3")])
        assert led.pue_of("3") == 1.35
    with L.Ledger(tmp_path, "c1") as led:  # opening again migrates nothing twice
        assert led.pue_of("3") == 1.35


def test_an_unwritable_job_is_published_again(tmp_path):
    with L.Ledger(tmp_path, "c1") as led:
        led.record(L.Entry("5", L.PENDING_WRITE, 1.0, 1.0, token="carbond:co2e_g=1"))
        assert led.mark_unwritable("5", "gave-up")
        assert led.republish("5") and led.get("5").state == L.PENDING_WRITE
        assert led.get("5").token == "carbond:co2e_g=1" and led.get("5").reason is None
        assert not led.republish("5")  # only from unwritable
        assert led.mark_written("5") == 1 and led.mark_pending("5", "carbond:co2e_g=2")  # backfill --rewrite


def test_suspend_intervals_and_recovered_rows(tmp_path):
    with L.Ledger(tmp_path, "c1") as led:
        led.suspend_started("7", 100.0)
        led.suspend_started("7", 100.0)  # seen twice: one interval
        assert led.open_suspends() == {"7"}
        led.suspend_ended("7", 130.0)
        led.suspend_started("7", 200.0)
        led.suspend_ended("7", 205.0)
        assert led.suspended("7") == [(100.0, 130.0), (200.0, 205.0)] and led.open_suspends() == set()
        led.record(L.Entry("8", L.ACCOUNTED, 1.0, 1.0, origin=L.RECOVERED))
        led.record(L.Entry("9", L.ACCOUNTED, 1.0, 1.0))
        assert led.recovered_count() == 1


def _scan(led):
    return (led.totals(), led.outcome_counts(), led.skipped_counts(), led.recovered_count())


def _approx_equal(summary, scan):
    totals, outcomes, skipped, recovered = scan
    assert set(summary.totals) == set(totals)
    for key, t in totals.items():
        s = summary.totals[key]
        assert s.jobs == t.jobs and math.isclose(s.joules, t.joules, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(s.grams, t.grams, rel_tol=1e-9, abs_tol=1e-9)
    assert {k: v for k, v in summary.outcomes.items() if v} == outcomes
    assert {k: v for k, v in summary.skipped.items() if v} == skipped
    assert summary.recovered == recovered


OPS = st.lists(st.tuples(st.sampled_from(["record", "dead", "written", "unwritable", "republish", "pending"]),
                         st.integers(0, 6), st.floats(0, 1e6), st.sampled_from(["p", "q"])), max_size=40)


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_running_totals_always_equal_a_full_scan(tmp_path_factory, ops):
    """Whatever sequence of writes, by whichever writer, the O(groups) totals equal the scan."""
    d = tmp_path_factory.mktemp("l")
    with L.Ledger(d, "c1") as a, L.Ledger(d, "c1") as b:
        for i, (op, job, energy, part) in enumerate(ops):
            led = a if i % 2 else b  # two writers, like the daemon and backfill
            jid = str(job)
            if op == "record":
                led.record(L.Entry(jid, L.PENDING_WRITE, energy, energy / 7, partition=part, token="carbond:x=1",
                                   origin=L.RECOVERED if job % 3 == 0 else ""))
            elif op == "dead":
                led.record(L.Entry.dead(jid, "gave up"))
            elif op == "written":
                led.mark_written(jid)
            elif op == "unwritable":
                led.mark_unwritable(jid, ["would-mangle", "refused", "sacctmgr refused: x"][job % 3])
            elif op == "republish":
                led.republish(jid)
            else:
                led.mark_pending(jid, "carbond:y=2")
            _approx_equal(a.summary(), _scan(a))


def test_an_old_ledger_gets_its_running_totals_filled_once(tmp_path):
    with sqlite3.connect(tmp_path / L.FILENAME) as db:
        db.executescript(OLD_SCHEMA)
    with L.Ledger(tmp_path, "c1") as led:
        _approx_equal(led.summary(), _scan(led))
        assert led.summary().skipped == {"refused": 1} and led.summary().outcomes == {"accounted": 2}
    with L.Ledger(tmp_path, "c1") as led:  # not filled twice
        assert led.summary().outcomes == {"accounted": 2}
