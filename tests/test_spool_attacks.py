"""Issue 16, item 1: nobody who can write the spool can turn it against SlurmUser or the daemon.

Each attack is reproduced for real: the epilog runs under dash (and bash) as slurmctld runs it,
the daemon's spool and lock code run unmodified, and two real `carbond run` processes share a
spool. The attacker plants symlinks where the epilog or the daemon will write; the test then
checks the target is untouched and the write went nowhere but the spool (or was refused).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_epilog import BASE, EPILOG, SHELLS

from carbond.errors import CarbondError
from carbond.instance_lock import SPOOL_LOCK, AlreadyRunning, InstanceLock
from carbond.spool import Spool, read_record

UUID = "0123abcd-0000-4000-8000-00000000beef"
SECRET = b"SQLite format 3\x00 the ledger: twenty jobs of history\n"


@pytest.fixture
def site(tmp_path):
    """A spool, a fixed random source (so the test knows the temp names) and attack targets."""
    spool = tmp_path / "spool"
    spool.mkdir()
    source = tmp_path / "uuid"
    source.write_text(UUID + "\n")
    victim = tmp_path / "victim"
    victim.write_bytes(SECRET)
    outside = tmp_path / "outside"
    outside.mkdir()
    return spool, source, victim, outside


def epilog(spool: Path, source: Path, shell: str, plant: str = "") -> subprocess.CompletedProcess:
    """Run the epilog under `shell`; `plant` runs first in the same process (exec keeps the pid,
    so it can plant at names built from the epilog's $$, as the old epilog's temp name was)."""
    env = dict(BASE, CARBOND_SPOOL_DIR=str(spool), CARBOND_RANDOM_SOURCE=str(source), SPOOL=str(spool),
               SH=shutil.which(shell), EPILOG=str(EPILOG))
    script = plant + '\nexec "$SH" "$EPILOG"\n'
    return subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, timeout=10, check=False)  # noqa: S603


def temp_names(pid_var: str = "$$") -> list[str]:
    """Every temp name the epilog may try: the new ones (UUID, tries 0-2) and the old one (pid)."""
    return [f'"$SPOOL/.1239.{UUID}.{n}.tmp"' for n in range(3)] + [f'"$SPOOL/.1239.{pid_var}.tmp"']


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("kind", ["file", "dangling", "fifo"])
def test_a_link_at_the_temp_name_is_never_written_through(site, shell, kind):
    spool, source, victim, outside = site
    target = {"file": victim, "dangling": outside / "created", "fifo": outside / "fifo"}[kind]
    if kind == "fifo":
        os.mkfifo(target)  # noclobber alone opens a non-regular file without O_EXCL: it would block here
    first = temp_names()[0]
    plant = f'ln -s "{target}" {first}; ln -s "{target}" "$SPOOL/.1239.$$.tmp"'
    proc = epilog(spool, source, shell, plant)
    assert proc.returncode == 0 and proc.stderr == b""
    assert victim.read_bytes() == SECRET
    assert sorted(p.name for p in outside.iterdir()) == (["fifo"] if kind == "fifo" else [])
    assert read_record(str(spool / "1239.job")).job_id == "1239"  # written under the next name
    assert (spool / f".1239.{UUID}.0.tmp").is_symlink()  # the plant itself left alone


@pytest.mark.parametrize("shell", SHELLS)
def test_every_temp_name_taken_gives_no_record_and_exit_0(site, shell):
    spool, source, victim, _ = site
    plant = "; ".join(f'ln -s "{victim}" {n}' for n in temp_names())
    proc = epilog(spool, source, shell, plant)
    assert proc.returncode == 0
    assert victim.read_bytes() == SECRET
    assert not list(spool.glob("*.job"))


@pytest.mark.parametrize("shell", SHELLS)
def test_a_link_at_the_final_name_is_replaced_not_followed(site, shell):
    """`1239.job` exists, so the epilog takes `1239.<epoch>.<pid>.job`: planted as a link to a
    directory, the old `mv -f` moved the record into that directory."""
    spool, source, _, outside = site
    plant = (f'ln -s "{outside}" "$SPOOL/1239.job"; now=$(date +%s); '
             f'for t in 0 1 2 3; do ln -s "{outside}" "$SPOOL/1239.$((now + t)).$$.job"; done')
    proc = epilog(spool, source, shell, plant)
    assert proc.returncode == 0
    assert list(outside.iterdir()) == []
    written = [p for p in spool.glob("1239.*.job") if not p.is_symlink()]
    assert len(written) == 1 and read_record(str(written[0])).job_id == "1239"


@pytest.mark.parametrize("shell", SHELLS)
def test_records_are_not_world_readable(site, shell):
    spool, source, _, _ = site
    assert epilog(spool, source, shell).returncode == 0
    assert (spool / "1239.job").stat().st_mode & 0o777 == 0o640


KINDS = ("absent", "file", "link-file", "link-dir", "dangling", "link-fifo", "dir")


def plant_line(kind: str, path: str, victim: Path, outside: Path) -> str:
    """One sh command planting `kind` at `path` (a quoted sh word)."""
    return {
        "absent": ":",
        "file": f"printf 'planted\\n' >{path}",
        "link-file": f'ln -s "{victim}" {path}',
        "link-dir": f'ln -s "{outside}" {path}',
        "dangling": f'ln -s "{outside}/new" {path}',
        "link-fifo": f'ln -s "{outside}/fifo" {path}',
        "dir": f"mkdir {path}",
    }[kind]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(temps=st.tuples(*[st.sampled_from(KINDS)] * 3), final=st.sampled_from(KINDS),
       unique=st.sampled_from(KINDS), shell=st.sampled_from(SHELLS))
def test_whatever_is_planted_the_epilog_writes_only_its_record_in_the_spool(temps, final, unique, shell):
    """Property: any mix of files, links (to a file, a directory, a FIFO, nowhere) and
    directories at every name the epilog may use: it exits 0 silently, nothing outside the spool
    changes, nothing planted is written through, and the record is there unless every temp name
    was taken or the final name is a directory."""
    with tempfile.TemporaryDirectory(prefix="sa-") as d:
        root = Path(d)
        spool, source, victim, outside = root / "spool", root / "uuid", root / "victim", root / "outside"
        spool.mkdir()
        outside.mkdir()
        source.write_text(UUID + "\n")
        victim.write_bytes(SECRET)
        os.mkfifo(outside / "fifo")
        lines = [plant_line(k, n, victim, outside) for k, n in zip(temps, temp_names()[:3], strict=True)]
        lines.append(plant_line(final, '"$SPOOL/1239.job"', victim, outside))
        lines.append("now=$(date +%s); for t in 0 1 2 3 4; do "
                     + plant_line(unique, '"$SPOOL/1239.$((now + t)).$$.job"', victim, outside) + "; done")
        proc = epilog(spool, source, shell, "\n".join(lines))
        assert proc.returncode == 0 and proc.stderr == b""
        assert victim.read_bytes() == SECRET
        assert sorted(p.name for p in outside.iterdir()) == ["fifo"]
        assert stat.S_ISFIFO((outside / "fifo").stat().st_mode)
        records = [p for p in spool.iterdir() if p.name.endswith(".job") and not p.is_symlink() and p.is_file()
                   and p.read_bytes() != b"planted\n"]
        expected = "absent" in temps and (unique if final != "absent" else final) != "dir"
        assert len(records) == (1 if expected else 0), (temps, final, unique, sorted(os.listdir(spool)))
        if records:
            assert read_record(str(records[0])).job_id == "1239"
            assert records[0].stat().st_mode & 0o777 == 0o640
        planted_temps = sum(k != "absent" for k in temps)
        assert len([n for n in os.listdir(spool) if n.endswith(".tmp")]) == planted_temps  # none of ours left


# ---- the daemon's side ------------------------------------------------------------------------

def test_a_planted_lock_link_refuses_start_and_spares_the_target(tmp_path):
    ledger = tmp_path / "state" / "ledger.sqlite"
    ledger.parent.mkdir()
    ledger.write_bytes(SECRET)
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / SPOOL_LOCK).symlink_to(ledger)
    with pytest.raises(CarbondError, match="refusing the lock file .*symbolic link") as err:
        InstanceLock(tmp_path / "state", spool).acquire()
    assert "\n" not in str(err.value)
    assert ledger.read_bytes() == SECRET


def test_a_hard_linked_lock_file_is_not_truncated(tmp_path):
    ledger = tmp_path / "state" / "ledger.sqlite"
    ledger.parent.mkdir()
    ledger.write_bytes(SECRET)
    spool = tmp_path / "spool"
    spool.mkdir()
    os.link(ledger, spool / SPOOL_LOCK)
    with pytest.raises(CarbondError, match="not a plain file"):
        InstanceLock(tmp_path / "state", spool).acquire()
    assert ledger.read_bytes() == SECRET


def bad_record(spool: Path, name: str = "77.job") -> Path:
    p = spool / name
    p.write_text("not a record\n")
    return p


def test_a_symlinked_dead_dir_is_refused_and_nothing_written_outside(tmp_path):
    spool, outside = tmp_path / "spool", tmp_path / "outside"
    spool.mkdir()
    outside.mkdir()
    (spool / "dead").symlink_to(outside)
    bad_record(spool)
    records, dead = Spool(spool).pending()
    assert records == [] and [d.moved for d in dead] == [False]
    assert list(outside.iterdir()) == []
    assert (spool / "77.job").read_text() == "not a record\n"  # kept for when dead/ is fixed


def test_links_planted_inside_dead_are_replaced_not_followed(tmp_path):
    """Even in a dead/ someone else made: the reason and the copy never go through a link."""
    spool, victim = tmp_path / "spool", tmp_path / "victim"
    (spool / "dead").mkdir(parents=True)
    victim.write_bytes(SECRET)
    (spool / "dead" / "77.job.reason").symlink_to(victim)
    (spool / "dead" / f".77.job.reason.{os.getpid()}.tmp").symlink_to(victim)
    bad_record(spool)
    _, dead = Spool(spool).pending()
    assert [d.moved for d in dead] == [True]
    assert victim.read_bytes() == SECRET
    moved = Path(dead[0].path)
    assert moved.parent == spool / "dead" and moved.read_text() == "not a record\n"
    assert "not a carbond spool record" in Path(f"{moved}.reason").read_text()


def test_a_dead_letter_is_a_daemon_owned_copy_readable_by_the_dead_dir_group(tmp_path):
    spool = tmp_path / "spool"
    (spool / "dead").mkdir(parents=True)
    src = bad_record(spool)
    os.chmod(src, 0o600)  # as SlurmUser left it: no access for anyone else
    _, dead = Spool(spool).pending()
    moved = Path(dead[0].path)
    assert not src.exists() and moved.stat().st_ino != 0
    assert moved.stat().st_mode & 0o777 == 0o640
    assert Path(f"{moved}.reason").stat().st_mode & 0o777 == 0o640


def test_a_planted_link_record_is_dead_lettered_as_the_link_itself(tmp_path):
    spool, victim = tmp_path / "spool", tmp_path / "victim"
    spool.mkdir()
    victim.write_bytes(SECRET)
    (spool / "5.job").symlink_to(victim)
    _, dead = Spool(spool).pending()
    assert [d.moved for d in dead] == [True]
    assert Path(dead[0].path).is_symlink() and victim.read_bytes() == SECRET


# ---- the lock follows the directory ----------------------------------------------------------

HOLDER = """
import sys, time
from carbond.instance_lock import InstanceLock
lock = InstanceLock(sys.argv[1], sys.argv[2]).acquire()
print("locked", flush=True)
while True:
    try:
        lock.check()
    except Exception as e:
        print("stopped:", e, flush=True)
        sys.exit(1)
    time.sleep(0.05)
