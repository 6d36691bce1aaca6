"""The spool: one file per finished job, left by epilog/carbond-epilog, read by the daemon.

The epilog writes `<dir>/.<jobid>.<pid>.tmp` and renames it to `<jobid>.job`
(`<arrayjob>_<task>-<jobid>.job` for an array task; `<base>.<epoch>.<pid>.job` when a record
of the same job is already waiting). A record is line-oriented text:

    carbond-spool 2
    job_id=1239
    array_job_id=1234
    array_task_id=5
    nodes=n[1-3]
    cpus_per_node=2,1(x2)
    partition=debug
    account=physics
    user=alice
    uid=1000
    exit_code=0:0
    cluster=testcl
    epilog_time=1700000000
    start_time=1699999000
    end_time=1699999990
    het_job_id=
    het_job_offset=
    sluid=
    end

Version 2 (this epilog) adds the last five keys, empty where Slurm does not set them:
start_time/end_time (SLURM_JOB_START_TIME/END_TIME, Slurm 23.02+, epoch seconds equal to
sacct's Start/End), het_job_id/het_job_offset (one record per het job component, as
SLURM_HET_JOB_ID/OFFSET) and sluid (SLURM_JOB_SLUID, 25.11+). Version 1 records (an older
epilog, records left in the spool across an upgrade) have none of them and are still read.

The reader is strict and evaluates nothing: an unknown version, an unknown, repeated or
missing key, a control character, or a missing `end` line rejects the whole file, which then
goes to `<dir>/dead/` with a `.reason` file beside it, so nothing is dropped silently.

SlurmUser owns the spool and can plant anything in it, so nothing here follows a link
(docs/security.md): records are opened O_NOFOLLOW, `dead/` is opened O_NOFOLLOW|O_DIRECTORY
and everything in it is created O_EXCL|O_NOFOLLOW relative to that descriptor. A dead letter
is a copy the daemon owns (0640, group of `dead/`), so operators with read access to `dead/`
can read it without any access to the spool.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HostlistError, JobInputError, SpoolUnavailable
from .hostlist import MAX_HOSTS, expand

log = logging.getLogger(__name__)

VERSION = 2
"""What the epilog writes; READ_VERSIONS are read."""
VERSION_LINE = f"carbond-spool {VERSION}"
END_LINE = "end"
SUFFIX = ".job"
DEAD = "dead"
REASON_SUFFIX = ".reason"
MAX_BYTES = 256 * 1024
"""Far above what the epilog can write (its caps total about 82 KiB)."""
STALE_TEMP_SECONDS = 3600
"""An epilog temp file this old belongs to an epilog that was killed mid-write."""

KEYS = (
    "job_id",
    "array_job_id",
    "array_task_id",
    "nodes",
    "cpus_per_node",
    "partition",
    "account",
    "user",
    "uid",
    "exit_code",
    "cluster",
    "epilog_time",
)
"""Version 1's keys, in order."""
KEYS_V2 = (*KEYS, "start_time", "end_time", "het_job_id", "het_job_offset", "sluid")
"""Version 2's keys, in order: version 1's, then what newer Slurm hands the epilog."""
READ_VERSIONS = {"carbond-spool 1": KEYS, "carbond-spool 2": KEYS_V2}

