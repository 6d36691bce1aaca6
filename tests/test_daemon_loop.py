"""The daemon loop in process, with fakes for Slurm, the engine and VictoriaMetrics (tests/daemon_fakes.py):
the error boundary, bisection, per-record backoff and retry window, per-write marking, restarts."""

from __future__ import annotations

import logging
import math
import os
import sqlite3
from dataclasses import replace

import pytest
from daemon_fakes import T0, WATTS, Killed, job, rig

from carbond import ledger as L
from carbond.daemon import POISON_TRIES, RecordContradicts, complete, with_record
from carbond.instance_lock import AlreadyRunning, InstanceLock
from carbond.slurm import JobFacts, Run
from carbond.spool import parse_record


def accounted(r) -> float:
    return r.value("carbond_jobs_total", outcome="accounted")


def ledger_matches_metrics(r) -> None:
    t = r.ledger.totals()
    assert accounted(r) == sum(x.jobs for x in t.values())
    grams = sum(x.grams for x in t.values())
    assert math.isclose(r.value("carbond_emissions_grams_total", cluster="c1", partition="debug", account=""),
                        grams) or math.isclose(sum(
                            s.value for m in r.registry.collect() if m.name == "carbond_emissions_grams"
                            for s in m.samples), grams)


def test_a_record_becomes_a_token_a_ledger_row_and_metrics(tmp_path):
    r = rig(tmp_path)
    r.slurm.add(job("5"))
    r.record("5")
    r.run()
    assert [raw for raw, _ in r.slurm.written] == ["5"]
    e = r.ledger.get("5")
    assert e.state == L.WRITTEN and e.pue == 1.5  # the PUE the job was accounted with
    assert math.isclose(e.energy_j, WATTS * 90)
    assert not list(r.spool.glob("*.job"))
    ledger_matches_metrics(r)
    assert r.slurm.version_calls == 1  # asked lazily, at the first write


def test_a_poison_record_is_bisected_out_and_dead_lettered_the_rest_proceed(tmp_path):
    r = rig(tmp_path)
    for i in range(1, 9):
        r.slurm.add(job(str(i)))
        r.record(str(i))
    r.slurm.poison = {"5"}
    r.run()
    assert sorted(raw for raw, _ in r.slurm.written) == ["1", "2", "3", "4", "6", "7", "8"]
    assert r.value("carbond_loop_errors_total", kind="poison") >= 1
    assert (r.spool / "5.job").exists() and r.dead() == []  # not yet: it may be transient
    r.run(POISON_TRIES)
    assert r.dead() == ["5.job"]
    reason = (r.spool / "dead" / "5.job.reason").read_text()
    assert "AttributeError" in reason and "fails on its own" in reason
    assert r.ledger.get("5").state == L.DEAD


def test_a_full_disk_is_retried_not_fatal_and_work_resumes_when_space_returns(tmp_path):
    r = rig(tmp_path)
    r.slurm.add(job("7"))
    r.record("7")
    db = r.ledger._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages + 2}")  # sqlite's own "database or disk is full"
    n = 0
    for size in (3000, 1000, 300, 100, 30, 1):  # fill every page of the jobs table (another cluster's rows)
        while True:
            try:
                db.execute("INSERT INTO jobs (cluster, job_id, state, recorded_at, reason) VALUES "
                           "('zz', ?, 'dead', 0, ?)", (str(n), "x" * size))
                n += 1
            except sqlite3.OperationalError as exc:
                assert "full" in str(exc)
                break
    r.run(3)
    assert r.ledger.get("7") is None and (r.spool / "7.job").exists() and r.dead() == []
    assert r.value("carbond_loop_errors_total", kind="ledger") >= 1
    db.execute("PRAGMA max_page_count=1073741823")  # space returns
    r.run(2)
    assert r.ledger.get("7").state == L.WRITTEN and not (r.spool / "7.job").exists()


