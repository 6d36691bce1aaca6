"""epilog/carbond-epilog run for real, with crafted environments, under every POSIX shell here.

The records it leaves are read back with carbond/spool.py's strict reader, so format and
reader are tested together. Failure paths (missing, unwritable, full spool) use things that
really fail as root: a regular file in place of the directory, a read-only and a full tmpfs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from carbond.spool import KEYS_V2, read_record

EPILOG = Path(__file__).resolve().parent.parent / "epilog" / "carbond-epilog"
SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]
FAST = 0.5  # seconds: a bound for a hang, not a speed test (2 shared cores); the real figure (a few ms) is bench/bench_epilog.py

BASE = {
    "SLURM_SCRIPT_CONTEXT": "epilog_slurmctld",
    "SLURM_JOB_ID": "1239",
    "SLURM_JOB_NODELIST": "n[1-3]",
    "SLURM_JOB_CPUS_PER_NODE": "2,1(x2)",
    "SLURM_JOB_NUM_NODES": "3",
    "SLURM_JOB_PARTITION": "debug",
    "SLURM_JOB_ACCOUNT": "physics",
    "SLURM_JOB_USER": "alice",
    "SLURM_JOB_UID": "1000",
    "SLURM_JOB_EXIT_CODE": "256",
    "SLURM_CLUSTER_NAME": "testcl",
    "SLURM_JOB_NAME": "my job",
    "SLURM_JOB_COMMENT": "a comment",
    "SLURM_JOB_WORK_DIR": "/home/alice",
}
EXPECTED = {
    "job_id": "1239",
    "array_job_id": "",
    "array_task_id": "",
    "nodes": "n[1-3]",
    "cpus_per_node": "2,1(x2)",
    "partition": "debug",
    "account": "physics",
    "user": "alice",
    "uid": 1000,
    "exit_code": "1:0",
    "cluster": "testcl",
}


@pytest.fixture
def work():
    """A short temp dir (AF_UNIX paths are limited to 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="ce-", dir="/tmp"))
    yield d
    for sub in d.iterdir():
        if sub.is_mount():
            subprocess.run(["umount", "-l", str(sub)], check=False)  # noqa: S603 - argument list, no shell
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def spool(work):
    d = work / "spool"
    d.mkdir()
    return d


