"""Faults on the real cluster (Slurm 22.05 here): each test breaks one promise if carbond regresses.

Every test runs its own daemon (one per spool: the lock allows no other), waits for conditions,
and fails if the daemon died. Figures (jobs, tokens, ledger rows, metric totals, drain time) are
printed with -s: `CARBOND_TESTBED_DIR=... .venv/bin/python -m pytest -s tests/test_e2e_faults.py`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from carbond_stack import CarbondStack, requeue_onto, wait_for
from test_spool import GOOD, record_text

from carbond.config import SlurmConfig
from carbond.slurm import SlurmIO
from carbond.token import method_of

pytestmark = [pytest.mark.slurm, pytest.mark.vm]

COUNTED = ("written", "unwritable", "pending-write", "accounted")
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}


@contextlib.contextmanager
def running(slurm, vm, workdir: Path, node_intervals=None, **kw):
    """A daemon with its own power feeder for the duration of the block; it must still be alive at the end."""
    stack = CarbondStack(slurm, vm.url, workdir, **kw)
    stack.start_feeder(1.0, node_intervals)
    try:
        stack.start()
        yield stack
        stack.alive()
        t0 = time.monotonic()
        assert stack.stop(timeout=25) == 0  # SIGTERM: a clean exit, within the longest Slurm call
        assert time.monotonic() - t0 < 25
    finally:
        stack.close()


def ended(slurm, job_id: str, timeout: float = 120.0) -> dict[str, str]:
    slurm.wait_state(job_id, ENDED, timeout=timeout)
    return slurm.wait_sacct(job_id, ["State", "Start", "End"],
                            lambda r: r["End"].isdigit() and r["State"] not in ("RUNNING", "PENDING", "COMPLETING"))


def ledger(stack) -> dict[str, tuple]:
    return {r[0]: r for r in stack.ledger_rows()}


def metric(stack, name: str, **labels) -> float:
    want = tuple(sorted(labels.items()))
    return sum(v for (n, lb), v in stack.metrics().items() if n == name and (not labels or lb == want))


def assert_metrics_equal_ledger(stack) -> dict[str, float]:
    rows = [r for r in stack.ledger_rows() if r[1] in COUNTED]
    energy, grams = sum(r[2] for r in rows), sum(r[3] for r in rows)
    m_energy = metric(stack, "carbond_energy_joules_total")
    m_grams = metric(stack, "carbond_emissions_grams_total")
    m_jobs = metric(stack, "carbond_jobs_total", outcome="accounted")
    assert math.isclose(m_energy, energy, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(m_grams, grams, rel_tol=1e-9, abs_tol=1e-9)
    assert m_jobs == len(rows)
    return {"ledger_counted": len(rows), "metric_jobs": m_jobs, "energy_j": energy, "metric_energy_j": m_energy}


def report(name: str, **figures) -> None:
    print(f"\nFIGURES {name}: " + json.dumps(figures, default=str))


def footprint_kwh(stack, nodes: str, start: float, end: float, cpus: float | None = None) -> float:
    """The engine's answer for a window, through the CLI (an independent path from the daemon's)."""
    cmd = [sys.executable, "-m", "carbond", "--config", str(stack.config), "footprint", "--nodes", nodes,
           "--start", str(int(start)), "--end", str(int(end)), "--json"] + (["--cpus", str(cpus)] if cpus else [])
    proc = subprocess.run(cmd, env=stack.env(), capture_output=True, text=True, check=False, timeout=60)  # noqa: S603
    assert proc.returncode == 0, proc.stderr
    return float(json.loads(proc.stdout.splitlines()[0])["energy_kwh"])


def facts(slurm, job_id):
    io = SlurmIO(SlurmConfig(sacct="/usr/bin/sacct", sacctmgr="/usr/bin/sacctmgr"), env=slurm.env)
    return io.read_jobs([job_id])[job_id]


# ---------------------------------------------------------------------------------------------


def test_a_second_daemon_on_the_same_spool_refuses(slurm, vm, tmp_path):
    with running(slurm, vm, tmp_path / "a") as a:
        b = CarbondStack(slurm, vm.url, tmp_path / "b")  # its own state_dir, the same spool: an HA pair's mistake
        proc = subprocess.run([sys.executable, "-m", "carbond", "--config", str(b.config), "run"],  # noqa: S603
                              env=b.env(), capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 1
        assert "another carbond" in proc.stderr and "already running" in proc.stderr, proc.stderr
        job = slurm.sbatch(["-n1", "-J", "lockok"], "sleep 1")
        assert a.wait_tokens(job)[job]["co2e_g"] > 0  # the first one goes on
        report("two-daemons", second_exit=proc.returncode, message=proc.stderr.strip()[:160])


def test_a_comment_holding_the_delimiter_is_accounted_and_kept(slurm, vm, tmp_path):
    """On 22.05 the \\x1f sends the batch to `sacct --json`; with the JSON parser of every data_parser
    version (another change) it must pass on newer Slurm too."""
    with running(slurm, vm, tmp_path) as stack:
        comment = "forged\x1f999\x1fCOMPLETED\nsecond line"
        job = slurm.sbatch(["-n1", "-J", "unitsep", f"--comment={comment}"], "sleep 1")
        other = slurm.sbatch(["-n1", "-J", "neighbour"], "sleep 1")
        toks = {**stack.wait_tokens(job), **stack.wait_tokens(other)}
        assert toks[job]["co2e_g"] > 0 and toks[other]["co2e_g"] > 0
        assert facts(slurm, job).comment == comment


def test_1000_unresolvable_records_never_delay_a_real_job(slurm, vm, tmp_path):
    spool = Path(slurm.spool_dir)
    fake = [spool / f"{9_100_000 + i}.job" for i in range(1000)]
    now = str(int(time.time()))
    try:
        for i, path in enumerate(fake):
            values = dict(GOOD, job_id=str(9_100_000 + i), array_job_id="", array_task_id="", nodes="n1",
                          cpus_per_node="1", epilog_time=now)
            path.write_text(record_text(values))
        with running(slurm, vm, tmp_path) as stack:
            job = slurm.sbatch(["-n1", "-J", "behind1000"], "sleep 2")
            end = float(ended(slurm, job)["End"])
            wait_for(lambda: any(stack.tokens(job).values()), 60, "the real job's token", stack, every=0.1)
            latency = time.time() - end
            # settle: a power sample past the end (1 s cadence) plus a pass; never the 1000 ahead of it
            assert latency < 15, latency
            # the fake ids only (9100000-9100999): a real job 91x dead-lettered by another test is not one
            assert not list((spool / "dead").glob("9100???.job")) if (spool / "dead").exists() else True
            report("1000-unresolvable+1", waiting_records=1000, real_job_token_after_end_s=round(latency, 1),
                   ledger_rows=len(stack.ledger_rows()))
    finally:
        for path in fake:
            path.unlink(missing_ok=True)


def test_state_dir_on_a_full_disk_then_space_returns(slurm, vm, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(state)], check=True)  # noqa: S603,S607
    try:
        with running(slurm, vm, tmp_path / "w", state_dir=state) as stack:
            warm = slurm.sbatch(["-n1", "-J", "warm"], "sleep 1")
            stack.wait_tokens(warm)
            filler = state / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)  # fill the disk to the last byte
            try:
                for size in (65536, 4096, 1):
                    with contextlib.suppress(OSError):
                        while os.write(fd, b"\0" * size):
                            pass
            finally:
                os.close(fd)
            jobs = [slurm.sbatch(["-n1", "-J", f"full{i}"], "sleep 1") for i in range(3)]
            for j in jobs:
                ended(slurm, j)
            wait_for(lambda: metric(stack, "carbond_loop_errors_total", kind="ledger") > 0, 60,
                     "a contained ledger error", stack)
            assert not any(stack.tokens(j)[j] for j in jobs)
            outage = [line for line in stack.log.read_text().splitlines() if "outage: ledger" in line]
            assert outage and "full" in outage[0], outage  # sqlite's "database or disk is full", unmasked
            t0 = time.monotonic()
            filler.unlink()  # space returns
            for j in jobs:
                stack.wait_tokens(j, timeout=60)
            drain = time.monotonic() - t0
            rows = ledger(stack)
            assert all(rows[j][1] == "written" for j in jobs)
            figures = assert_metrics_equal_ledger(stack)
            report("full-state-dir", jobs=len(jobs), drain_after_space_s=round(drain, 1), outage_line=outage[0][-120:],
                   ledger_errors=metric(stack, "carbond_loop_errors_total", kind="ledger"), **figures)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)  # noqa: S603,S607


def _wrappers(tmp: Path) -> tuple[Path, Path, Path]:
    """sacct/sacctmgr that fail while a flag file exists (slurmdbd down, as the client reports it)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    flags = (tmp / "sacct.down", tmp / "sacctmgr.down")
    for name, flag in zip(("sacct", "sacctmgr"), flags, strict=True):
        w = bin_dir / name
        w.write_text(f"#!/bin/sh\nif [ -e {flag} ]; then\n"
                     f"  echo '{name}: error: Problem talking to the database: Connection refused' >&2\n"
                     f"  exit 1\nfi\nexec /usr/bin/{name} \"$@\"\n")
        w.chmod(0o755)
    for name in ("squeue", "scontrol", "sinfo"):
        os.symlink(f"/usr/bin/{name}", bin_dir / name)
    return bin_dir, *flags


