"""`carbond backfill` on the real testbed: killed mid-write and run again, and --rewrite.

test_backfill.py proves resumability against a fake Slurm; here the jobs, sacct and sacctmgr are
the real 22.05 ones and the fault is real too: the config's sacctmgr is a wrapper that runs the
real one for the first K token writes and then hangs (a slurmdbd that stopped answering), and
the backfill process is killed while it waits. No daemon runs: these jobs are the backfill's
alone (only the power feeder is up, so they are measured).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from carbond_stack import CarbondStack, ended

from carbond.token import parse

pytestmark = [pytest.mark.slurm, pytest.mark.vm]

WINDOW_HOURS = 0.0003
"""~1.1 s: jobs ending over 3 s span several windows, so several write batches."""
CLIENTS = ("sacct", "squeue", "scontrol", "sinfo")
FOREIGN = "js1:e30="
"""Princeton jobstats' payload as 22.05's sacctmgr stores it (lowercased): never appended to."""


@pytest.fixture(scope="module")
def feeder(slurm, vm, tmp_path_factory):
    """Power samples for n1..n3 (a stack whose daemon is never started)."""
    stack = CarbondStack(slurm, vm.url, tmp_path_factory.mktemp("feeder"))
    stack.start_feeder(1.0)
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def spooled(slurm):
    """Job ids a test ran; the epilog's records of them are removed after it (no daemon consumed
    them, and a later test's daemon must not)."""
    jobs: list[str] = []
    yield jobs
    for job in jobs:
        for path in Path(slurm.spool_dir).glob(f"{job}.*"):
            path.unlink(missing_ok=True)


def run_jobs(slurm, count: int, spooled: list[str]) -> list[str]:
    """`count` real jobs ending over ~3 s, over for slurmdbd, with power samples past their ends."""
    jobs = [slurm.sbatch(["-n1", "-J", "bf-e2e"], f"sleep {1 + i % 3}") for i in range(count)]
    spooled.extend(jobs)
    for job in jobs:
        ended(slurm, job)
    time.sleep(2)
    return jobs


def time_range(slurm, jobs: list[str]) -> list[str]:
    rows = slurm.sacct_rows(",".join(jobs), ["JobID", "Start", "End"])
    assert sorted(r["JobID"] for r in rows) == sorted(jobs)
    lo, hi = min(int(r["Start"]) for r in rows) - 1, max(int(r["End"]) for r in rows) + 1
    return ["--start", str(lo), "--end", str(hi)]


def backfill_cmd(stack: CarbondStack, rng: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "carbond", "--config", str(stack.config), "backfill", *rng, "--write", *extra]


def admin_comments(slurm, jobs: list[str]) -> dict[str, str]:
    return {r["JobID"]: r["AdminComment"] for r in slurm.sacct_rows(",".join(jobs), ["JobID", "AdminComment"])}


def ledger(stack: CarbondStack) -> dict[str, tuple[str, str | None]]:
    """job id -> (state, token)."""
    with sqlite3.connect(stack.state_dir / "ledger.sqlite") as db:
        return {j: (s, t) for j, s, t in db.execute("SELECT job_id, state, token FROM jobs")}


def table_jobs(stdout: str) -> list[str]:
    """Job ids of the backfill table's rows (above its totals line)."""
    return [line.split()[0] for line in stdout.split("\n\n")[0].splitlines()[1:]]


def clients_dir(slurm, where: Path, hang_after: int, write_first: bool = False) -> Path:
    """Slurm's clients, but a sacctmgr that makes `hang_after` real token writes, then hangs
    (`write_first`: makes the next write too, then hangs: the write is done, its answer lost)."""
    where.mkdir()
    for name in CLIENTS:
        (where / name).symlink_to(slurm.bin(name))
    (where / "count").write_text("0\n")
    wrapper = where / "sacctmgr"
    write = f'{slurm.bin("sacctmgr")} "$@" >/dev/null; ' if write_first else ""
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *"modify job"*) ;; *) exec {slurm.bin("sacctmgr")} "$@" ;; esac\n'
        f"n=$(( $(cat {where}/count) + 1 ))\n"  # slurm.concurrency 1: one write at a time
        f"echo $n > {where}/count\n"
        f'if [ "$n" -gt {hang_after} ]; then {write}touch {where}/hanging; exec sleep 300; fi\n'
        f'exec {slurm.bin("sacctmgr")} "$@"\n'
    )
    wrapper.chmod(0o755)
    return where


def ended_before_the_last_window(ends: list[int], lo: float, hi: float, window: float) -> int:
    """Jobs whose end falls in a window before the last one with any (windows as backfill cuts them)."""
    counts, w0 = [], lo
    while w0 < hi:
        w1 = min(hi, w0 + window)
        counts.append(sum(1 for e in ends if w0 <= e < w1))
        w0 = w1
    full = [c for c in counts if c]
    return sum(full[:-1])