def test_a_failed_rollback_never_masks_the_error(tmp_path):
    led = L.Ledger(tmp_path, "c1")
    with pytest.raises(L.LedgerError, match="cannot write the ledger"), led._transaction() as db:
        db.execute("ROLLBACK")  # sqlite ended the transaction itself, as on SQLITE_FULL
        raise sqlite3.OperationalError("database or disk is full")
    led.record(L.Entry("1", L.ACCOUNTED, 1.0, 1.0))  # and the ledger still works
    assert led.get("1") is not None


def test_the_retry_window_starts_at_the_first_attempt_and_outages_do_not_age_records(tmp_path):
    r = rig(tmp_path, retry=300)
    r.slurm.add(job("9"))
    r.record("9", epilog_time=str(int(T0 - 86400)))  # ended a day ago: no matter
    r.slurm.down = True
    r.run(20, advance=60)  # a 20-minute outage, longer than retry_seconds
    assert r.dead() == [] and r.value("carbond_loop_errors_total", kind="slurm") >= 1
    r.slurm.down = False
    r.slurm.fail_writes = {"9"}  # then a transient error
    r.run(2, advance=60)
    assert r.dead() == []
    r.slurm.fail_writes = set()
    r.run(2, advance=61)
    assert r.ledger.get("9").state == L.WRITTEN and r.dead() == []


def test_a_job_slurmdbd_never_learns_of_is_dead_lettered_after_retry_seconds_from_the_first_try(tmp_path):
    r = rig(tmp_path, retry=300)
    r.record("404")
    r.run(4, advance=60)
    assert r.dead() == []
    r.run(3, advance=60)
    assert r.dead() == ["404.job"] and r.ledger.get("404").state == L.DEAD


def test_a_write_slurmdbd_keeps_answering_not_in_the_database_gives_up_after_retry_seconds(tmp_path):
    r = rig(tmp_path, retry=300)
    r.slurm.add(job("405"))
    r.record("405")
    r.slurm.not_in_db = {"405"}
    r.run(4, advance=60)
    assert r.dead() == [] and r.ledger.get("405").state == L.PENDING_WRITE
    r.run(3, advance=60)  # an answer about this job, not an outage: it ages, then gives up
    assert r.dead() == ["405.job"] and r.ledger.get("405").state == L.UNWRITABLE
    assert r.value("carbond_writes_skipped_total", reason="gave-up") == 1 and accounted(r) == 1


def test_records_in_backoff_never_hold_back_a_newer_one(tmp_path):
    r = rig(tmp_path)
    for i in range(1500):  # slurmdbd never hears of these
        r.record(str(100000 + i))
    r.run(1, advance=0.1)
    assert len(r.slurm.reads[-1]) == 1000
    r.run(1, advance=0.1)  # the other 500 are read now: none waits behind the first 1000
    assert len(r.slurm.reads[-1]) == 500
    r.slurm.add(job("77"))
    r.record("77")
    r.run(1, advance=0.1)
    assert r.slurm.reads[-1] == ["77"] and r.ledger.get("77").state == L.WRITTEN


def test_each_write_is_marked_as_it_returns_and_a_restart_redoes_none_of_them(tmp_path):
    r = rig(tmp_path)
    for i in range(1, 7):
        r.slurm.add(job(str(i)))
        r.record(str(i))
    r.slurm.crash_after = 3
    with pytest.raises(Killed):
        r.run()
    assert r.ledger.state_counts() == {L.WRITTEN: 3, L.PENDING_WRITE: 3}
    r.slurm.crash_after = None
    r.slurm.written.clear()
    r2 = rig(tmp_path, slurm=r.slurm)  # a restart: new daemon, same spool, ledger and Slurm
    r2.run()
    assert sorted(raw for raw, _ in r.slurm.written) == ["4", "5", "6"]
    assert r2.ledger.state_counts() == {L.WRITTEN: 6}
    assert accounted(r2) == 6


def test_two_records_of_one_job_never_mix_and_count_once(tmp_path):
    r = rig(tmp_path)
    r.slurm.add(job("30"))
    r.record("30", name="30.job")
    r.record("30", name="30.1700000001.99.job", nodes="n2", user="mallory")
    r.run(2)
    assert len(r.slurm.written) == 1 and accounted(r) == 1
    assert r.ledger.get("30").state == L.WRITTEN and not list(r.spool.glob("*.job"))