def test_an_outage_longer_than_retry_seconds_then_a_transient_error_dead_letters_nothing(slurm, vm, tmp_path):
    bin_dir, sacct_down, sacctmgr_down = _wrappers(tmp_path)
    dead_dir = Path(slurm.spool_dir) / "dead"
    dead_before = set(dead_dir.iterdir()) if dead_dir.exists() else set()
    with running(slurm, vm, tmp_path / "w", bin_dir=str(bin_dir), slurm_extra="  retry_seconds: 5\n") as stack:
        sacct_down.touch()
        jobs = [slurm.sbatch(["-n1", "-J", f"outage{i}"], "sleep 1") for i in range(4)]
        for j in jobs:
            slurm.wait_state(j, ENDED)
        t0 = time.monotonic()
        wait_for(lambda: metric(stack, "carbond_loop_errors_total", kind="slurm") > 0 and time.monotonic() - t0 > 15,
                 60, "an outage three times longer than retry_seconds", stack)
        log_size = stack.log.stat().st_size
        sacctmgr_down.touch()  # the writes fail for a moment: a transient error after the long outage
        sacct_down.unlink()
        threading.Timer(3.0, lambda: sacctmgr_down.unlink(missing_ok=True)).start()
        t1 = time.monotonic()
        for j in jobs:
            stack.wait_tokens(j, timeout=60)
        drain = time.monotonic() - t1
        dead_after = set(dead_dir.iterdir()) if dead_dir.exists() else set()
        assert dead_after == dead_before
        assert all(ledger(stack)[j][1] == "written" for j in jobs)
        figures = assert_metrics_equal_ledger(stack)
        report("outage>retry+transient", jobs=len(jobs), dead_lettered=len(dead_after - dead_before),
               drain_s=round(drain, 1), log_bytes_during_outage=log_size, **figures)


