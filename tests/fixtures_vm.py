"""A real VictoriaMetrics (Debian's `victoria-metrics`) on loopback for tests and the benchmark.

`VMServer` holds the start/stop logic so bench scripts can reuse it; the session-scoped `vm`
fixture wraps one server for the whole test run. Tests avoid interfering with each other by
using unique node names (`vm.node("x")`), not by wiping the database.
"""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import requests

BINARY = "victoria-metrics"
POWER_METRIC = "amperageProbeReading"
POWER_LABELS = {"amperageProbeLocationName": "System Board Pwr Consumption"}


def free_port() -> int:
    """A currently free loopback port (bind to port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VMServer:
    """One victoria-metrics process; stop()/start() keep the port and data so data survives."""

    def __init__(self, data_dir: str | None = None, port: int | None = None, binary: str = BINARY,
                 extra_args: Sequence[str] = ()) -> None:
        exe = shutil.which(binary)
        if exe is None:
            raise RuntimeError(f"{binary} not found on PATH (Debian package victoria-metrics)")
        self.binary = exe
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="carbond-vm-")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(self.data_dir) / "victoria-metrics.log"
        self.session = requests.Session()

    def start(self, timeout: float = 30.0) -> VMServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        args = [
            self.binary,
            f"-storageDataPath={Path(self.data_dir) / 'data'}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=100y",
            "-search.disableCache",
            *self.extra_args,
        ]
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # handed to the child, closed in stop()
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argument list, no shell
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self._log = log
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"victoria-metrics not healthy at {self.url} after {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._log.close()
        self.session.close()
        self.session = requests.Session()

    def close(self) -> None:
        """Stop and remove the data directory if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- data -------------------------------------------------------------------------------
    def import_lines(self, lines: Iterable[str | bytes]) -> None:
        """POST ready-made JSON lines to /api/v1/import (one series per line)."""
        if isinstance(lines, (str, bytes)):
            lines = [lines]
        body = b"".join((ln.encode() if isinstance(ln, str) else ln) + b"\n" for ln in lines)
        r = self.session.post(f"{self.url}/api/v1/import", data=body, timeout=120)
        r.raise_for_status()

    def import_series(self, node: str, t_seconds: Sequence[float], watts: Sequence[float],
                      metric: str = POWER_METRIC, labels: Mapping[str, str] | None = None,
                      node_label: str = "alias") -> None:
        """Import one node's samples; times in (fractional) seconds, sent as integer ms."""
        if len(t_seconds) != len(watts):
            raise ValueError("t_seconds and watts differ in length")
        self.import_lines([series_line(node, t_seconds, watts, metric, labels, node_label)])

    def flush(self) -> None:
        """Make everything imported so far visible to queries."""
        self.session.get(f"{self.url}/internal/force_flush", timeout=60).raise_for_status()

    def export_requests(self) -> int:
        """Export requests VM has served, from its own /metrics (what the benchmark reports)."""
        text = self.session.get(f"{self.url}/metrics", timeout=10).text
        total = 0
        for line in text.splitlines():
            if line.startswith("vm_http_requests_total{") and 'path="/api/v1/export"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def __enter__(self) -> VMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def series_line(node: str, t_seconds: Sequence[float], watts: Sequence[float], metric: str = POWER_METRIC,
                labels: Mapping[str, str] | None = None, node_label: str = "alias") -> str:
    """One /api/v1/import JSON line; `labels` replaces the default power labels."""
    lab = {"__name__": metric, **(POWER_LABELS if labels is None else labels), node_label: node}
    ms = [int(round(float(t) * 1000)) for t in t_seconds]
    return json.dumps({"metric": lab, "values": [float(w) for w in watts], "timestamps": ms})


class VMHandle:
    """What tests get: the server plus a source of unique node names."""

    def __init__(self, server: VMServer) -> None:
        self.server = server
        self._seq = itertools.count(1)

    @property
    def url(self) -> str:
        return self.server.url

    def node(self, prefix: str = "n") -> str:
        """A node name no other test uses in this session."""
        return f"{prefix}{next(self._seq)}-{int(time.time() * 1000) % 100000}"

    def import_series(self, node: str, t_seconds: Sequence[float], watts: Sequence[float],
                      metric: str = POWER_METRIC, labels: Mapping[str, str] | None = None,
                      node_label: str = "alias") -> None:
        self.server.import_series(node, t_seconds, watts, metric, labels, node_label)

    def import_lines(self, lines: Iterable[str | bytes]) -> None:
        self.server.import_lines(lines)

    def flush(self) -> None:
        self.server.flush()

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def export_requests(self) -> int:
        return self.server.export_requests()


@pytest.fixture(scope="session")
def vm() -> Iterator[VMHandle]:
    server = VMServer()
    server.start()
    handle = VMHandle(server)
    try:
        yield handle
    finally:
        server.close()


@pytest.fixture
def vm_running(vm: VMHandle) -> Iterator[VMHandle]:
    """The session VM, guaranteed up before and after the test (for tests that stop it)."""
    vm.start()
    yield vm
    vm.start()