def test_a_refused_write_is_unwritable_with_a_fixed_label_and_requeuing_its_dead_letter_publishes_it(tmp_path):
    r = rig(tmp_path)
    r.slurm.add(job("40"))
    r.record("40")
    r.slurm.refuse = {"40"}
    r.run()
    assert r.ledger.get("40").state == L.UNWRITABLE and r.dead() == ["40.job"]
    assert r.value("carbond_writes_skipped_total", reason="refused") == 1
    labels = {s.labels.get("reason") for m in r.registry.collect() if m.name == "carbond_writes_skipped"
              for s in m.samples}
    assert labels <= set(L.SKIP_REASONS)
    r.slurm.refuse = set()
    os.replace(r.spool / "dead" / "40.job", r.spool / "40.job")  # the operator re-queues it
    r.run()
    assert r.ledger.get("40").state == L.WRITTEN and r.slurm.written[-1][0] == "40"
    # issue 16: the counter counts the skip that happened (a _total never goes down); the gauge is now
    assert r.value("carbond_writes_skipped_total", reason="refused") == 1 and accounted(r) == 1
    assert r.value("carbond_writes_unwritable", reason="refused") == 0


def test_a_requeued_dead_letter_is_counted_once(tmp_path):
    r = rig(tmp_path, retry=60)
    r.record("50")
    r.run(3)
    assert r.dead() == ["50.job"] and r.value("carbond_jobs_total", outcome="dead") == 1
    r.slurm.add(job("50"))
    os.replace(r.spool / "dead" / "50.job", r.spool / "50.job")
    r.run()
    assert r.ledger.get("50").state == L.WRITTEN
    # issue 16: carbond_jobs_total{outcome="dead"} went 1 -> 0 here, read by rate() as a reset
    assert r.value("carbond_jobs_total", outcome="dead") == 1 and accounted(r) == 1
    assert r.value("carbond_ledger_jobs", state="dead") == 0 and r.value("carbond_ledger_jobs", state="written") == 1


def test_slurmdbds_complete_record_wins_over_the_spool_hint():
    rec = parse_record(b"carbond-spool 1\njob_id=60\narray_job_id=\narray_task_id=\nnodes=n1\ncpus_per_node=2\n"
                       b"partition=debug\naccount=a\nuser=alice\nuid=1\nexit_code=0:0\ncluster=c1\n"
                       b"epilog_time=1\nend\n", "/s/60.job")
    final = job("60", nodes=("n2",), cpus=(2.0,), account="b", user="alice")  # requeued onto n2
    assert with_record(final, rec).nodes == ("n2",) and with_record(final, rec).account == "b"
    early = job("60", nodes=("n1",), cpus=(2.0,), partition="")  # incomplete: waited out, empties filled
    assert not complete(early, rec)
    assert with_record(early, rec).partition == "debug" and with_record(early, rec).user == "alice"
    with pytest.raises(RecordContradicts, match="bob"):
        with_record(replace(final, user="bob"), rec)  # another user than slurmdbd's: never written


def test_a_record_that_contradicts_slurmdbd_is_dead_lettered_never_written(tmp_path, caplog):
    # issue 16: `sacctmgr ... where jobid=777_3` received job 1239's comment and token
    r = rig(tmp_path)
    r.slurm.add(job("1239", user="alice"))
    r.record("1239", array_job_id="777", array_task_id="3")
    with caplog.at_level(logging.ERROR, logger="carbond.daemon"):
        r.run()
    assert r.slurm.written == [] and r.dead() == ["1239.job"]
    reason = (r.spool / "dead" / "1239.job.reason").read_text()
    assert "contradicts slurmdbd" in reason and "777_3" in reason
    assert any("contradicts slurmdbd" in m for m in caplog.messages)
    assert r.ledger.get("1239").state == L.DEAD and accounted(r) == 0


