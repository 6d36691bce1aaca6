"""Issue 16 on the real testbed (Slurm 22.05 here): state that cannot silently vanish, and spool
records that cannot redirect a write. Figures are printed with -s."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from carbond_stack import CarbondStack
from test_e2e_faults import ended, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.vm]


@contextlib.contextmanager
def stack_of(slurm, vm, workdir: Path, **kw):
    stack = CarbondStack(slurm, vm.url, workdir, **kw)
    stack.start_feeder(1.0)
    try:
        yield stack
    finally:
        stack.close()


def run_once(stack: CarbondStack) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carbond", "--config", str(stack.config), "run"],  # noqa: S603
                          env=stack.env(), capture_output=True, text=True, timeout=60, check=False)


def test_a_zero_length_ledger_is_refused_with_one_line_and_the_history_comes_back_from_a_backup(slurm, vm, tmp_path):
    with stack_of(slurm, vm, tmp_path) as stack:
        stack.start()
        jobs = [slurm.sbatch(["-n1", "-J", f"hist{i}"], "sleep 1") for i in range(5)]
        for j in jobs:
            stack.wait_tokens(j)
        assert stack.stop() == 0
        path = stack.state_dir / "ledger.sqlite"
        before = len(stack.ledger_rows())
        shutil.copy(path, tmp_path / "backup.sqlite")
        for side in ("-wal", "-shm"):
            Path(f"{path}{side}").unlink(missing_ok=True)
        path.write_bytes(b"")  # a crash during a full disk, a bad restore
        proc = run_once(stack)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert "is empty (0 bytes)" in lines[0] and "mv " in lines[0] and "Traceback" not in proc.stderr
        assert path.stat().st_size == 0  # never recreated over the history
        shutil.copy(tmp_path / "backup.sqlite", path)  # the documented recovery
        stack.start()
        assert len(stack.ledger_rows()) == before >= 5
        assert stack.metrics()[("carbond_ledger_jobs", (("state", "written"),))] >= 5
        stack.alive()
        print("\nFIGURES zero-length-ledger: " + json.dumps({"exit": proc.returncode, "line": lines[0][:200],
                                                            "rows_after_restore": before}))


def _record_of(slurm, job: str) -> Path:
    spool = Path(slurm.spool_dir)
    return next(p for p in spool.glob("*.job") if f"\njob_id={job}\n" in p.read_text())


def _forge(path: Path, **values: str) -> None:
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        key = line.split("=", 1)[0]
        out.append(f"{key}={values[key]}" if key in values else line)
    path.write_text("\n".join(out) + "\n")


def test_forged_records_never_redirect_a_write_or_replace_slurmdbds_facts(slurm, vm, tmp_path):
    with stack_of(slurm, vm, tmp_path, settle=5.0) as stack:
        stack.start()
        warm = slurm.sbatch(["-n1", "-J", "warm"], "sleep 1")
        stack.wait_tokens(warm)
        assert stack.stop() == 0  # the records below wait in the spool
        victim = slurm.sbatch(["-n1", "-J", "victim"], "sleep 1")
        target = slurm.sbatch(["-n1", "-J", "target"], "sleep 1")
        relabel = slurm.sbatch(["-n1", "-J", "relabel"], "sleep 1")
        for j in (victim, target, relabel):
            ended(slurm, j)
        rec = wait_for(lambda: _record_of(slurm, target), 30, "the target's spool record")
        _forge(rec, array_job_id=victim, array_task_id="3")  # `where jobid=<victim>_3` with target's token
        other = wait_for(lambda: _record_of(slurm, relabel), 30, "the relabel job's spool record")
        _forge(other, nodes="n[1-3]", cpus_per_node="1(x3)", account="forged", partition="forged")
        stack.start()
        assert stack.wait_tokens(victim)[victim]["co2e_g"] > 0  # its own record, its own token
        stack.wait_tokens(relabel)
        dead = Path(slurm.spool_dir) / "dead" / f"{rec.name}.reason"
        wait_for(dead.exists, 60, "the forged record dead-lettered", stack)
        assert "contradicts slurmdbd" in dead.read_text() and f"{victim}_3" in dead.read_text()
        assert stack.tokens(target) == {target: None}  # never written, under any id
        rows = {r[0]: r for r in stack.ledger_rows()}
        assert rows[target][1] == "dead"
        with sqlite3.connect(stack.state_dir / "ledger.sqlite") as db:
            account, partition = db.execute("SELECT account, partition FROM jobs WHERE job_id=?",
                                            (relabel,)).fetchone()
        truth = slurm.sacct_rows(relabel, ["Account", "Partition"])[0]
        assert (account, partition) == (truth["Account"], truth["Partition"]) != ("forged", "forged")
        stack.alive()
        print("\nFIGURES forged-records: " + json.dumps({"dead_reason": dead.read_text()[:200],
                                                        "relabel": [account, partition]}))
