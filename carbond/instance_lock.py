"""One daemon per spool and per state_dir: an flock held for the process's life.

Two daemons on one spool would each account the same records (an HA pair counted 198 of 200
jobs twice); two on one state_dir would each export half of the truth. The lock is an flock on
`<state_dir>/carbond.lock` and `<spool_dir>/.carbond.lock`: the kernel drops it when the process
dies, even by SIGKILL, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import CarbondError

STATE_LOCK = "carbond.lock"
SPOOL_LOCK = ".carbond.lock"


class AlreadyRunning(CarbondError):
    """Another carbond holds the lock; names the directory and the holder's pid."""


class InstanceLock:
    """Held from acquire() until release() or the process ends."""

    def __init__(self, state_dir: str | os.PathLike[str], spool_dir: str | os.PathLike[str]) -> None:
        self.paths = [Path(state_dir) / STATE_LOCK, Path(spool_dir) / SPOOL_LOCK]
        self._fds: list[int] = []

    def acquire(self) -> InstanceLock:
        try:
            for path in self.paths:
                self._fds.append(_lock(path))
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise CarbondError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(
            f"another carbond (pid {holder}) is already running on {path.parent} (lock {path}); "
            f"only one daemon may serve a spool and a state_dir: stop it first (an HA pair runs one "
            f"active daemon, see README)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
