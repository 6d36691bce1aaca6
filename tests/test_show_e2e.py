"""`carbond show` on the real cluster, as users run it: arrays, het jobs, an ordinary user who may
read no carbond secret (nor, on a login node, the site's config), and the PUE the job was
accounted with whatever today's config says."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import test_e2e
from carbond_stack import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.vm]

stack = test_e2e.stack
"""The end-to-end suite's daemon, carbond run on the real cluster (module-scoped: one here)."""


def show(stack, *args, user: str | None = None, config: Path | None = None):
    env = stack.env()
    env.pop("CARBOND_CONFIG", None)
    cmd = [sys.executable, "-m", "carbond", *(["--config", str(config)] if config else []), "show", *args]
    if user:
        cmd = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in env.items()), *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd="/")


def ids_shown(out: str) -> list[str]:
    return [ln.split()[2] for ln in out.splitlines() if ln.startswith("Job ID:")]


def test_an_array_id_shows_every_task_and_a_task_id_one(stack, slurm):
    job = slurm.sbatch(["--array=1-3", "-n1", "-J", "showarr"], "sleep 1")
    stack.wait_tokens(job, count=3)
    r = show(stack, job, config=stack.config)
    assert r.returncode == 0, r.stderr
    assert ids_shown(r.stdout) == [f"{job}_1", f"{job}_2", f"{job}_3"]
    assert "Traceback" not in r.stderr
    r = show(stack, f"{job}_2", config=stack.config)
    assert r.returncode == 0 and ids_shown(r.stdout) == [f"{job}_2"]


def test_het_job_id_shows_every_component(stack, slurm):
    out = slurm.run(["sbatch", "--parsable", "-J", "showhet", "-n1", "--wrap", "sleep 1", ":", "-n1"]).stdout
    job = out.strip().split(";")[0]
    stack.wait_tokens(job, count=2)
    r = show(stack, job, config=stack.config)
    assert r.returncode == 0, r.stderr
    assert ids_shown(r.stdout) == [f"{job}+0", f"{job}+1"]


def test_invalid_and_unknown_ids(stack):
    r = show(stack, "abc", "99999999", config=stack.config)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "Job abc: not a valid job id" in r.stdout and "Job 99999999: not found" in r.stdout


@pytest.fixture
def public_dir():
    """A directory an ordinary user can read (pytest's tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="carbond-show-"))
    d.chmod(0o755)
    yield d
    for p in sorted(d.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    d.rmdir()


def test_an_ordinary_user_needs_no_secret_and_sees_the_pue_the_job_was_accounted_with(stack, slurm, public_dir):
    pwd.getpwnam("nobody")
    job = slurm.sbatch(["-n1", "-J", "showuser"], "sleep 1")
    tok = stack.wait_tokens(job)[job]
    assert tok["pue"] == 1  # the daemon's config has the default PUE
    secret = public_dir / "vm-token"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)  # root's: nobody cannot read it, and `show` must not try
    cfg = public_dir / "carbond.yaml"
    cfg.write_text(f"cluster: {slurm.env.get('CLUSTER', 'testcl')}\npue: 1.7\n"
                   f"victoriametrics:\n  bearer_token_file: {secret}\n"
                   "intensity:\n  provider: electricitymaps\n  zone: DE\n  token_file: /nonexistent\n"
                   "slurm:\n  sacct: /usr/bin/sacct\n")
    cfg.chmod(0o644)
    r = show(stack, job, user="nobody", config=cfg)
    assert r.returncode == 0, r.stderr
    assert "PUE: 1\n" in r.stdout and "PUE: 1.7" not in r.stdout  # accounted with 1, whatever the config says now
    assert "Carbon footprint:" in r.stdout


def test_an_ordinary_user_without_the_sites_config_still_sees_the_job(stack, slurm):
    if os.access("/etc/carbond/carbond.yaml", os.F_OK):
        pytest.skip("this host has /etc/carbond/carbond.yaml; the no-config path is tested where it has none")
    job = slurm.sbatch(["-n1", "-J", "shownocfg"], "sleep 1")
    stack.wait_tokens(job)
    r = show(stack, job, user="nobody")
    assert r.returncode == 0, r.stderr
    assert f"Job ID: {job}" in r.stdout and "Carbon footprint:" in r.stdout


def test_json_is_one_line_per_task(stack, slurm):
    import json

    job = slurm.sbatch(["--array=1-2", "-n1", "-J", "showjson"], "sleep 1")
    stack.wait_tokens(job, count=2)
    r = show(stack, job, "--json", config=stack.config)
    rows = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert r.returncode == 0 and [x["job_id"] for x in rows] == [f"{job}_1", f"{job}_2"]
    assert all(x["footprint"]["co2e_g"] > 0 and x["pue"] == 1 for x in rows)


assert REPO.is_dir()
