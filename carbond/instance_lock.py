"""One daemon per spool and per state_dir: an flock held for the process's life.

Two daemons on one spool would each account the same records (an HA pair counted 198 of 200
jobs twice); two on one state_dir would each export half of the truth. The lock is an flock on
`<state_dir>/carbond.lock` and `<spool_dir>/.carbond.lock`: the kernel drops it when the process
dies, even by SIGKILL, so a crash never leaves a stale lock behind.

SlurmUser owns the spool and can plant anything there (docs/security.md): the lock file is
opened O_NOFOLLOW and must be a plain file (regular, one link), else the daemon refuses to
start; it is never truncated before that check. A lock on a file follows that file, not its
directory: check() (every pass) re-locks when the file at the path is no longer the one held (the
spool deleted and recreated), or stops the daemon when another one already holds the new file.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from pathlib import Path

from .errors import CarbondError

log = logging.getLogger(__name__)

STATE_LOCK = "carbond.lock"
SPOOL_LOCK = ".carbond.lock"
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


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

    def check(self) -> None:
        """Keep holding the lock of the file each path names now; AlreadyRunning if another has it.

        A missing directory is left alone (nothing can start there without recreating it, and
        the next check sees the new file).
        """
        for i, (path, fd) in enumerate(zip(self.paths, self._fds, strict=True)):
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                if not path.parent.is_dir():
                    continue
                now = None
            except OSError:
                continue  # cannot tell (a transient error): the next pass asks again
            held = os.fstat(fd)
            if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                continue
            try:
                new = _lock(path, make_dir=False)
            except AlreadyRunning as exc:  # the other one stays, we stop: never two
                raise AlreadyRunning(f"stopping: the lock file {path} was replaced (its directory recreated?) "
                                     f"and {exc}") from None
            os.close(fd)
            self._fds[i] = new
            log.warning("lock file %s was removed or replaced (its directory recreated?): locked again", path)

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock(path: Path, make_dir: bool = True) -> int:
    try:
        if make_dir:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, _FLAGS, 0o640)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CarbondError(f"refusing the lock file {path}: it is a symbolic link (planted?); nothing was "
                               f"written through it; remove it and start again") from None
        raise CarbondError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
    try:
        _check_plain(fd, path)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(
            f"another carbond (pid {holder}) is already running on {path.parent} (lock {path}); "
            f"only one daemon may serve a spool and a state_dir: stop it first (an HA pair runs one "
            f"active daemon, see README)") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _check_plain(fd: int, path: Path) -> None:
    """Only a regular file with one name may be truncated (a hard link to a ledger may not)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        raise CarbondError(f"refusing the lock file {path}: not a plain file ({stat.filemode(st.st_mode)}, "
                           f"{st.st_nlink} links); nothing was written to it; remove it and start again")
