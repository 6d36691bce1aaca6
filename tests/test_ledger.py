"""The ledger: a job counts once across restarts, repeats and crashes between write and ack."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from carbond import ledger as L
from carbond.ledger import Entry, Ledger, LedgerError, Totals


def fp_entry(job_id: str, kwh=0.5, g=100.0, token="carbond:co2e_g=100", partition="p", account="a", user="u"):
    return Entry(job_id=job_id, state=L.PENDING_WRITE, energy_j=kwh * 3.6e6, co2e_g=g, partition=partition,
                 account=account, user=user, end_time=1000.0 + int(job_id), token=token)


@pytest.fixture
def state_dir(tmp_path):
    return tmp_path / "state"


def reopen(state_dir, cluster="c1"):
    return Ledger(state_dir, cluster)


def test_record_is_the_dedup(state_dir):
    with reopen(state_dir) as led:
        assert led.record(fp_entry("1")) is True
        assert led.record(fp_entry("1", g=999)) is False
        assert led.get("1").co2e_g == 100.0
    assert (state_dir / L.FILENAME).exists()
    with sqlite3.connect(state_dir / L.FILENAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_clusters_are_separate(state_dir):
    with reopen(state_dir, "c1") as a, reopen(state_dir, "c2") as b:
        assert a.record(fp_entry("1")) and b.record(fp_entry("1"))
        assert a.totals() == b.totals() == {("p", "a", "u"): Totals(1.8e6, 100.0, 1)}


def test_crash_after_record_before_write(state_dir):
    """The spool record comes back after a restart: not counted again, but the write is still owed."""
    with reopen(state_dir) as led:
        led.record(fp_entry("7"))
    with reopen(state_dir) as led:
        assert led.record(fp_entry("7")) is False
        assert [e.job_id for e in led.pending_writes()] == ["7"]
        assert led.totals()[("p", "a", "u")].jobs == 1


def test_crash_between_write_and_ack(state_dir):
    """sacctmgr wrote, the ack never happened: the row is still pending; the ack is idempotent."""
    with reopen(state_dir) as led:
        led.record(fp_entry("8"))
        # ... sacctmgr succeeds here, then the process dies ...
    with reopen(state_dir) as led:
        (pending,) = led.pending_writes()
        assert pending.token == "carbond:co2e_g=100"
        assert led.mark_written("8", at=5.0) == 1
        assert led.mark_written("8") == 0
    with reopen(state_dir) as led:
        assert led.pending_writes() == []
        e = led.get("8")
        assert (e.state, e.written_at) == (L.WRITTEN, 5.0)
        assert led.totals() == {("p", "a", "u"): Totals(1.8e6, 100.0, 1)}
        assert led.record(fp_entry("8")) is False


def test_sigkill_mid_batch_loses_no_committed_row(state_dir, tmp_path):
    """A real process killed with SIGKILL right after a committed batch: every row is there once."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        from carbond.ledger import Entry, Ledger
        led = Ledger({str(state_dir)!r}, "c1")
        led.record_many([Entry(job_id=str(i), state="pending-write", energy_j=1.0, co2e_g=2.0, token="carbond:x=1")
                         for i in range(500)])
        led.mark_written([str(i) for i in range(0, 500, 2)])
        led._db.execute("BEGIN IMMEDIATE")
        led._db.execute("INSERT INTO jobs (cluster, job_id, state, recorded_at) VALUES ('c1', 'uncommitted', 'accounted', 0)")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)  # noqa: S603 - fixed argv, no shell
    assert proc.returncode == -signal.SIGKILL
    with reopen(state_dir) as led:
        assert led.state_counts() == {L.WRITTEN: 250, L.PENDING_WRITE: 250}
        assert led.totals()[("", "", "")] == Totals(500.0, 1000.0, 500)
        assert led.get("uncommitted") is None