def test_a_requeued_job_is_charged_each_run_on_its_own_nodes(slurm, vm, tmp_path):
    with running(slurm, vm, tmp_path, node_intervals={"n2": 5.0}) as stack:  # n1 every 1 s, n2 every 5 s
        job = slurm.sbatch(["-n2", "-w", "n1", "--requeue", "-J", "requeue"], "sleep 6")
        requeue_onto(slurm, job, "n2", stack)
        ended(slurm, job, timeout=180)
        tok = stack.wait_tokens(job, timeout=120)[job]
        rows = [r for r in slurm.sacct_rows(job, ["State", "Start", "End", "NodeList"]) if r["Start"].isdigit()]
        runs = slurm.run(["sacct", "-D", "-X", "-n", "-P", "-j", job, "-o", "Start,End,NodeList"],
                         env={"SLURM_TIME_FORMAT": "%s"}).stdout.split()
        runs = [r.split("|") for r in runs if r.split("|")[0].isdigit()]
        assert [r[2] for r in runs] == ["n1", "n2"], runs
        expected = sum(footprint_kwh(stack, n, float(s), float(e), cpus=2) for s, e, n in runs)
        only_last = footprint_kwh(stack, runs[-1][2], float(runs[-1][0]), float(runs[-1][1]), cpus=2)
        got = ledger(stack)[job][2] / 3.6e6
        assert math.isclose(got, expected, rel_tol=2e-3), (got, expected)
        assert got > only_last * 1.1  # the first run is counted too
        assert len([r for r in stack.ledger_rows() if r[0] == job]) == 1
        report("requeue", runs=runs, final_row=rows, ledger_kwh=got, expected_kwh=expected,
               last_run_only_kwh=only_last, token=tok)


def test_suspended_time_is_not_charged_and_never_more_than_the_node_used(slurm, vm, tmp_path):
    with running(slurm, vm, tmp_path, slurm_extra="  suspend_poll_seconds: 1\n") as stack:
        a = slurm.sbatch(["-n2", "-w", "n1", "-J", "suspended"], "sleep 12")
        slurm.wait_state(a, "RUNNING")
        t0 = time.time()
        wait_for(lambda: time.time() - t0 > 3, 10, "3 s of running", stack)
        slurm.run(["scontrol", "suspend", a])
        slurm.wait_state(a, "SUSPENDED")
        b = slurm.sbatch(["-n2", "-w", "n1", "-J", "onfreed"], "sleep 4")  # the CPUs A left
        ended(slurm, b)
        slurm.run(["scontrol", "resume", a])
        fa = ended(slurm, a, timeout=60)
        ta, tb = stack.wait_tokens(a, timeout=90)[a], stack.wait_tokens(b, timeout=90)[b]
        suspended = slurm.sacct_fields(a, ["Suspended"])["Suspended"]
        assert suspended != "00:00:00"
        rows = ledger(stack)
        node = footprint_kwh(stack, "n1", float(fa["Start"]), float(fa["End"]))
        attributed = (rows[a][2] + rows[b][2]) / 3.6e6
        assert attributed <= node * 1.01, (attributed, node)
        assert method_of(ta) == "measured"  # the intervals were recorded: exact, not estimated
        report("suspend", suspended=suspended, a_kwh=rows[a][2] / 3.6e6, b_kwh=rows[b][2] / 3.6e6,
               node_kwh_over_a=node, share_attributed=attributed / node, token_a=ta, token_b=tb)


