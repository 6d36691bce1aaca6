"""`make clean` / `make demo-stop` remove what the demo and the testbed left under /tmp: only their
own directories (a marker), never one in use, never one that merely has the configured name."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTBED = REPO / "scripts" / "slurm-testbed"
DEMO = REPO / "scripts" / "demo"


def fake_testbed(d: Path) -> Path:
    """A stopped testbed's directory: its config files and leftovers, no daemon running."""
    (d / "etc").mkdir(parents=True)
    (d / "etc" / "testbed.env").write_text("CLUSTER=cleantest\n")
    (d / "etc" / "slurm.conf").write_text("")
    (d / "log").mkdir()
    (d / "log" / "slurmctld.log").write_text("old log\n")
    return d


def run(*args, **env):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False,
                          env={**os.environ, **env}, timeout=120)


def test_testbed_clean_removes_its_own_stopped_directory(tmp_path):
    d = fake_testbed(tmp_path / "tb")
    r = run(TESTBED, "clean", d)
    assert r.returncode == 0, r.stderr
    assert not d.exists()


def test_testbed_clean_leaves_a_directory_that_is_not_a_testbed(tmp_path):
    (tmp_path / "precious").write_text("keep me\n")
    r = run(TESTBED, "clean", tmp_path)
    assert r.returncode != 0 and "left alone" in r.stderr
    assert (tmp_path / "precious").read_text() == "keep me\n"


def test_testbed_clean_refuses_a_testbed_a_test_session_is_using(tmp_path):
    d = fake_testbed(tmp_path / "tb")
    (d / "leases").mkdir()
    (d / "leases" / str(os.getpid())).touch()  # this pytest process holds a lease
    r = run(TESTBED, "clean", d)
    assert r.returncode != 0 and f"in use by test session pid {os.getpid()}" in r.stderr
    assert (d / "log" / "slurmctld.log").exists()


def test_demo_stop_removes_the_demo_directory_it_made_and_only_that(tmp_path):
    demo = tmp_path / "demo"
    (demo / "pids").mkdir(parents=True)
    (demo / ".carbond-demo").touch()
    fake_testbed(demo / "slurm")
    r = run(DEMO, "stop", CARBOND_DEMO_DIR=str(demo))
    assert r.returncode == 0, r.stderr
    assert not demo.exists()

    other = tmp_path / "not-a-demo"
    (other / "pids").mkdir(parents=True)
    (other / "notes.txt").write_text("mine\n")
    r = run(DEMO, "stop", CARBOND_DEMO_DIR=str(other))
    assert r.returncode == 0, r.stderr
    assert "left" in r.stdout and (other / "notes.txt").exists()


def test_make_deps_waits_for_the_dpkg_lock():
    r = run("make", "-n", "-C", REPO, "deps")
    # -n prints the recipe; every apt-get in it waits for the lock instead of failing
    calls = r.stdout.split("apt-get")[1:]
    assert len(calls) >= 2 and all(c.lstrip().startswith("-o DPkg::Lock::Timeout=") for c in calls)