_DIGITS = re.compile(r"[0-9]{1,20}")
_EXIT = re.compile(r"[0-9]{1,10}:[0-9]{1,10}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CPUS_ITEM = re.compile(r"([0-9]{1,9})(?:\(x([0-9]{1,9})\))?")
_SLUID = re.compile(r"[A-Za-z0-9]{1,32}")
_NAME = re.compile(r"(?:([0-9]+)_([0-9]+)-)?([0-9]+)(?:\.[0-9]+\.[0-9]+)?\.job")


@dataclass(frozen=True)
class SpoolRecord:
    """One finished job as the epilog saw it; Slurm (sacct) stays the source of its facts."""

    job_id: str
    """SLURM_JOB_ID: the raw id (JobIDRaw), unique even for array tasks."""
    array_job_id: str
    """SLURM_ARRAY_JOB_ID, "" outside arrays."""
    array_task_id: str
    nodes: str
    """Slurm hostlist expression, "" when unknown."""
    cpus_per_node: str
    """SLURM_JOB_CPUS_PER_NODE, e.g. `2,1(x3)`; "" when unknown."""
    partition: str
    account: str
    user: str
    uid: int | None
    exit_code: str
    """`code:signal` as sacct's ExitCode shows it, "" when unknown."""
    cluster: str
    epilog_time: int
    """Epoch seconds when the epilog ran (the file's mtime if the epilog had none)."""
    path: str
    inode: int = field(default=0, compare=False, repr=False)
    """Inode read, so ack() never removes a newer file that took the same name."""
    start_time: int | None = None
    """SLURM_JOB_START_TIME (23.02+): sacct's Start, known before slurmdbd has it; None if unset."""
    end_time: int | None = None
    """SLURM_JOB_END_TIME (23.02+): sacct's End; None if unset (22.05, version 1 records)."""
    het_job_id: str = ""
    """SLURM_HET_JOB_ID for a het job component (its leader's raw id), "" otherwise."""
    het_job_offset: str = ""
    sluid: str = ""
    """SLURM_JOB_SLUID (25.11+), the cluster-unique job id; "" where unset."""
    version: int = 1

    @property
    def job_id_key(self) -> str:
        """The id for the ledger, `sacctmgr ... where jobid=` and sacct's JobIDRaw.

        SLURM_JOB_ID is already the raw id for array tasks (`1234_5` may be raw 1239), so
        the key is `job_id`, never the display id.
        """
        return self.job_id

    @property
    def display_id(self) -> str:
        """The id users see: `1234_5` for an array task, else the raw id."""
        if self.array_job_id:
            return f"{self.array_job_id}_{self.array_task_id}"
        if self.het_job_id:
            return f"{self.het_job_id}+{self.het_job_offset}"
        return self.job_id

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def hosts(self) -> tuple[str, ...]:
        return expand(self.nodes) if self.nodes else ()

    def cpus(self) -> list[int]:
        return expand_cpus_per_node(self.cpus_per_node) if self.cpus_per_node else []


@dataclass(frozen=True)
class DeadLetter:
    """A spool file that could not be used, now in `<dir>/dead/` (or stuck, if `moved` is False)."""

    path: str
    reason: str
    moved: bool = True


def job_id_key(record: SpoolRecord) -> str:
    """Module-level spelling of SpoolRecord.job_id_key for callers holding many records."""
    return record.job_id_key


def expand_cpus_per_node(text: str) -> list[int]:
    """`2,1(x3)` -> [2, 1, 1, 1]: Slurm's run-length form of CPUs held on each node."""
    out: list[int] = []
    for item in text.split(","):
        m = _CPUS_ITEM.fullmatch(item.strip())
        if not m:
            raise JobInputError(f"cpus per node {text[:80]!r}: bad item {item[:40]!r}")
        count = int(m.group(2) or 1)
        if count < 1 or len(out) + count > MAX_HOSTS:
            raise JobInputError(f"cpus per node {text[:80]!r}: bad repeat count {count}")
        out.extend([int(m.group(1))] * count)
    return out


def _job_hint(path: str) -> str:
    m = _NAME.fullmatch(os.path.basename(path))
    return f" (job {m.group(3)})" if m else ""


def parse_record(data: bytes, path: str, mtime: float = 0.0, inode: int = 0) -> SpoolRecord:
    """Read one record; raises JobInputError naming the file and job on any deviation."""
    where = f"spool record {path}{_job_hint(path)}"
    if len(data) > MAX_BYTES:
        raise JobInputError(f"{where}: larger than {MAX_BYTES} bytes")
    text = data.decode("utf-8", errors="replace")
    if not text.endswith("\n"):
        raise JobInputError(f"{where}: truncated (no final newline)")
    lines = text[:-1].split("\n")
    keys = READ_VERSIONS.get(lines[0])
    if keys is None:
        if lines[0].startswith("carbond-spool "):
            raise JobInputError(f"{where}: unknown version {lines[0][:40]!r}")
        raise JobInputError(f"{where}: not a carbond spool record")
    if len(lines) < 2 or lines[-1] != END_LINE:
        raise JobInputError(f"{where}: truncated (no 'end' line)")
    values = _read_pairs(lines[1:-1], where, keys)
    return _build(values, path, mtime, inode, where, int(lines[0].rpartition(" ")[2]))


def _read_pairs(lines: list[str], where: str, keys: tuple[str, ...] = KEYS) -> dict[str, str]:
    values: dict[str, str] = {}
    for no, line in enumerate(lines, start=2):
        key, sep, value = line.partition("=")
        if not sep or key not in keys:
            raise JobInputError(f"{where}: line {no}: unknown key {key[:40]!r}")
        if key in values:
            raise JobInputError(f"{where}: line {no}: repeated key {key!r}")
        if _CONTROL.search(value):
            raise JobInputError(f"{where}: line {no}: control character in {key}")
        values[key] = value
    missing = [k for k in keys if k not in values]
    if missing:
        raise JobInputError(f"{where}: missing keys {', '.join(missing)}")
    return values


def _build(v: dict[str, str], path: str, mtime: float, inode: int, where: str, version: int = 1) -> SpoolRecord:
    if not _DIGITS.fullmatch(v["job_id"]) or int(v["job_id"]) == 0:
        raise JobInputError(f"{where}: job_id {v['job_id'][:40]!r} is not a job id")
    _check_pair(v, "array_job_id", "array_task_id", "array ids", where)
    _check_pair(v, "het_job_id", "het_job_offset", "het job ids", where)
    if v.get("array_job_id") and v.get("het_job_id"):
        raise JobInputError(f"{where}: both array and het job ids")
    for key, pattern in (("uid", _DIGITS), ("exit_code", _EXIT), ("epilog_time", _DIGITS), ("start_time", _DIGITS),
                         ("end_time", _DIGITS), ("sluid", _SLUID)):
        if v.get(key) and not pattern.fullmatch(v[key]):
            raise JobInputError(f"{where}: bad {key} {v[key][:40]!r}")
    start, end = (int(v[k]) if v.get(k) else None for k in ("start_time", "end_time"))
    if start is not None and end is not None and end < start:
        raise JobInputError(f"{where}: end_time {end} before start_time {start}")
    _check_nodes(v["nodes"], v["cpus_per_node"], where)
    return SpoolRecord(
        job_id=v["job_id"],
        array_job_id=v["array_job_id"],
        array_task_id=v["array_task_id"],
        nodes=v["nodes"],
        cpus_per_node=v["cpus_per_node"],
        partition=v["partition"],
        account=v["account"],
        user=v["user"],
        uid=int(v["uid"]) if v["uid"] else None,
        exit_code=v["exit_code"],
        cluster=v["cluster"],
        epilog_time=int(v["epilog_time"]) if v["epilog_time"] else int(mtime),
        path=path,
        inode=inode,
        start_time=start,
        end_time=end,
        het_job_id=v.get("het_job_id", ""),
        het_job_offset=v.get("het_job_offset", ""),
        sluid=v.get("sluid", ""),
        version=version,
    )


def _check_pair(v: dict[str, str], first: str, second: str, what: str, where: str) -> None:
    """Two ids that come together (array job and task, het job and offset): both digits, or both empty."""
    a, b = v.get(first, ""), v.get(second, "")
    if (a or b) and not (_DIGITS.fullmatch(a) and _DIGITS.fullmatch(b)):
        raise JobInputError(f"{where}: bad {what} {a[:20]!r}, {b[:20]!r}")


def _check_nodes(nodes: str, cpus: str, where: str) -> None:
    try:
        hosts = expand(nodes) if nodes else ()
    except HostlistError as e:
        raise JobInputError(f"{where}: {e}") from None
    try:
        counts = expand_cpus_per_node(cpus) if cpus else []
    except JobInputError as e:
        raise JobInputError(f"{where}: {e}") from None
    if hosts and counts and len(hosts) != len(counts):
        raise JobInputError(f"{where}: {len(hosts)} nodes but cpus_per_node {cpus[:80]!r} has {len(counts)}")


def read_record(path: str) -> SpoolRecord:
    """Open without following symlinks or blocking on a FIFO, then parse."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise JobInputError(f"spool record {path}{_job_hint(path)}: not a regular file")
        chunks, size = [], 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return parse_record(b"".join(chunks), path, st.st_mtime, st.st_ino)


class Spool:
    """The daemon's view of the spool directory: list, acknowledge, dead-letter."""

    def __init__(self, directory: str | os.PathLike[str], clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(directory)
        self.dead_dir = self.dir / DEAD
        self.clock = clock
        self.names: set[str] = set()
        """File names of the records seen by the last pending()."""

    def _scan(self) -> tuple[list[os.DirEntry[str]], list[os.DirEntry[str]]]:
        """One scandir: ready records (`*.job`) and epilog temp files ('.'-prefixed)."""
        ready, temps = [], []
        try:
            with os.scandir(self.dir) as it:
                for e in it:
                    if e.name.startswith("."):
                        temps.append(e)
                    elif e.name.endswith(SUFFIX):
                        ready.append(e)
        except OSError as e:
            raise SpoolUnavailable(f"spool directory {self.dir}: {e.strerror or e}") from None
        return ready, temps

    def backlog(self) -> tuple[int, float]:
        """(records waiting, age in seconds of the oldest); one scandir and a stat per record."""
        count, oldest = 0, None
        for entry in self._scan()[0]:
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue  # acknowledged while we looked
            count += 1
            oldest = mtime if oldest is None else min(oldest, mtime)
        return count, (max(0.0, self.clock() - oldest) if oldest is not None else 0.0)

    def pending(self, limit: int | None = None, skip: Callable[[str], bool] | None = None
                ) -> tuple[list[SpoolRecord], list[DeadLetter]]:
        """Records waiting, oldest first, and the files just dead-lettered.

        `skip(name)` is asked before a file is even stat'ed (records in backoff cost a set lookup),
        and `limit` bounds how many of the rest are read, so records that wait never hold back
        newer ones: every pass reads the oldest records that are due, however many are waiting.
        """
        ready, temps = self._scan()
        self.names = {e.name for e in ready}
        stamped = []
        for entry in ready:
            if skip is not None and skip(entry.name):
                continue
            try:
                stamped.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
            except FileNotFoundError:
                continue
        stamped.sort()
        if limit is not None:
            stamped = stamped[:limit]
        records, bad = [], []
        for _, name in stamped:
            path = str(self.dir / name)
            try:
                records.append(read_record(path))
            except FileNotFoundError:
                continue
            except (JobInputError, OSError) as e:
                reason = str(e) if isinstance(e, JobInputError) else f"spool record {path}: {e.strerror or e}"
                bad.append(self._bury(path, reason))
        self._sweep_temps(temps)
        records.sort(key=lambda r: (r.epilog_time, int(r.job_id), r.path))
        return records, bad

    def job_ids(self) -> set[str]:
        """Job ids of every record seen by the last pending() (from the file names, no reads)."""
        out = set()
        for name in self.names:
            m = _NAME.fullmatch(name)
            if m:
                out.add(m.group(3))
        return out

    def ack(self, record: SpoolRecord) -> bool:
        """Remove the record once its job is in the ledger; False if it was gone or replaced."""
        try:
            if record.inode and os.stat(record.path, follow_symlinks=False).st_ino != record.inode:
                return False  # a newer record took the name: keep it for the next pass
            os.unlink(record.path)
        except FileNotFoundError:
            return False
        return True

    def dead_letter(self, record: SpoolRecord, reason: str) -> DeadLetter:
        """Move a record that failed for good into `dead/`, with the reason beside it."""
        return self._bury(record.path, reason)

    def dead_count(self) -> int:
        """Dead letters waiting for an operator (for the metrics gauge)."""
        try:
            with _dir(self.dir) as spool_fd, _dead_dir(spool_fd, self.dead_dir, create=False) as dead_fd, \
                    os.scandir(dead_fd) as it:
                return sum(1 for e in it if e.name.endswith(SUFFIX) and not e.name.startswith("."))
        except FileNotFoundError:
            return 0

    def _bury(self, path: str, reason: str) -> DeadLetter:
        """Copy the record into dead/ as a file the daemon owns, its reason first, then remove it.

        A record that is not a regular file (a planted link, a FIFO) cannot be copied: the entry
        itself is renamed, which never follows it.
        """
        reason = " ".join(reason.split()) or "no reason given"
        name = os.path.basename(path)
        try:
            with _dir(self.dir) as spool_fd, _dead_dir(spool_fd, self.dead_dir) as dead_fd:
                target = _free_name(dead_fd, name)
                _write_new(dead_fd, target + REASON_SUFFIX, f"{reason}\ndead_at={int(self.clock())}\n".encode())
                copied = _read_regular(spool_fd, name)
                if copied is None:
                    os.rename(name, target, src_dir_fd=spool_fd, dst_dir_fd=dead_fd)
                else:
                    data, inode = copied
                    _write_new(dead_fd, target, data)
                    if os.stat(name, dir_fd=spool_fd, follow_symlinks=False).st_ino == inode:
                        os.unlink(name, dir_fd=spool_fd)
        except OSError as e:
            log.error("cannot dead-letter %s (%s): %s", path, reason, e.strerror or e)
            return DeadLetter(path, reason, moved=False)
        log.warning("dead-lettered %s: %s", self.dead_dir / target, reason)
        return DeadLetter(str(self.dead_dir / target), reason)

    def _sweep_temps(self, temps: list[os.DirEntry[str]]) -> None:
        """Remove temp files of epilogs killed mid-write (older than STALE_TEMP_SECONDS)."""
        cutoff = self.clock() - STALE_TEMP_SECONDS
        for e in temps:
            if not e.name.endswith(".tmp"):
                continue
            try:
                if e.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(e.path)
                    log.warning("removed stale epilog temp file %s", e.path)
            except FileNotFoundError:
                pass
            except OSError as err:
                log.error("cannot remove stale temp file %s: %s", e.path, err)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@contextmanager
def _dir(name: str | os.PathLike[str], dir_fd: int | None = None, follow: bool = True) -> Iterator[int]:
    """A directory descriptor; with follow=False a link in its place fails (ELOOP), never followed."""
    fd = os.open(name, _DIR_FLAGS | (0 if follow else os.O_NOFOLLOW), dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _dead_dir(spool_fd: int, shown: Path, create: bool = True) -> Iterator[int]:
    """dead/ inside the spool, created if missing; a link or a file in its place is refused."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(DEAD, 0o750, dir_fd=spool_fd)
    try:
        fd = os.open(DEAD, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=spool_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(e.errno, f"{shown} is not a directory (a symbolic link?): refused, nothing "
                                   f"is written through it; remove it (the daemon recreates it)") from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def _free_name(dir_fd: int, name: str) -> str:
    """`name`, or `<stem>.<ns>.job` when anything (even a dangling link) already has it."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return name
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    return f"{stem}.{time.time_ns()}{SUFFIX}"


def _read_regular(dir_fd: int, name: str) -> tuple[bytes, int] | None:
    """(content, inode) of a regular file of at most MAX_BYTES, never through a link; else None."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO, errno.EACCES):
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
            return None
        chunks, size = [], 0
        while size <= MAX_BYTES and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), st.st_ino
    finally:
        os.close(fd)


def _write_new(dir_fd: int, name: str, data: bytes) -> None:
    """Write `name` in dir_fd atomically: an exclusive, link-refusing temp file, then a rename
    (which replaces whatever has the name, a link included, never its target)."""
    tmp = f".{name}.{os.getpid()}.{time.time_ns()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