def test_states_and_outcomes(state_dir):
    with reopen(state_dir) as led:
        led.record_many([
            fp_entry("1"), fp_entry("2"), fp_entry("3"),
            Entry(job_id="4", state=L.NOT_STARTED, energy_j=5.0),  # energy of a non-counted state is ignored
            Entry(job_id="5", state=L.ZERO_LENGTH),
            Entry.dead("6", "sacct never knew the job"),
            Entry(job_id="9", state=L.ACCOUNTED, energy_j=3.6e6, co2e_g=1.0, partition="q", account="a", user="v"),
        ])
        led.mark_written("1")
        assert led.mark_unwritable("2", "would-mangle")
        assert not led.mark_unwritable("1", "would-mangle")  # only from pending-write
        assert led.state_counts() == {L.WRITTEN: 1, L.UNWRITABLE: 1, L.PENDING_WRITE: 1, L.NOT_STARTED: 1,
                                      L.ZERO_LENGTH: 1, L.DEAD: 1, L.ACCOUNTED: 1}
        assert led.outcome_counts() == {L.ACCOUNTED: 4, L.NOT_STARTED: 1, L.ZERO_LENGTH: 1, L.DEAD: 1}
        assert led.skipped_counts() == {"would-mangle": 1}
        assert led.totals() == {("p", "a", "u"): Totals(3 * 1.8e6, 300.0, 3), ("q", "a", "v"): Totals(3.6e6, 1.0, 1)}
        assert led.known(["1", "4", "404"]) == {"1": L.WRITTEN, "4": L.NOT_STARTED}


def test_a_dead_row_gives_way_to_a_later_outcome(state_dir):
    with reopen(state_dir) as led:
        assert led.record(Entry.dead("6", "victoriametrics down"))
        assert led.record(Entry.dead("6", "again")) is False
        assert led.record(fp_entry("6")) is True
        assert led.get("6").state == L.PENDING_WRITE
        assert led.record(Entry.dead("6", "late")) is False


def test_mark_pending_rewrites_later(state_dir):
    with reopen(state_dir) as led:
        led.record(Entry(job_id="1", state=L.ACCOUNTED, energy_j=1.0, co2e_g=1.0))
        assert led.mark_pending("1", "carbond:co2e_g=1")
        assert led.pending_writes()[0].token == "carbond:co2e_g=1"
        assert led.totals()[("", "", "")].jobs == 1


def test_pending_writes_oldest_first_and_limit(state_dir):
    with reopen(state_dir) as led:
        led.record_many([fp_entry(str(i)) for i in (30, 10, 20)])
        assert [e.job_id for e in led.pending_writes()] == ["10", "20", "30"]
        assert [e.job_id for e in led.pending_writes(limit=1)] == ["10"]


def test_from_footprint():
    job = SimpleNamespace(job_id="42", partition="p", account="a", user="u", end=99.0)
    ok = SimpleNamespace(status="ok", energy_kwh=0.25, co2e_g=50.0, error=None)
    e = Entry.from_footprint(job, ok, token="carbond:co2e_g=50")
    assert (e.state, e.energy_j, e.co2e_g, e.end_time) == (L.PENDING_WRITE, 900000.0, 50.0, 99.0)
    assert Entry.from_footprint(job, ok).state == L.ACCOUNTED
    ns = Entry.from_footprint(job, SimpleNamespace(status="not-started", energy_kwh=0, co2e_g=0, error=None))
    assert ns.state == L.NOT_STARTED and not ns.counted and ns.outcome == L.NOT_STARTED
    with pytest.raises(LedgerError, match="job 42"):
        Entry.from_footprint(job, SimpleNamespace(status="error", error="boom"))


def test_unknown_state_is_refused(state_dir):
    with reopen(state_dir) as led, pytest.raises(LedgerError, match="job 1"):
        led.record(Entry(job_id="1", state="done"))


def test_unopenable_ledger_names_the_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LedgerError, match=str(blocker)):
        Ledger(blocker, "c1")
