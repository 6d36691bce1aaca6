"""carbond as a site runs it, on the real testbed: the daemon process, its config, a power feeder.

Shared by the end-to-end tests and bench/bench_daemon.py. The daemon runs as `python -m carbond
run` with a real NOTIFY_SOCKET, so READY/WATCHDOG/STATUS are observed as systemd would see them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from carbond.token import parse

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CarbondStack:
    def __init__(self, slurm, vm_url: str, workdir: Path, settle: float = 20.0, feed_interval: float = 1.0,
                 extra_config: str = "", slurm_extra: str = "", bin_dir: str | None = None,
                 state_dir: Path | None = None, user: str | None = None, nodes: str = "n[1-3]") -> None:
        """`slurm_extra`: more lines (2-space indented) for the config's `slurm:` block; `bin_dir`:
        where sacct, sacctmgr, squeue, scontrol and sinfo are (a directory of fault wrappers;
        default: the testbed's own clients)."""
        self.slurm = slurm
        self.vm_url = vm_url
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = Path(state_dir) if state_dir else self.dir / "state"
        self.port = free_port()
        self.config = self.dir / "carbond.yaml"

        def client(name: str) -> str:
            return f"{bin_dir}/{name}" if bin_dir else slurm.bin(name)

        self.config.write_text(
            f"cluster: {slurm.env.get('CLUSTER', 'testcl')}\n"
            f"state_dir: {self.state_dir}\n"
            f"spool_dir: {slurm.spool_dir}\n"
            f"settle_seconds: {settle}\n"
            f"victoriametrics:\n  url: {vm_url}\n  timeout: 5\n"
            "intensity:\n  provider: constant\n  value: 200\n"
            f"nodes:\n  - match: {nodes}\n    cpus: 2\n    idle_watts: 100\n    max_watts: 300\n"
            f"metrics:\n  listen: 127.0.0.1:{self.port}\n"
            f"slurm:\n  sacct: {client('sacct')}\n  sacctmgr: {client('sacctmgr')}\n"
            + ("" if "retry_seconds" in slurm_extra else "  retry_seconds: 600\n")
            # Reconciliation would account every job other tests ran in the last hour: only where asked.
            + ("" if "reconcile_seconds" in slurm_extra else "  reconcile_seconds: 0\n")
            + slurm_extra
            + extra_config
        )
        self.proc: subprocess.Popen | None = None
        self.feeder: subprocess.Popen | None = None
        self.notify_path = str(self.dir / "notify.sock")
        self.notify_sock: socket.socket | None = None
        self.notifications: list[str] = []
        self.log = self.dir / "carbond.log"
        self.user = user
        """Run the daemon as this user (its primary group); its directory must be reachable by it."""
        if user:
            self.state_dir.mkdir(exist_ok=True)
            shutil.chown(self.state_dir, user, user)
            shutil.chown(self.dir, user, user)

    # ---- processes --------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(self.slurm.env)
        env["PYTHONPATH"] = str(REPO)
        env["NOTIFY_SOCKET"] = self.notify_path
        return env

    def start_feeder(self, interval: float = 1.0, node_intervals: dict[str, float] | None = None,
                     nodes: tuple[str, ...] = ("n1", "n2", "n3"), timeout: float = 60.0) -> None:
        """Start the power feeder and return once every node has a sample from it.

        A job that starts before its node's first sample is honestly `mixed` (nothing is known
        before that sample): on a loaded host the feeder's first sample (Python start-up,
        `scontrol show node`, import, flush) came after the first test job's start.
        """
        per_node = [f"--node-interval={n}={s:g}" for n, s in (node_intervals or {}).items()]
        since = time.time()
        self.feeder = subprocess.Popen(  # noqa: S603
            [sys.executable, str(REPO / "scripts" / "power-feeder"), "--url", self.vm_url, "--interval", str(interval),
             *per_node],
            env=self.slurm.env, stdout=subprocess.DEVNULL, stderr=open(self.dir / "feeder.log", "ab"),
        )
        deadline = time.monotonic() + timeout
        while (missing := [n for n in nodes if self.last_sample(n) < since]):
            if self.feeder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"power feeder wrote no sample for {missing} within {timeout:g} s "
                                   f"(exit {self.feeder.poll()}): {(self.dir / 'feeder.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def last_sample(self, node: str) -> float:
        """Time of the node's newest power sample in VictoriaMetrics (0 if none in the last hour)."""
        now = time.time()
        r = requests.get(f"{self.vm_url}/api/v1/query", timeout=10, params={
            "query": f'tlast_over_time(amperageProbeReading{{alias="{node}"}}[3600s])',
            "time": f"{now + 60:.0f}", "nocache": "1"})
        r.raise_for_status()
        result = r.json()["data"]["result"]
        return max((float(x["value"][1]) for x in result), default=0.0)

    def start(self, timeout: float = 30.0) -> None:
        """Start the daemon and wait for READY=1 on the notify socket."""
        if self.notify_sock is None:
            self.notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            if os.path.exists(self.notify_path):
                os.unlink(self.notify_path)
            self.notify_sock.bind(self.notify_path)
            if self.user:
                os.chmod(self.notify_path, 0o777)
            self.notify_sock.settimeout(0.2)
            threading.Thread(target=self._drain_forever, daemon=True).start()
        seen = len(self.notifications)
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "carbond", "--config", str(self.config), "run"],
            env=self.env(), stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, cwd=self.dir,
            user=self.user, group=self.user,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "READY=1" in self.drain_notifications()[seen:]:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"carbond exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        raise RuntimeError(f"carbond sent no READY=1 within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def _drain_forever(self) -> None:
        """Read the notify socket like systemd does, so the daemon is never throttled by the test."""
        sock = self.notify_sock
        while sock is not None and sock.fileno() >= 0:
            try:
                self.notifications.append(sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def drain_notifications(self) -> list[str]:
        """Every notification received so far (read continuously by a background thread)."""
        time.sleep(0.2)
        return list(self.notifications)

    def alive(self) -> None:
        """Fail the test if the daemon died (tests call it at their end)."""
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise AssertionError(f"carbond died (exit {code}):\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        """Stop everything this stack started, even if the daemon does not stop in time."""
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            self.kill()
        finally:
            if self.feeder is not None:
                self.feeder.terminate()
                try:
                    self.feeder.wait(20)
                except subprocess.TimeoutExpired:
                    self.feeder.kill()
            if self.notify_sock is not None:
                self.notify_sock.close()

    # ---- observations -----------------------------------------------------------------------

    def metrics(self) -> dict[tuple[str, tuple], float]:
        text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric_sum(self, name: str) -> float:
        return sum(v for (n, _), v in self.metrics().items() if n == name)

    def tokens(self, job_id: str) -> dict[str, dict | None]:
        """JobID -> parsed carbond token (None if none) for a job or every task of an array."""
        rows = self.slurm.sacct_rows(job_id, ["JobID", "AdminComment"])
        return {r["JobID"]: parse(r["AdminComment"]) for r in rows}

    def wait_tokens(self, job_id: str, count: int = 1, timeout: float = 90.0) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            toks = self.tokens(job_id)
            if len(toks) >= count and all(toks.values()):
                return toks  # type: ignore[return-value]
            time.sleep(0.3)
        raise AssertionError(f"job {job_id}: tokens after {timeout} s: {self.tokens(job_id)}\n"
                             f"{self.log.read_text()[-3000:]}")

    def ledger_rows(self) -> list[tuple]:
        with sqlite3.connect(self.state_dir / "ledger.sqlite") as db:
            return db.execute("SELECT job_id, state, energy_j, co2e_g FROM jobs").fetchall()


@contextlib.contextmanager
def running_stack(slurm, vm_url: str, workdir: Path, **kwargs):
    """A started CarbondStack (feeder every second, daemon READY), closed on exit."""
    stack = CarbondStack(slurm, vm_url, workdir, **kwargs)
    try:
        stack.start_feeder(1.0)
        stack.start()
        yield stack
    finally:
        stack.close()


@contextlib.contextmanager
def stopped(service):
    """carbond or VictoriaMetrics down for the duration of the block, back up after it."""
    service.stop()
    try:
        yield
    finally:
        service.start()


def wait_for(cond, timeout: float, what: str, stack: CarbondStack | None = None, every: float = 0.3):
    """cond()'s first true value within `timeout` s; the daemon (if given) must stay alive meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if stack is not None:
            stack.alive()
        time.sleep(every)
    tail = stack.log.read_text()[-3000:] if stack is not None else ""
    raise AssertionError(f"not within {timeout:.0f} s: {what}\n{tail}")


def requeue_onto(slurm, job_id: str, node: str, stack: CarbondStack, after: float = 3.0) -> None:
    """Let a running job run `after` seconds, requeue it, and start its next run on `node` now."""
    slurm.wait_state(job_id, "RUNNING")
    t0 = time.time()
    wait_for(lambda: time.time() - t0 > after, after + 10, f"a first run of {after:g} s", stack)
    slurm.run(["scontrol", "requeue", job_id])
    slurm.wait_state(job_id, {"PENDING", "REQUEUED"})
    slurm.run(["scontrol", "update", f"jobid={job_id}", f"NodeList={node}", "StartTime=now"])


def ended(slurm, job_id: str, timeout: float = 60.0) -> None:
    """The job is over for slurmctld and slurmdbd alike (sacct lags slurmctld by a moment)."""
    slurm.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=timeout)
    slurm.wait_sacct(job_id, ["State", "End"],
                     lambda r: r["End"].isdigit() and r["State"] not in ("RUNNING", "PENDING", "COMPLETING"))