def test_a_sigkill_storm_while_300_jobs_end_counts_every_job_once(slurm, vm, tmp_path):
    with running(slurm, vm, tmp_path, settle=5.0) as stack:
        job = slurm.sbatch(["--array=1-300", "-n1", "-J", "storm"], "sleep 1")
        kills = 0
        t0 = time.monotonic()
        while kills < 20:
            time.sleep(1.5)  # the storm's rhythm: a kill every couple of seconds while tasks end
            stack.kill()
            kills += 1
            stack.start()
        toks = stack.wait_tokens(job, count=300, timeout=300)
        drain = time.monotonic() - t0
        ids = {r["JobIDRaw"]: r["JobID"] for r in slurm.sacct_rows(job, ["JobIDRaw", "JobID"])}
        rows = ledger(stack)
        assert len(ids) == 300 and all(rows[raw][1] == "written" for raw in ids)
        for raw, display in ids.items():
            assert math.isclose(toks[display]["co2e_g"], rows[raw][3], rel_tol=5e-3, abs_tol=1e-9)
        figures = assert_metrics_equal_ledger(stack)
        report("sigkill-storm", jobs=300, kills=kills, tokens=sum(1 for t in toks.values() if t),
               ledger_rows=len(ids), drain_s=round(drain, 1), **figures)


def test_a_job_whose_record_never_reached_the_spool_is_recovered(slurm, vm, tmp_path):
    stack = CarbondStack(slurm, vm.url, tmp_path, slurm_extra="  reconcile_seconds: 2\n  reconcile_lag_seconds: 2\n")
    stack.start_feeder(1.0)
    try:
        job = slurm.sbatch(["-n1", "-J", "nospool"], "sleep 1")
        ended(slurm, job)
        for p in Path(slurm.spool_dir).glob(f"{job}*.job"):
            p.unlink()  # as if the spool had been full when the epilog ran
        stack.start()
        tok = stack.wait_tokens(job, timeout=60)[job]
        assert metric(stack, "carbond_jobs_recovered_total") >= 1
        assert tok["co2e_g"] > 0
        stack.alive()
    finally:
        stack.close()
    shutil.rmtree(tmp_path / "state", ignore_errors=True)


def test_failover_to_the_standby_neither_loses_nor_doubles_a_job(slurm, vm, tmp_path):
    """An HA pair: the active daemon dies mid-batch (SIGKILL), the standby on the other "host" (its own
    config and metrics port, the same shared spool and state_dir) takes over."""
    shared = tmp_path / "shared-state"
    active = CarbondStack(slurm, vm.url, tmp_path / "active", state_dir=shared, settle=5.0)
    standby = CarbondStack(slurm, vm.url, tmp_path / "standby", state_dir=shared, settle=5.0)
    active.start_feeder(1.0)
    try:
        active.start()
        job = slurm.sbatch(["--array=1-30", "-n1", "-J", "failover"], "sleep 1")
        wait_for(lambda: any(active.tokens(job).values()), 120, "the active daemon's first token", active, every=0.1)
        active.kill()
        partial = sum(1 for t in active.tokens(job).values() if t)
        t0 = time.monotonic()
        standby.start()
        toks = standby.wait_tokens(job, count=30, timeout=180)
        ids = {r["JobIDRaw"] for r in slurm.sacct_rows(job, ["JobIDRaw"])}
        rows = ledger(standby)
        assert len(ids) == 30 and all(rows[i][1] == "written" for i in ids)
        figures = assert_metrics_equal_ledger(standby)
        standby.alive()
        assert standby.stop(timeout=25) == 0
        report("failover", jobs=30, written_before_kill=partial, tokens=sum(1 for t in toks.values() if t),
               drain_after_failover_s=round(time.monotonic() - t0, 1), **figures)
    finally:
        active.close()
        standby.close()