def test_a_forged_record_never_changes_whose_or_where_a_footprint_is(tmp_path):
    # issue 16: a forged record made a 1-node job of one user a 64-node job of another account
    r = rig(tmp_path)
    r.slurm.add(job("301", account="physics", user="alice"))
    r.record("301", nodes="n[1-64]", cpus_per_node="2(x64)", partition="gpu", account="other")
    r.run()
    e = r.ledger.get("301")
    assert (e.state, e.partition, e.account, e.user) == (L.WRITTEN, "debug", "physics", "alice")
    assert [j.nodes for j in r.engine.seen] == [("n1",)]


def test_slurmdbds_first_second_is_waited_out_then_its_record_wins(tmp_path):
    r = rig(tmp_path)
    r.daemon.cfg = replace(r.daemon.cfg, settle_seconds=30.0)
    r.slurm.add(job("302", nodes=("n1",), cpus=(4.0,), partition="", end=T0 - 1))  # batch host only
    r.record("302", nodes="n[1-2]", cpus_per_node="2(x2)")
    r.run(advance=1.0)
    assert r.slurm.written == [] and r.ledger.get("302") is None  # waiting, not accounted on the hint
    r.slurm.add(job("302", nodes=("n1", "n2"), cpus=(2.0, 2.0), end=T0 - 1))
    r.run(advance=1.0)
    assert r.ledger.get("302").state == L.WRITTEN and [j.nodes for j in r.engine.seen] == [("n1", "n2")]


def test_a_requeued_job_is_charged_every_run_each_on_its_own_nodes_once(tmp_path):
    r = rig(tmp_path)
    final = job("61", start=T0 - 100, end=T0 - 40, nodes=("n2",))
    r.slurm.add(final)
    r.slurm.runs["61"] = [Run("61", "REQUEUED", T0 - 300, T0 - 200, ("n1",), 2, 0.0),
                          Run("61", "COMPLETED", T0 - 100, T0 - 40, ("n2",), 2, 0.0)]
    r.record("61", nodes="n1")  # the first run's record: a hint only
    r.run()
    e = r.ledger.get("61")
    assert math.isclose(e.energy_j, WATTS * (100 + 60))
    assert sorted((j.nodes, j.start) for j in r.engine.seen) == [(("n1",), T0 - 300), (("n2",), T0 - 100)]


def test_suspended_intervals_are_not_charged_when_recorded_else_pro_rata_flagged(tmp_path):
    r = rig(tmp_path)
    r.slurm.suspended = {"70"}
    r.slurm.suspend_times["70"] = T0 - 80
    r.daemon.suspends = __import__("carbond.suspend", fromlist=["SuspendWatch"]).SuspendWatch(
        r.slurm, r.ledger, r.clock)
    r.daemon.suspends.poll()
    r.slurm.suspended = set()
    r.slurm.suspend_times["70"] = T0 - 50
    r.daemon.suspends.poll()
    assert r.ledger.suspended("70") == [(T0 - 80, T0 - 50)]
    r.slurm.add(job("70", start=T0 - 100, end=T0 - 10))
    r.slurm.runs["70"] = [Run("70", "COMPLETED", T0 - 100, T0 - 10, ("n1",), 2, 30.0)]
    r.slurm.add(job("71", start=T0 - 100, end=T0 - 10))  # suspended, but no interval recorded
    r.slurm.runs["71"] = [Run("71", "COMPLETED", T0 - 100, T0 - 10, ("n1",), 2, 30.0)]
    r.record("70")
    r.record("71")
    r.run()
    assert math.isclose(r.ledger.get("70").energy_j, WATTS * 60)
    assert math.isclose(r.ledger.get("71").energy_j, WATTS * 60)  # 60 of 90 s: pro rata
    tokens = dict(r.slurm.written)
    assert "cov=" not in tokens["70"] and "cov=" in tokens["71"]  # the estimate says so