@pytest.fixture
def syslog(work):
    """A datagram socket standing in for /dev/log; the epilog's logger is pointed at it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = work / "log.sock"
    s.bind(str(path))
    s.settimeout(5)
    yield s, str(path)
    s.close()


def run(env: dict[str, str], spool: Path | str, shell: str | None = None, log_socket: str = ""):
    """Run the epilog the way slurmctld does: no PATH, only the given variables."""
    full = dict(env, CARBOND_SPOOL_DIR=str(spool))
    if log_socket:
        full["CARBOND_LOG_SOCKET"] = log_socket
    argv = [shutil.which(shell), str(EPILOG)] if shell else [str(EPILOG)]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=full, capture_output=True, timeout=10, check=False)  # noqa: S603 - argument list
    return proc, time.perf_counter() - t0


def records(spool: Path) -> list[Path]:
    return sorted(p for p in spool.iterdir() if p.name.endswith(".job"))


def logged(sock: socket.socket) -> str:
    data = sock.recv(65536).decode("utf-8", "replace")
    assert "carbond-epilog" in data
    return data


def mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(exist_ok=True)
    argv = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)]
    r = subprocess.run(argv, capture_output=True, check=False)  # noqa: S603 - argument list, no shell
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")


@pytest.mark.parametrize("shell", [None, *SHELLS])
def test_record_round_trips_through_the_strict_reader(spool, syslog, shell):
    proc, took = run(BASE, spool, shell, log_socket=syslog[1])
    assert proc.returncode == 0 and proc.stdout == b"" and proc.stderr == b""
    assert took < FAST
    (path,) = records(spool)
    assert path.name == "1239.job"
    rec = read_record(str(path))
    assert {k: getattr(rec, k) for k in EXPECTED} == EXPECTED
    assert abs(rec.epilog_time - time.time()) < 5
    assert rec.hosts() == ("n1", "n2", "n3") and rec.cpus() == [2, 1, 1]
    text = path.read_text()
    assert text.splitlines()[0] == "carbond-spool 2"
    assert (rec.version, rec.start_time, rec.end_time, rec.het_job_id, rec.sluid) == (2, None, None, "", "")
    for word in ("my job", "a comment", "/home/alice"):
        assert word not in text
    assert not [p for p in spool.iterdir() if p.name.startswith(".")], "temp file left behind"
    syslog[0].settimeout(0.3)
    with pytest.raises(TimeoutError):
        syslog[0].recv(4096)  # nothing logged when all is well


def test_array_task_keeps_raw_id_and_display_id(spool):
    env = dict(BASE, SLURM_JOB_ID="1240", SLURM_ARRAY_JOB_ID="1234", SLURM_ARRAY_TASK_ID="6")
    assert run(env, spool)[0].returncode == 0
    (path,) = records(spool)
    assert path.name == "1234_6-1240.job"
    rec = read_record(str(path))
    assert (rec.job_id_key, rec.display_id) == ("1240", "1234_6")


def test_newer_slurm_times_het_ids_and_sluid_are_recorded(spool):
    """What Slurm 24.11/26.05 hand EpilogSlurmctld (seen on the real testbeds)."""
    env = dict(BASE, SLURM_JOB_ID="10", SLURM_JOB_START_TIME="1795325865", SLURM_JOB_END_TIME="1795325867",
               SLURM_HET_JOB_ID="9", SLURM_HET_JOB_OFFSET="1", SLURM_JOB_SLUID="s27NM80W5BNS00")
    assert run(env, spool)[0].returncode == 0
    (path,) = records(spool)
    rec = read_record(str(path))
    assert (rec.start_time, rec.end_time, rec.sluid, rec.version) == (1795325865, 1795325867, "s27NM80W5BNS00", 2)
    assert (rec.job_id_key, rec.display_id, rec.het_job_id, rec.het_job_offset) == ("10", "9+1", "9", "1")


def test_partial_pairs_are_dropped(spool):
    run(dict(BASE, SLURM_JOB_ID="1", SLURM_HET_JOB_ID="9"), spool)  # no offset
    run(dict(BASE, SLURM_JOB_ID="2", SLURM_HET_JOB_ID="9", SLURM_HET_JOB_OFFSET="1", SLURM_ARRAY_JOB_ID="2",
             SLURM_ARRAY_TASK_ID="3"), spool)  # never both: the array wins, as sacct's JobID does
    recs = {r.job_id: r for r in (read_record(str(p)) for p in records(spool))}
    assert (recs["1"].het_job_id, recs["1"].display_id) == ("", "1")
    assert (recs["2"].het_job_id, recs["2"].display_id) == ("", "2_3")


def test_wait_status_and_exit_code2(spool):
    run(dict(BASE, SLURM_JOB_ID="1", SLURM_JOB_EXIT_CODE="9"), spool)  # killed by SIGKILL
    run(dict(BASE, SLURM_JOB_ID="2", SLURM_JOB_EXIT_CODE="0", SLURM_JOB_EXIT_CODE2="3:0"), spool)
    run(dict(BASE, SLURM_JOB_ID="3", SLURM_JOB_EXIT_CODE="x"), spool)
    codes = {read_record(str(p)).job_id: read_record(str(p)).exit_code for p in records(spool)}
    assert codes == {"1": "0:9", "2": "3:0", "3": ""}


def test_repeated_run_loses_nothing(spool):
    """A second epilog for the same job never replaces the first record: the ledger dedups."""
    for _ in range(3):
        assert run(BASE, spool)[0].returncode == 0
    paths = records(spool)
    assert len(paths) == 3 and paths[-1].name == "1239.job"
    assert {read_record(str(p)).job_id for p in paths} == {"1239"}


HOSTILE = [
    "$(touch {marker})",
    "`touch {marker}`",
    "'; touch {marker}; '",
    '"; touch {marker}; "',
    "x\njob_id=999\nuid=0\nend\ntouch {marker}",
    "x\r\nuser=root",
    "a|b|c=d=e",
    "%s%n%x\\n\\0",
    "-n -e",
    "\x01\x1b[31m\x7f\t",
    "é ü 中文",
    "*",
    "A" * 100_000,
    "B" * 300 + "\n" + "uid=0",
]
FIELD_OF = {
    "SLURM_JOB_NODELIST": "nodes",
    "SLURM_JOB_CPUS_PER_NODE": "cpus_per_node",
    "SLURM_JOB_PARTITION": "partition",
    "SLURM_JOB_ACCOUNT": "account",
    "SLURM_JOB_USER": "user",
    "SLURM_JOB_UID": "uid",
    "SLURM_JOB_EXIT_CODE": "exit_code",
    "SLURM_JOB_EXIT_CODE2": "exit_code",
    "SLURM_CLUSTER_NAME": "cluster",
    "SLURM_ARRAY_JOB_ID": "array_job_id",
    "SLURM_ARRAY_TASK_ID": "array_task_id",
    "SLURM_JOB_START_TIME": "start_time",
    "SLURM_JOB_END_TIME": "end_time",
    "SLURM_HET_JOB_ID": "het_job_id",
    "SLURM_HET_JOB_OFFSET": "het_job_offset",
    "SLURM_JOB_SLUID": "sluid",
    "SLURM_JOB_NAME": None,
    "SLURM_JOB_COMMENT": None,
    "SLURM_JOB_WORK_DIR": None,
    "SLURM_SCRIPT_CONTEXT": None,
}


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("var", sorted(FIELD_OF))
def test_hostile_values_never_execute_nor_break_the_record(work, spool, var, shell):
    marker = work / "pwned"
    for n, template in enumerate(HOSTILE):
        value = template.format(marker=marker)
        env = dict(BASE, SLURM_JOB_ID=str(100 + n), SLURM_JOB_NAME=value, SLURM_JOB_COMMENT=value)
        env[var] = value
        proc, took = run(env, spool, shell)
        assert proc.returncode == 0 and proc.stderr == b"", (var, value[:40], proc.stderr[:200])
        assert took < FAST
    assert not marker.exists(), f"{var}: a value was executed"
    paths = records(spool)
    got = [read_record(str(p)) for p in paths]  # strict: any extra or broken line would raise
    assert sorted(int(r.job_id) for r in got) == list(range(100, 100 + len(HOSTILE)))
    for path, rec in zip(paths, got, strict=True):
        field = FIELD_OF[var]
        for key, want in EXPECTED.items():
            if (
                key != "job_id"
                and key != field
                and not (field in ("array_job_id", "array_task_id") and key.startswith("array"))
            ):
                assert getattr(rec, key) == want, (var, key)
        if field in ("partition", "account", "user", "cluster"):
            got = getattr(rec, field)
            assert len(got.encode()) <= 256 and not any(ord(c) < 32 or ord(c) == 127 for c in got)
        elif var == "SLURM_JOB_EXIT_CODE2":
            assert rec.exit_code == "1:0"  # falls back to the wait status
        elif field is not None:
            assert getattr(rec, field) in ("", None)  # structured: dropped, sacct has the fact
        assert len(path.read_text().splitlines()) == len(KEYS_V2) + 2


def test_free_text_is_kept_but_stripped_and_capped(spool):
    env = dict(BASE, SLURM_JOB_ACCOUNT="ph\nys=ics", SLURM_JOB_USER="u" * 1000)
    run(env, spool)
    rec = read_record(str(records(spool)[0]))
    assert rec.account == "phys=ics"
    assert rec.user == "u" * 256


@pytest.mark.parametrize("job_id", ["", "12x", "$(touch /tmp/pwned-ce)", "-1", "1 2", "1" * 25, "0x10", "1\n2"])
def test_non_numeric_job_id_leaves_no_record_and_logs(spool, syslog, job_id):
    env = dict(BASE, SLURM_JOB_ID=job_id)
    proc, took = run(env, spool, log_socket=syslog[1])
    assert proc.returncode == 0 and took < FAST
    assert records(spool) == [] and list(spool.iterdir()) == []
    assert "SLURM_JOB_ID is not a number" in logged(syslog[0])
    assert not Path("/tmp/pwned-ce").exists()


def test_missing_spool_directory(work, syslog):
    proc, took = run(BASE, work / "nope", log_socket=syslog[1])
    assert proc.returncode == 0 and took < FAST
    assert not (work / "nope").exists()
    msg = logged(syslog[0])
    assert "job 1239" in msg and "missing" in msg


def test_spool_path_is_a_file(work, syslog):
    """Root ignores mode bits, so the spool is made unwritable by being a regular file."""
    (work / "spool").write_text("not a directory\n")
    proc, took = run(BASE, work / "spool", log_socket=syslog[1])
    assert proc.returncode == 0 and took < FAST
    assert (work / "spool").read_text() == "not a directory\n"
    assert "job 1239" in logged(syslog[0])


def test_read_only_spool(work, syslog):
    ro = work / "ro"
    mount_tmpfs(ro, "ro,size=64k")
    proc, took = run(BASE, ro, log_socket=syslog[1])
    assert proc.returncode == 0 and took < FAST
    assert list(ro.iterdir()) == []
    msg = logged(syslog[0])
    assert "job 1239" in msg and "cannot write" in msg


def test_full_spool(work, syslog):
    full = work / "full"
    mount_tmpfs(full, "size=64k")
    fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    proc, took = run(BASE, full, log_socket=syslog[1])
    assert proc.returncode == 0 and took < FAST
    assert [p.name for p in full.iterdir()] == ["filler"], "temp or partial record left on a full disk"
    assert "cannot write" in logged(syslog[0])
    (full / "filler").unlink()
    assert run(BASE, full)[0].returncode == 0  # space back: the next job is recorded
    assert read_record(str(full / "1239.job")).job_id == "1239"


def test_without_logger_still_exits_zero(work):
    """Nothing to log through (no logger socket, no syslog): still exit 0 and silent."""
    proc, took = run(BASE, work / "nope")
    assert proc.returncode == 0 and proc.stderr == b"" and took < FAST


@pytest.mark.parametrize(
    ("nodelist", "me", "forwards"),
    [
        ("n[1-3]", "n1", True),
        ("n[1-3]", "n2", False),
        ("n[1-3]", "n3", False),
        ("n5,n[1-3]", "n5", True),
        ("rack[1-2]-n[01-02]", "rack1-n01", True),
        ("rack[1-2]-n[01-02]", "rack1-n02", False),
        ("gpu[07-08]", "gpu07", True),
        ("gpu[07-08]", "gpu7", False),
    ],
)
@pytest.mark.parametrize("var", ["SLURM_NODELIST", "SLURM_JOB_NODELIST"])
def test_compute_node_epilog_forwards_from_first_node_only(spool, nodelist, me, forwards, var):
    """slurmd's Epilog in 22.05 sets SLURM_NODELIST (seen on the testbed), not SLURM_JOB_NODELIST."""
    env = {k: v for k, v in BASE.items() if k not in ("SLURM_JOB_NODELIST", "SLURM_JOB_CPUS_PER_NODE")}
    env.update(SLURM_SCRIPT_CONTEXT="epilog_slurmd", SLURMD_NODENAME=me, **{var: nodelist})
    proc, _ = run(env, spool)
    assert proc.returncode == 0
    got = records(spool)
    assert len(got) == (1 if forwards else 0)
    if forwards:
        assert read_record(str(got[0])).nodes == nodelist


