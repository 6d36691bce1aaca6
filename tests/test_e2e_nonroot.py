"""Production's permission model on the real cluster (host Slurm 22.05): nobody runs as root.

Its own testbed ($CARBOND_TESTBED_DIR-nonroot) runs with SlurmUser=slurm, so EpilogSlurmctld
writes the spool as `slurm`; the spool is 2770 slurm:carbond; the daemon runs as user
`carbond`, whose only Slurm right is AdminLevel=Operator (sacctmgr), as the install steps set up.
A user without Operator gets the clear, non-retryable permission error.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from carbond_stack import REPO, running_stack
from fixtures_slurm import DEFAULT_DIR, acquire, release, selected_suite

pytestmark = [pytest.mark.slurm, pytest.mark.vm]


@pytest.fixture(scope="module")
def slurm_nonroot():
    if selected_suite().name != "host":
        pytest.skip("the non-root testbed runs the host's Slurm (22.05) only; CARBOND_SLURM=host")
    directory = Path((os.environ.get("CARBOND_TESTBED_DIR") or DEFAULT_DIR) + "-nonroot")
    testbed = acquire(directory, slurm_user="slurm")
    try:
        yield testbed
    finally:
        release(testbed)


@pytest.fixture(scope="module")
def stack(slurm_nonroot, vm):
    work = slurm_nonroot.dir / "carbond"  # not under pytest's 0700 tmp: user carbond must reach it
    work.mkdir(exist_ok=True)
    with running_stack(slurm_nonroot, vm.url, work, user="carbond") as s:
        yield s


def test_spool_is_production_shaped_and_the_epilog_writes_as_slurm(slurm_nonroot):
    assert slurm_nonroot.env["CARBOND_SLURM_USER"] == "slurm"
    st = os.stat(slurm_nonroot.spool_dir)
    assert stat.S_IMODE(st.st_mode) == 0o2770
    assert (pwd.getpwuid(st.st_uid).pw_name, st.st_gid) == ("slurm", pwd.getpwnam("carbond").pw_gid)
    ctld = int((slurm_nonroot.dir / "run" / "slurmctld.pid").read_text())
    assert pwd.getpwuid(os.stat(f"/proc/{ctld}").st_uid).pw_name == "slurm"


def test_daemon_as_carbond_with_operator_writes_the_token(stack, slurm_nonroot):
    assert pwd.getpwuid(os.stat(f"/proc/{stack.proc.pid}").st_uid).pw_name == "carbond"
    job = slurm_nonroot.sbatch(["-n1", "-J", "nonroot"], "sleep 2")
    deadline = time.monotonic() + 30
    owner = None
    while time.monotonic() < deadline and owner is None:  # the record, before the daemon takes it
        for p in Path(slurm_nonroot.spool_dir).glob(f"{job}*.job"):
            try:
                owner = pwd.getpwuid(p.stat().st_uid).pw_name
            except FileNotFoundError:
                owner = "taken"
        time.sleep(0.05)
    assert owner in ("slurm", "taken"), owner
    tok = stack.wait_tokens(job)[job]
    assert tok["co2e_g"] > 0
    assert stack.proc.poll() is None
    ledger = stack.state_dir / "ledger.sqlite"
    assert pwd.getpwuid(ledger.stat().st_uid).pw_name == "carbond"


def test_user_without_operator_gets_the_permission_error(stack, slurm_nonroot):
    job = slurm_nonroot.sbatch(["-n1", "-J", "denied"], "sleep 1")
    stack.wait_tokens(job)
    code = (
        "import sys\n"
        "from carbond.config import SlurmConfig\n"
        "from carbond.slurm import SlurmIO, SlurmPermissionError\n"
        "io = SlurmIO(SlurmConfig(sacct=sys.argv[1], sacctmgr=sys.argv[2]))\n"
        "try:\n"
        "    io.write_comment(sys.argv[3], 'admin_comment', 'x')\n"
        "except SlurmPermissionError as e:\n"
        "    print('refused', e.retryable, e)\n"
    )
    proc = subprocess.run(  # noqa: S603 - argument list, no shell
        [sys.executable, "-c", code, slurm_nonroot.bin("sacct"), slurm_nonroot.bin("sacctmgr"), job],
        env={**slurm_nonroot.env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=False,
        user="nobody", group="nogroup", cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused False") and "AdminLevel=Operator" in proc.stdout, proc.stdout
    assert stack.tokens(job)[job]["co2e_g"] > 0  # the daemon's token is still there