def test_reconciliation_accounts_jobs_that_never_reached_the_spool_and_counts_them(tmp_path):
    r = rig(tmp_path)
    from carbond.reconcile import Reconciler

    r.daemon.reconciler = Reconciler(r.slurm, r.ledger, r.clock, every=60, lag=30, monotonic=r.clock)
    lost = job("80", start=T0 - 200, end=T0 - 60)
    spooled = job("81", start=T0 - 200, end=T0 - 60)
    r.slurm.add(lost)
    r.slurm.add(spooled)
    r.slurm.ended_window = {"80": JobFacts(lost, "COMPLETED"), "81": JobFacts(spooled, "COMPLETED")}
    r.record("81")
    r.slurm.down = True
    r.run(1, advance=0)  # the spool record waits for slurmdbd
    r.slurm.down = False
    r.run(3, advance=61)
    assert r.ledger.get("80").state == L.WRITTEN and r.ledger.get("80").origin == L.RECOVERED
    assert r.ledger.get("81").origin == "" and accounted(r) == 2
    assert r.value("carbond_jobs_recovered_total") == 1


def test_stopping_leaves_unstarted_writes_for_the_next_start(tmp_path):
    r = rig(tmp_path)
    r.slurm.add(job("90"))
    r.record("90")
    r.daemon.stop.set()
    r.run()
    assert r.slurm.written == [] and (r.spool / "90.job").exists() and r.ledger.get("90") is None


def test_an_outage_of_200_jobs_logs_kilobytes(tmp_path, caplog):
    r = rig(tmp_path)
    for i in range(200):
        r.slurm.add(job(str(1000 + i)))
        r.record(str(1000 + i))
    caplog.set_level(logging.INFO, logger="carbond")
    r.slurm.down = True
    r.run(60, advance=1)
    r.slurm.down = False
    r.run(3, advance=61)
    text = caplog.text
    assert r.ledger.state_counts() == {L.WRITTEN: 200}
    print(f"\nFIGURES outage-log: 200 jobs, 60 s outage, {len(text)} bytes of log")
    assert len(text) < 40_000, len(text)
    assert "-j 1,2,3" not in text  # never a command line or its job id list


def test_watchdog_is_fed_from_progress_not_from_the_loop(tmp_path):
    r = rig(tmp_path)
    sent = []
    r.daemon.notify = sent.append
    r.daemon.progress.touch()
    assert r.daemon.progress.fresh(30)
    r.clock.advance(31)
    assert not r.daemon.progress.fresh(30)


