"""Time epilog/carbond-epilog per call, as slurmctld runs it (fork, exec, wait), N times per case.

Cases: a healthy spool; the same with many records already waiting; a missing spool, a spool
that is a regular file (unwritable even for root) and, where mount is permitted, a full tmpfs,
each with a syslog socket that drains (so the logger path is timed too); a compute-node
Epilog on a node that does not forward. The epilog never contacts the daemon, so "daemon
down" is the healthy-spool figure. Baseline: spawning /bin/true the same way.

    python bench/bench_epilog.py [-n 1000] [--shell dash|bash]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

EPILOG = Path(__file__).resolve().parent.parent / "epilog" / "carbond-epilog"
BASE = {
    "SLURM_SCRIPT_CONTEXT": "epilog_slurmctld",
    "SLURM_JOB_NODELIST": "n[1-3]",
    "SLURM_JOB_CPUS_PER_NODE": "2,1(x2)",
    "SLURM_JOB_PARTITION": "debug",
    "SLURM_JOB_ACCOUNT": "physics",
    "SLURM_JOB_USER": "alice",
    "SLURM_JOB_UID": "1000",
    "SLURM_JOB_EXIT_CODE": "0",
    "SLURM_CLUSTER_NAME": "testcl",
    "SLURM_JOB_NAME": "$(touch /tmp/never) `x` | y=z",
    "SLURM_JOB_COMMENT": "a comment",
}


def drain(sock: socket.socket, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            sock.recv(65536)
        except (TimeoutError, OSError):
            continue


def time_calls(argv: list[str], envs: list[dict[str, str]]) -> list[float]:
    out = []
    for env in envs:
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=False)  # noqa: S603 - argument list
        out.append((time.perf_counter() - t0) * 1000)
    return out


def summary(name: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * len(ms))) - 1)]
    return f"{name:<42} n={len(ms):<5} median {statistics.median(ms):6.2f} ms  p99 {p99:6.2f} ms  max {ms[-1]:6.2f} ms"


def mount_full_tmpfs(where: Path) -> bool:
    where.mkdir()
    argv = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)]
    if subprocess.run(argv, capture_output=True, check=False).returncode != 0:  # noqa: S603 - argument list
        return False
    fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return True


def cases(work: Path, log_sock: str) -> list[tuple[str, dict[str, str]]]:
    ok = work / "spool"
    ok.mkdir()
    backlog = work / "backlog"
    backlog.mkdir()
    for i in range(10_000):
        (backlog / f"{900000 + i}.job").write_text("carbond-spool 1\n")
    (work / "file").write_text("not a directory\n")
    out = [
        ("spool ok (daemon up or down)", {"CARBOND_SPOOL_DIR": str(ok)}),
        ("spool ok, 10,000 records waiting", {"CARBOND_SPOOL_DIR": str(backlog)}),
        ("spool missing (logs)", {"CARBOND_SPOOL_DIR": str(work / "missing"), "CARBOND_LOG_SOCKET": log_sock}),
        ("spool unwritable: a file (logs)", {"CARBOND_SPOOL_DIR": str(work / "file"), "CARBOND_LOG_SOCKET": log_sock}),
    ]
    if mount_full_tmpfs(work / "full"):
        out.append(
            ("spool full: tmpfs (logs)", {"CARBOND_SPOOL_DIR": str(work / "full"), "CARBOND_LOG_SOCKET": log_sock})
        )
    else:
        print("note: mount not permitted, full-disk case skipped", file=sys.stderr)
    node = {"CARBOND_SPOOL_DIR": str(ok), "SLURM_SCRIPT_CONTEXT": "epilog_slurmd", "SLURMD_NODENAME": "n2"}
    out.append(("compute-node Epilog, not first node", node))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1000, help="calls per case (default 1000)")
    ap.add_argument("--shell", choices=("dash", "bash"), help="run the script with this shell instead of its #!")
    args = ap.parse_args()
    argv = [shutil.which(args.shell), str(EPILOG)] if args.shell else [str(EPILOG)]
    work = Path(tempfile.mkdtemp(prefix="be-", dir="/tmp"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(work / "log.sock"))
    stop = threading.Event()
    threading.Thread(target=drain, args=(sock, stop), daemon=True).start()
    try:
        print(f"epilog {EPILOG} via {argv[0]}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}")
        print(summary("baseline: spawn /bin/true", time_calls(["/bin/true"], [{}] * args.n)))
        for name, extra in cases(work, str(work / "log.sock")):
            time_calls(argv, [dict(BASE, SLURM_JOB_ID=str(10**9 + i), **extra) for i in range(20)])  # warm up
            envs = [dict(BASE, SLURM_JOB_ID=str(1000 + i), **extra) for i in range(args.n)]
            print(summary(name, time_calls(argv, envs)))
        written = sum(1 for p in (work / "spool").iterdir() if p.name.endswith(".job"))
        print(
            f"records written in the healthy spool: {written} (expected {args.n + 20}); /tmp/never exists: "
            f"{Path('/tmp/never').exists()}"
        )
    finally:
        stop.set()
        sock.close()
        if (work / "full").is_mount():
            subprocess.run(["umount", "-l", str(work / "full")], check=False)  # noqa: S603 - argument list
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"reproduce: cd {Path(__file__).resolve().parent.parent} && python bench/bench_epilog.py -n {args.n}"
        + (f" --shell {args.shell}" if args.shell else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