def test_slurm_null_strings_become_empty(spool):
    run(dict(BASE, SLURM_JOB_ACCOUNT="(null)"), spool)  # 22.05 without accounting
    assert read_record(str(records(spool)[0])).account == ""


def test_compute_node_epilog_falls_back_to_short_hostname(spool):
    short = socket.gethostname().split(".")[0]
    env = dict(BASE, SLURM_SCRIPT_CONTEXT="epilog_slurmd", SLURM_JOB_NODELIST=f"{short},zz-other")
    run(env, spool)
    assert len(records(spool)) == 1
    run(dict(env, SLURM_JOB_ID="1240", SLURM_JOB_NODELIST=f"zz-other,{short}"), spool)
    assert [p.name for p in records(spool)] == ["1239.job"]


def test_slurmctld_epilog_forwards_for_every_job_regardless_of_host(spool):
    env = dict(BASE, SLURMD_NODENAME="n9")  # context epilog_slurmctld wins
    run(env, spool)
    assert len(records(spool)) == 1


def test_script_is_posix_sh():
    assert EPILOG.read_text().startswith("#!/bin/sh\n")
    assert os.access(EPILOG, os.X_OK)
    for shell in SHELLS:
        flags = ["-n"] if shell == "dash" else ["--posix", "-n"]
        argv = [shutil.which(shell), *flags, str(EPILOG)]
        r = subprocess.run(argv, capture_output=True, check=False)  # noqa: S603 - argument list, no shell
        assert r.returncode == 0, r.stderr