def test_watchdog_period_is_the_one_systemd_passed():
    """A drop-in may shorten WatchdogSec: the heartbeat follows WATCHDOG_USEC, not the shipped 60 s."""
    from carbond.daemon import watchdog_seconds

    me = str(os.getpid())
    assert watchdog_seconds({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": me}) == 5.0
    assert watchdog_seconds({"WATCHDOG_USEC": "5000000"}) == 5.0
    assert watchdog_seconds({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}) is None  # meant for another
    assert watchdog_seconds({}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}) is None


def test_a_hung_loop_stops_the_heartbeat_within_half_the_watchdog(tmp_path):
    """With WatchdogSec=1 (a drop-in), the heartbeat stops feeding 0.5 s after the last progress."""
    import threading
    import time

    r = rig(tmp_path)
    sent: list[str] = []
    r.daemon.notify = sent.append
    r.daemon.watchdog = 1.0
    r.daemon.progress.clock = time.monotonic
    r.daemon.progress.touch()
    beat = threading.Thread(target=r.daemon._heartbeat)
    beat.start()
    time.sleep(0.4)
    fed = sent.count("WATCHDOG=1")
    time.sleep(1.2)  # no progress at all: a hung loop
    r.daemon.stop.set()
    beat.join(5)
    assert fed >= 1
    assert sent.count("WATCHDOG=1") <= fed + 2  # at most the pings before 0.5 s of silence passed


def test_a_second_daemon_on_the_same_spool_refuses(tmp_path):
    with InstanceLock(tmp_path / "state", tmp_path / "spool"):
        with pytest.raises(AlreadyRunning, match="another carbond .* already running"):
            InstanceLock(tmp_path / "other-state", tmp_path / "spool").acquire()
        with pytest.raises(AlreadyRunning):
            InstanceLock(tmp_path / "state", tmp_path / "other-spool").acquire()
    InstanceLock(tmp_path / "state", tmp_path / "spool").acquire().release()  # free again


def test_the_whole_pass_is_an_error_boundary(tmp_path):
    r = rig(tmp_path)
    (r.spool).rmdir()
    r.spool.write_text("not a directory")
    r.run(2)  # no exception escapes
    assert r.value("carbond_loop_errors_total", kind="spool") + r.value("carbond_loop_errors_total",
                                                                          kind="internal") >= 1
    r.spool.unlink()
    r.spool.mkdir()
    r.slurm.add(job("3"))
    r.record("3")
    r.run()
    assert r.ledger.get("3").state == L.WRITTEN


def test_build_runs_no_slurm_command(tmp_path):
    from carbond.config import Config, SlurmConfig
    from carbond.daemon import build

    cfg = Config(cluster="c1", state_dir=str(tmp_path / "s"), spool_dir=str(tmp_path / "sp"),
                 slurm=SlurmConfig(sacct="/nonexistent/sacct", sacctmgr="/nonexistent/sacctmgr"))
    d = build(cfg)
    assert d.publisher.lowercases is None  # asked at the first write, not before READY=1
    d.ledger.close()


@pytest.mark.parametrize("section", ["slurm", "victoriametrics", "intensity"])
def test_check_config_keeps_every_blocking_call_under_half_the_watchdog(section):
    from carbond.config import Config, from_mapping
    from carbond.errors import ConfigError

    assert getattr(Config(), section).timeout < 30  # the defaults pass
    assert getattr(from_mapping({section: {"timeout": 29}}), section).timeout == 29
    with pytest.raises(ConfigError, match=rf"{section}.timeout: must be above 0 and below WatchdogSec/2 = 30 s"):
        from_mapping({section: {"timeout": 30}})


def test_a_csv_file_broken_at_run_time_is_unavailable_not_a_config_error(tmp_path):
    from carbond.errors import IntensityUnavailable
    from carbond.intensity.csvfile import CsvIntensity

    f = tmp_path / "i.csv"
    f.write_text("from,to,intensity\n2024-01-01T00:00Z,2024-01-01T00:30Z,100\n")
    p = CsvIntensity(str(f))
    p.reload()
    f.write_text("from,to,intensity\n2024-01-01T00:00Z,oops,100\n")
    os.utime(f, ns=(1, 10**18))
    with pytest.raises(IntensityUnavailable, match="i.csv"):
        p.fetch(1704067200, 1704069000)


def test_slow_sacctmgr_past_the_watchdog_keeps_it_fed_and_marks_each_write_as_it_returns(tmp_path, monkeypatch):
    """The in-process twin of the systemd test: sacctmgr takes longer per call than the watchdog
    allows for a whole step; WATCHDOG=1 keeps coming from progress stamps, and the ledger is marked
    write by write, so a kill mid-batch keeps every finished write."""
    import subprocess
    import threading
    import time

    from carbond import daemon as D
    from carbond.config import SlurmConfig
    from carbond.slurm import SlurmIO

    monkeypatch.setattr(D, "WATCHDOG_SECONDS", 1.0)
    monkeypatch.setattr(D, "HEALTH_EVERY", 0.1)
    r = rig(tmp_path)
    calls = []

    def runner(cmd, **kw):
        time.sleep(0.3)  # each call longer than the whole "watchdog" budget of 0.5 s... in sum
        calls.append(cmd[0])
        r.daemon.progress.touch()
        return subprocess.CompletedProcess(cmd, 0, b" Modified jobs...\n  1 submitted at x\n", b"")

    io = SlurmIO(SlurmConfig(concurrency=1), runner=runner)
    io.read_jobs = r.slurm.read_jobs  # type: ignore[method-assign]
    io.read_runs = r.slurm.read_runs  # type: ignore[method-assign]
    io._version = (22, 5, 8)
    r.daemon.slurm = r.daemon.publisher.slurm = io
    r.daemon.clock = time.time  # real time for the heartbeat thread
    for i in range(1, 9):
        r.slurm.add(job(str(i)))
        r.record(str(i))
    sent: list[str] = []
    r.daemon.notify = sent.append
    r.daemon.progress.clock = time.monotonic
    seen_mid: list[int] = []

    def watch():
        while len(calls) < 8:
            seen_mid.append(r.ledger.state_counts().get(L.WRITTEN, 0))
            time.sleep(0.1)

    t = threading.Thread(target=watch)
    t.start()
    loop = threading.Thread(target=r.daemon.serve_forever)
    loop.start()
    t.join(30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and r.ledger.state_counts().get(L.WRITTEN, 0) < 8:
        time.sleep(0.05)
    r.daemon.stop.set()
    loop.join(10)
    assert r.ledger.state_counts() == {L.WRITTEN: 8}
    assert sent.count("WATCHDOG=1") >= 8  # ~2.4 s of writes, fed every 0.1 s throughout
    assert any(0 < n < 8 for n in seen_mid)  # marked one by one, not after the whole batch
    assert sent[0] == "READY=1" and sent[-1] == "STOPPING=1"


@pytest.mark.parametrize("error, kind", [
    (lambda: __import__("carbond.errors", fromlist=["x"]).IntensityUnavailable("csv broken"), "intensity"),
    (lambda: __import__("carbond.errors", fromlist=["x"]).VictoriaError("down"), "victoriametrics"),
    (lambda: __import__("carbond.errors", fromlist=["x"]).ConfigError(["intensity.path: bad"]), "internal"),
])
def test_a_service_or_setting_failing_at_run_time_waits_without_ageing_anything(tmp_path, monkeypatch, error, kind):
    r = rig(tmp_path, retry=60)
    r.slurm.add(job("11"))
    r.record("11")

    def broken(jobs):
        raise error()

    monkeypatch.setattr(r.engine, "account", broken)
    r.run(10, advance=30)  # five times retry_seconds
    assert r.dead() == [] and r.ledger.get("11") is None
    assert r.value("carbond_loop_errors_total", kind=kind) >= 1
    monkeypatch.undo()
    r.run(2, advance=11)
    assert r.ledger.get("11").state == L.WRITTEN


def test_sigterm_during_slow_writes_stops_within_one_call_and_loses_nothing(tmp_path):
    import subprocess
    import threading
    import time

    from carbond.config import SlurmConfig
    from carbond.slurm import SlurmIO

    r = rig(tmp_path)
    calls: list[str] = []

    def runner(cmd, **kw):
        time.sleep(0.3)
        calls.append(cmd[-1])
        return subprocess.CompletedProcess(cmd, 0, b" Modified jobs...\n  1 submitted at x\n", b"")

    io = SlurmIO(SlurmConfig(concurrency=1), runner=runner)
    io.read_jobs, io.read_runs = r.slurm.read_jobs, r.slurm.read_runs  # type: ignore[method-assign]
    io._version = (22, 5, 8)
    r.daemon.slurm = r.daemon.publisher.slurm = io
    for i in range(1, 11):
        r.slurm.add(job(str(i)))
        r.record(str(i))
    loop = threading.Thread(target=r.daemon.serve_forever)
    loop.start()
    time.sleep(0.8)
    t0 = time.monotonic()
    r.daemon.stop.set()  # what the SIGTERM handler does
    loop.join(10)
    assert not loop.is_alive() and time.monotonic() - t0 < 2.0  # one call in flight, not the 7+ left (2.1 s)
    counts = r.ledger.state_counts()
    assert 0 < counts.get(L.WRITTEN, 0) < 10 and counts.get(L.WRITTEN, 0) == len(calls)
    assert counts[L.WRITTEN] + counts.get(L.PENDING_WRITE, 0) == 10
    r2 = rig(tmp_path, slurm=r.slurm)  # the next start writes only what was not written
    r2.run(2)
    assert r2.ledger.state_counts() == {L.WRITTEN: 10}
    assert len(r.slurm.written) == 10 - len(calls)


def test_a_wall_clock_stepped_back_an_hour_never_stalls_backoff_or_the_suspend_poll(tmp_path):
    # issue 16: backoff deadlines on the wall clock left 5 tokens pending 120 s after sacctmgr recovered
    from daemon_fakes import Clock

    r = rig(tmp_path, suspend_poll_seconds=5.0)
    mono = Clock(1000.0)
    r.daemon.monotonic = mono
    polls: list[float] = []
    r.daemon.suspends = type("Watch", (), {"poll": lambda self: polls.append(mono())})()
    for i in range(80, 85):
        r.slurm.add(job(str(i)))
        r.record(str(i))
    r.slurm.down = True
    r.daemon.step()
    assert r.slurm.written == [] and polls == [1000.0]
    r.clock.advance(-3600.0)  # NTP steps the wall clock back an hour
    r.slurm.down = False
    for _ in range(12):
        mono.advance(1.0)
        r.daemon.step()
    assert sorted(raw for raw, _ in r.slurm.written) == [str(i) for i in range(80, 85)]
    assert len(polls) >= 3  # every 5 s of real time, whatever the wall clock says


def test_a_field_too_long_for_one_argument_is_skipped_as_too_long_never_retried_for_ever(tmp_path):
    # issue 16: a comment over 128 KiB made sacctmgr fail to start (E2BIG), taken for an outage
    import subprocess

    from carbond.config import SlurmConfig
    from carbond.slurm import SlurmIO

    r = rig(tmp_path, retry=60)
    ran: list[list[str]] = []

    def runner(cmd, **kw):  # the real exec: the kernel refuses an argument over 128 KiB
        ran.append(cmd)
        return subprocess.run(["/bin/echo", " Modified jobs...\n  1 submitted at x", *cmd[1:]], **kw)

    io = SlurmIO(SlurmConfig(concurrency=1, sacctmgr="/bin/true"), runner=runner)
    io.read_jobs = r.slurm.read_jobs  # type: ignore[method-assign]
    io.read_runs = r.slurm.read_runs  # type: ignore[method-assign]
    io._version = (22, 5, 8)
    r.daemon.slurm = r.daemon.publisher.slurm = io
    r.slurm.add(job("90"), admin="x" * (128 * 1024))
    r.slurm.add(job("91"), admin="short note")
    r.record("90")
    r.record("91")
    r.run(3)
    assert r.ledger.get("91").state == L.WRITTEN
    e = r.ledger.get("90")
    assert (e.state, e.reason) == (L.UNWRITABLE, "too-long") and e.co2e_g > 0  # counted, field left alone
    assert not (r.spool / "90.job").exists() and r.value("carbond_writes_skipped_total", reason="too-long") == 1
    assert r.value("carbond_loop_errors_total", kind="slurm") == 0
    assert all(len(a) < 128 * 1024 for cmd in ran for a in cmd)


def test_e2big_from_a_slurm_command_is_this_records_fault_not_an_outage():
    from carbond.config import SlurmConfig
    from carbond.daemon import _outage_error, error_kind, too_long
    from carbond.slurm import SlurmIO

    io = SlurmIO(SlurmConfig(sacctmgr="/bin/true"))
    with pytest.raises(Exception) as err:
        io.write_comment("5", "admin_comment", "x" * (200 * 1024))  # the real exec fails: E2BIG
    assert too_long(err.value) and not _outage_error(err.value) and error_kind(err.value) == "poison"


def test_reconciliation_keeps_its_rhythm_when_the_wall_clock_steps_back():
    """An NTP correction or a VM restore steps the wall clock back an hour: the next reconciliation
    is still due `every` seconds later (monotonic), not an hour later."""
    from carbond.reconcile import Reconciler

    class Slurm:
        calls = 0

        def jobs_ended_between(self, lo, hi):
            Slurm.calls += 1
            return {}

    wall, mono = [T0], [100.0]
    rec = Reconciler(Slurm(), None, lambda: wall[0], every=60, lag=30, monotonic=lambda: mono[0])
    assert rec.due()
    rec.find(())
    wall[0] -= 3600  # stepped back
    mono[0] += 61
    assert rec.due()