"""


def holder(state: Path, spool: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(state), str(spool)], stdout=subprocess.PIPE,  # noqa: S603
                         text=True, env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
    assert p.stdout.readline() == "locked\n"
    return p


def wait_for(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_a_recreated_spool_is_locked_again_so_a_second_daemon_is_refused(tmp_path):
    spool = tmp_path / "spool"
    first = holder(tmp_path / "state1", spool)
    try:
        shutil.rmtree(spool)
        spool.mkdir()
        lock = spool / SPOOL_LOCK
        assert wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid))
        with pytest.raises(AlreadyRunning, match=f"pid {first.pid}"):
            InstanceLock(tmp_path / "state2", spool).acquire()
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()


def test_a_daemon_that_lost_the_race_for_the_new_spool_stops(tmp_path):
    """The second one got in before the first's next check: then the first stops, never both."""
    spool = tmp_path / "spool"
    state = tmp_path / "state1"
    lock = InstanceLock(state, spool).acquire()
    try:
        shutil.rmtree(spool)
        spool.mkdir()
        second = InstanceLock(tmp_path / "state2", spool).acquire()
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
            lock.check()
        second.release()
    finally:
        lock.release()


# ---- the same with real daemons ----------------------------------------------------------------

def carbond(tmp_path: Path, name: str, spool: Path) -> tuple[subprocess.Popen, Path]:
    """`carbond run` with its own state_dir on a shared spool; no Slurm is needed to hold the lock."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        f"cluster: c1\nstate_dir: {tmp_path / name}\nspool_dir: {spool}\n"
        "victoriametrics:\n  url: http://127.0.0.1:9\nintensity:\n  provider: constant\n  value: 200\n"
        "nodes:\n  - match: n1\n    cpus: 2\n    idle_watts: 100\n    max_watts: 300\n"
        "metrics:\n  listen: 127.0.0.1:0\n"
        "slurm:\n  sacct: /nonexistent/sacct\n  sacctmgr: /nonexistent/sacctmgr\n  reconcile_seconds: 0\n")
    log = tmp_path / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "carbond", "--config", str(config), "run"],  # noqa: S603
                                stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
    return proc, log


def test_a_real_daemon_refuses_a_planted_lock_link_in_one_line(tmp_path):
    ledger = tmp_path / "victim-ledger.sqlite"
    ledger.write_bytes(SECRET)
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / SPOOL_LOCK).symlink_to(ledger)
    proc, log = carbond(tmp_path, "a", spool)
    try:
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:  # the old daemon started, and had truncated the target
            proc.kill()
            proc.wait()
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and "refusing the lock file" in lines[0] and "symbolic link" in lines[0], lines
    assert ledger.read_bytes() == SECRET


def test_two_real_daemons_never_share_a_recreated_spool(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    first, first_log = carbond(tmp_path, "a", spool)
    try:
        assert wait_for(lambda: "carbond running" in first_log.read_text(), timeout=60), first_log.read_text()
        shutil.rmtree(spool)
        spool.mkdir()
        lock = spool / SPOOL_LOCK
        assert wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid)), first_log.read_text()
        second, second_log = carbond(tmp_path, "b", spool)
        assert second.wait(timeout=60) == 1
        assert f"another carbond (pid {first.pid}) is already running" in second_log.read_text()
        assert first.poll() is None
        assert "locked again" in first_log.read_text()
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