def interrupted(cmd: list[str], env: dict[str, str], hanging: Path, sig: signal.Signals, log: Path) -> None:
    """Run the backfill until the sacctmgr wrapper hangs, then send it `sig`; the wrapper is ended too."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not hanging.exists():
            assert proc.poll() is None, f"backfill ended ({proc.returncode}) before the fault:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"sacctmgr never hung:\n{log.read_text()}"
            time.sleep(0.05)
        proc.send_signal(sig)
        assert proc.wait(10) == -sig
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the hanging wrapper (and the backfill, if still there)
        proc.wait(10)


@pytest.mark.parametrize(("sig", "write_first"), [(signal.SIGTERM, False), (signal.SIGKILL, False), (signal.SIGKILL, True)],
                         ids=["sigterm", "sigkill", "sigkill-answer-lost"])
def test_backfill_killed_mid_write_resumes_with_no_job_twice_and_none_lost(feeder, slurm, vm, tmp_path, spooled, sig,
                                                                           write_first):
    count = 6
    jobs = run_jobs(slurm, count, spooled)
    rng = time_range(slurm, jobs)
    ends = [int(r["End"]) for r in slurm.sacct_rows(",".join(jobs), ["End"])]
    assert max(ends) - min(ends) > WINDOW_HOURS * 3600  # more than one window, so more than one write batch
    # The write that hangs must belong to a window before the last: a loaded host spreads the
    # ends unevenly, so the writes that go through are counted from the windows the jobs fell in.
    before = min(3, ended_before_the_last_window(ends, float(rng[1]), float(rng[3]), WINDOW_HOURS * 3600) - 1)
    bindir = clients_dir(slurm, tmp_path / "bin", hang_after=before, write_first=write_first)
    stack = CarbondStack(slurm, vm.url, tmp_path, slurm_extra="  concurrency: 1\n", bin_dir=str(bindir))
    cmd = backfill_cmd(stack, rng, "--window", str(WINDOW_HOURS))

    interrupted(cmd, stack.env(), bindir / "hanging", sig, tmp_path / "first.log")
    first = admin_comments(slurm, jobs)
    done = {j for j, c in first.items() if c}
    assert len(done) == before + write_first, first
    assert all(parse(first[j])["co2e_g"] > 0 for j in done)
    rows = ledger(stack)
    # a job is marked written as its own sacctmgr call returns: the ledger and Slurm agree at the kill
    # (but for the job whose answer was lost), and the later windows were not read yet
    marked = {j for j, (s, _) in rows.items() if s == "written"}
    assert marked <= done and len(marked) == before, rows
    assert any(s == "pending-write" for s, _ in rows.values()), rows  # the one whose write hung
    assert len(rows) < count, rows

    (bindir / "sacctmgr").unlink()
    (bindir / "sacctmgr").symlink_to(slurm.bin("sacctmgr"))
    rerun = subprocess.run(cmd, env=stack.env(), capture_output=True, text=True, check=False)  # noqa: S603
    assert rerun.returncode == 0, rerun.stderr

    final = admin_comments(slurm, jobs)
    rows = ledger(stack)
    assert sorted(rows) == sorted(jobs) and {s for s, _ in rows.values()} == {"written"}, rows
    for job in jobs:
        assert final[job].count("carbond:") == 1, final[job]  # no job twice, none lost
        assert parse(final[job]) == parse(rows[job][1])  # the token the ledger counted
    for job in done:
        assert final[job] == first[job]  # not rewritten
    # the rerun accounts only the jobs the first run had not finished
    rest = count - len(done)
    assert sorted(table_jobs(rerun.stdout)) == sorted(set(jobs) - done), rerun.stdout
    assert f"\n{rest} job(s), " in rerun.stdout
    assert (f"{count} job(s) ended in the range, {rest} without a carbond token; written {rest}, "
            "left unchanged 0, failed 0") in rerun.stderr, rerun.stderr


def test_rewrite_publishes_a_token_once_foreign_content_is_cleared(feeder, slurm, vm, tmp_path, spooled):
    stack = CarbondStack(slurm, vm.url, tmp_path)
    jobs = run_jobs(slurm, 2, spooled)
    plain, foreign = jobs
    slurm.run(["sacctmgr", "-i", "modify", "job", "where", f"jobid={foreign}", "set", f"AdminComment={FOREIGN}"])
    assert admin_comments(slurm, jobs)[foreign] == FOREIGN
    cmd = backfill_cmd(stack, time_range(slurm, jobs))

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*cmd, *extra], env=stack.env(), capture_output=True, text=True, check=False)  # noqa: S603
        assert proc.returncode == 0, proc.stderr
        return proc

    first = run()
    assert "2 without a carbond token; written 1, left unchanged 1, failed 0" in first.stderr, first.stderr
    comments = admin_comments(slurm, jobs)
    assert comments[foreign] == FOREIGN and comments[plain].count("carbond:") == 1
    assert {j: s for j, (s, _) in ledger(stack).items()} == {plain: "written", foreign: "unwritable"}

    again = run()  # without --rewrite the field stays as it is, and nothing is accounted again
    assert "0 without a carbond token; written 0, left unchanged 0, failed 0" in again.stderr, again.stderr
    assert table_jobs(again.stdout) == []
    assert admin_comments(slurm, jobs) == comments

    slurm.run(["sacctmgr", "-i", "modify", "job", "where", f"jobid={foreign}", "set", "AdminComment="])
    assert admin_comments(slurm, jobs)[foreign] == ""
    last = run("--rewrite")
    assert "re-published 1" in last.stderr, last.stderr
    rows = ledger(stack)
    now = admin_comments(slurm, jobs)
    assert {j: s for j, (s, _) in rows.items()} == {plain: "written", foreign: "written"}
    assert now[foreign].count("carbond:") == 1 and parse(now[foreign]) == parse(rows[foreign][1])
    assert parse(now[foreign])["co2e_g"] > 0
    assert now[plain] == comments[plain]
