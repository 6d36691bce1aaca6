"""The job ledger: one sqlite row per job carbond has seen through, so nothing counts twice.

The daemon's order of work makes every crash point safe:

    record(entry)          INSERT (the dedup); the job now counts in totals() and the metrics
    delete the spool file  the ledger, not the spool, is now the record of truth
    sacctmgr write         idempotent: merging the same token again changes nothing
    mark_written(job_id)   the acknowledgement

A restart or a repeated spool record finds the row (record() returns False: count nothing);
a crash between the write and the acknowledgement leaves the row in pending_writes(), and
the write is simply done again. Counted values never change after the INSERT, so totals()
always equals what the Prometheus counters were incremented by.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from .errors import CarbondError


class State(StrEnum):
    """A job's state in the ledger (stored as its text)."""

    ACCOUNTED = "accounted"          # counted; no comment write wanted (e.g. backfill without --write)
    NOT_STARTED = "not-started"      # never ran: no start time or no nodes
    ZERO_LENGTH = "zero-length"      # ran zero seconds
    DEAD = "dead"                    # given up on before a footprint existed; the reason says why
    PENDING_WRITE = "pending-write"  # counted; the token still has to reach slurmdbd
    WRITTEN = "written"              # counted and the token is in Slurm
    UNWRITABLE = "unwritable"        # counted, never written: the field would be mangled (reason)


ACCOUNTED, NOT_STARTED, ZERO_LENGTH, DEAD = State.ACCOUNTED, State.NOT_STARTED, State.ZERO_LENGTH, State.DEAD
PENDING_WRITE, WRITTEN, UNWRITABLE = State.PENDING_WRITE, State.WRITTEN, State.UNWRITABLE
STATES = (ACCOUNTED, NOT_STARTED, ZERO_LENGTH, DEAD, PENDING_WRITE, WRITTEN, UNWRITABLE)
COUNTED = (ACCOUNTED, PENDING_WRITE, WRITTEN, UNWRITABLE)
"""States whose energy and CO2e are in the totals."""

FILENAME = "ledger.sqlite"
RECOVERED = "recovered"
"""`origin` of a job found by reconciliation: it ended in slurmdbd with no spool record."""

SKIP_REASONS = ("would-mangle", "foreign-payload", "refused", "gave-up", "too-long")
"""Why a counted job has no token: the field would be damaged, holds another tool's payload,
sacctmgr refused the write (permissions, ambiguous id), carbond gave up retrying it, or the
field with the token is longer than one command-line argument may be (E2BIG, 128 KiB)."""
EVENT_OUTCOME = "event:outcome"
EVENT_SKIPPED = "event:skipped"
STATE = "state"
"""`counts` names: jobs that reached an outcome and writes skipped, counted when they happen and never
taken back (the `_total` counters: monotonic), and the jobs in each state now (the gauges)."""


def skip_label(reason: str | None) -> str:
    """The fixed label for an UNWRITABLE row's reason (older ledgers stored free text)."""
    text = (reason or "").strip()
    if text in SKIP_REASONS:
        return text
    return "refused" if "refused" in text else "gave-up"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    cluster     TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ({", ".join(repr(str(s)) for s in STATES)})),
    energy_j    REAL NOT NULL DEFAULT 0,
    co2e_g      REAL NOT NULL DEFAULT 0,
    partition   TEXT NOT NULL DEFAULT '',
    account     TEXT NOT NULL DEFAULT '',
    user        TEXT NOT NULL DEFAULT '',
    end_time    REAL,
    token       TEXT,
    recorded_at REAL NOT NULL,
    written_at  REAL,
    reason      TEXT,
    pue         REAL,
    origin      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (cluster, job_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (state) WHERE state = 'pending-write';
CREATE TABLE IF NOT EXISTS gpu_indices (
    cluster     TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    node        TEXT NOT NULL,
    indices     TEXT NOT NULL,
    PRIMARY KEY (cluster, job_id, node)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS suspends (
    cluster     TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    start       REAL NOT NULL,
    end         REAL,
    PRIMARY KEY (cluster, job_id, start)
) WITHOUT ROWID;
"""
_OUTCOME = "CASE WHEN {r}.state IN ({counted}) THEN 'accounted' ELSE {r}.state END"


def _summary_sql() -> str:
    """Running totals kept by triggers in the same transaction as every change to `jobs`, by any
    writer (the daemon, backfill, an operator's sqlite3), so reading them costs O(groups), never a
    scan of every job. Energy moves only when a row's outcome or labels change (never on
    pending -> written), so the sums of counted jobs only ever grow."""
    counted = ", ".join(repr(str(s)) for s in COUNTED)
    new, old = _OUTCOME.format(r="NEW", counted=counted), _OUTCOME.format(r="OLD", counted=counted)
    add = (f"INSERT INTO sums (cluster, outcome, partition, account, user, jobs, joules, grams) VALUES "
           f"(NEW.cluster, {new}, NEW.partition, NEW.account, NEW.user, 1, NEW.energy_j, NEW.co2e_g) "
           f"ON CONFLICT (cluster, outcome, partition, account, user) DO UPDATE SET jobs = jobs + 1, "
           f"joules = joules + excluded.joules, grams = grams + excluded.grams;")
    sub = (f"UPDATE sums SET jobs = jobs - 1, joules = joules - OLD.energy_j, grams = grams - OLD.co2e_g "
           f"WHERE cluster = OLD.cluster AND outcome = {old} AND partition = OLD.partition "
           f"AND account = OLD.account AND user = OLD.user;")

    def count(row: str, name: str, label: str, delta: int) -> str:
        return (f"INSERT INTO counts (cluster, name, label, n) VALUES ({row}.cluster, '{name}', {label}, {delta}) "
                f"ON CONFLICT (cluster, name, label) DO UPDATE SET n = n + {delta};")

    skip_new, skip_old = "COALESCE(NEW.reason, '')", "COALESCE(OLD.reason, '')"
    moved = (f"{new} IS NOT {old} OR NEW.partition IS NOT OLD.partition OR NEW.account IS NOT OLD.account "
             f"OR NEW.user IS NOT OLD.user OR NEW.energy_j IS NOT OLD.energy_j OR NEW.co2e_g IS NOT OLD.co2e_g "
             f"OR NEW.cluster IS NOT OLD.cluster")
    return f"""
CREATE TABLE IF NOT EXISTS sums (
    cluster TEXT NOT NULL, outcome TEXT NOT NULL, partition TEXT NOT NULL, account TEXT NOT NULL,
    user TEXT NOT NULL, jobs INTEGER NOT NULL, joules REAL NOT NULL, grams REAL NOT NULL,
    PRIMARY KEY (cluster, outcome, partition, account, user)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counts (
    cluster TEXT NOT NULL, name TEXT NOT NULL, label TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (cluster, name, label)) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS jobs_sums_insert AFTER INSERT ON jobs BEGIN
    {add}
END;
CREATE TRIGGER IF NOT EXISTS jobs_sums_delete AFTER DELETE ON jobs BEGIN
    {sub}
END;
CREATE TRIGGER IF NOT EXISTS jobs_sums_update AFTER UPDATE ON jobs WHEN {moved} BEGIN
    {sub}
    {add}
END;
CREATE TRIGGER IF NOT EXISTS jobs_skips_insert AFTER INSERT ON jobs WHEN NEW.state = 'unwritable' BEGIN
    {count("NEW", "skipped", skip_new, 1)}
END;
CREATE TRIGGER IF NOT EXISTS jobs_skips_delete AFTER DELETE ON jobs WHEN OLD.state = 'unwritable' BEGIN
    {count("OLD", "skipped", skip_old, -1)}
END;
CREATE TRIGGER IF NOT EXISTS jobs_skips_update AFTER UPDATE ON jobs
    WHEN (OLD.state = 'unwritable' OR NEW.state = 'unwritable')
     AND (OLD.state IS NOT NEW.state OR {skip_old} IS NOT {skip_new}) BEGIN
    INSERT INTO counts (cluster, name, label, n) SELECT OLD.cluster, 'skipped', {skip_old}, -1
        WHERE OLD.state = 'unwritable' ON CONFLICT (cluster, name, label) DO UPDATE SET n = n - 1;
    INSERT INTO counts (cluster, name, label, n) SELECT NEW.cluster, 'skipped', {skip_new}, 1
        WHERE NEW.state = 'unwritable' ON CONFLICT (cluster, name, label) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS jobs_recovered_insert AFTER INSERT ON jobs WHEN NEW.origin = '{RECOVERED}' BEGIN
    {count("NEW", "recovered", "''", 1)}
END;
CREATE TRIGGER IF NOT EXISTS jobs_recovered_delete AFTER DELETE ON jobs WHEN OLD.origin = '{RECOVERED}' BEGIN
    {count("OLD", "recovered", "''", -1)}
END;
CREATE TRIGGER IF NOT EXISTS jobs_events_insert AFTER INSERT ON jobs BEGIN
    {count("NEW", STATE, "NEW.state", 1)}
    {count("NEW", EVENT_OUTCOME, new, 1)}
    INSERT INTO counts (cluster, name, label, n) SELECT NEW.cluster, '{EVENT_SKIPPED}', {skip_new}, 1
        WHERE NEW.state = 'unwritable' ON CONFLICT (cluster, name, label) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS jobs_events_delete AFTER DELETE ON jobs BEGIN
    {count("OLD", STATE, "OLD.state", -1)}
END;
CREATE TRIGGER IF NOT EXISTS jobs_events_update AFTER UPDATE ON jobs
    WHEN OLD.state IS NOT NEW.state OR OLD.cluster IS NOT NEW.cluster OR {skip_old} IS NOT {skip_new} BEGIN
    {count("OLD", STATE, "OLD.state", -1)}
    {count("NEW", STATE, "NEW.state", 1)}
    INSERT INTO counts (cluster, name, label, n) SELECT NEW.cluster, '{EVENT_SKIPPED}', {skip_new}, 1
        WHERE NEW.state = 'unwritable' AND (OLD.state IS NOT 'unwritable' OR {skip_old} IS NOT {skip_new})
        ON CONFLICT (cluster, name, label) DO UPDATE SET n = n + 1;
END;
"""


_FILL_SUMMARY = f"""
INSERT INTO sums (cluster, outcome, partition, account, user, jobs, joules, grams)
    SELECT cluster, CASE WHEN state IN ({", ".join(repr(str(s)) for s in COUNTED)}) THEN 'accounted' ELSE state END AS o,
           partition, account, user, COUNT(*), SUM(energy_j), SUM(co2e_g)
    FROM jobs WHERE true GROUP BY cluster, o, partition, account, user;
INSERT INTO counts (cluster, name, label, n)
    SELECT cluster, 'skipped', COALESCE(reason, ''), COUNT(*) FROM jobs WHERE state = 'unwritable'
    GROUP BY cluster, COALESCE(reason, '');
INSERT INTO counts (cluster, name, label, n)
    SELECT cluster, 'recovered', '', COUNT(*) FROM jobs WHERE origin = '{RECOVERED}' GROUP BY cluster;
"""

_FILL_EVENTS = f"""
INSERT INTO counts (cluster, name, label, n)
    SELECT cluster, '{STATE}', state, COUNT(*) FROM jobs WHERE true GROUP BY cluster, state
    ON CONFLICT (cluster, name, label) DO UPDATE SET n = excluded.n;
INSERT INTO counts (cluster, name, label, n)
    SELECT cluster, '{EVENT_OUTCOME}', CASE WHEN state IN ({", ".join(repr(str(s)) for s in COUNTED)}) THEN 'accounted'
           ELSE state END AS o, COUNT(*) FROM jobs WHERE true GROUP BY cluster, o
    ON CONFLICT (cluster, name, label) DO UPDATE SET n = max(n, excluded.n);
INSERT INTO counts (cluster, name, label, n)
    SELECT cluster, '{EVENT_SKIPPED}', COALESCE(reason, ''), COUNT(*) FROM jobs WHERE state = 'unwritable'
    GROUP BY cluster, COALESCE(reason, '')
    ON CONFLICT (cluster, name, label) DO UPDATE SET n = max(n, excluded.n);
"""
"""A ledger from before the event counts: they start from its rows (what it can still tell)."""

_MIGRATIONS = (("pue", "REAL"), ("origin", "TEXT NOT NULL DEFAULT ''"))
"""Columns added after the first release: ALTER TABLE ... ADD COLUMN on a ledger that lacks them."""



class LedgerError(CarbondError):
    """The ledger cannot be opened or used; names the file."""


FILE_MODE = 0o640
DIR_MODE = 0o750
"""Modes of the ledger and of a state directory carbond creates, whatever the umask."""
_MAGIC = b"SQLite format 3\x00"
_SIDE_FILES = ("-wal", "-shm", "-journal")


def _recovery(path: Path) -> str:
    return (f"carbond will not start over it, which would silently lose the history of every job it holds. "
            f"Restore {path} from a backup (docs/operations.md, \"The ledger\"), or, to start an empty ledger "
            f"knowingly, move it aside: mv {path} {path}.broken")


def check_file(path: Path) -> bool:
    """Whether the ledger file exists; raises LedgerError for one that must never be opened.

    A missing ledger is new (created on first start). An existing one that is empty, too short
    or not an sqlite database (a crash during a full disk, a bad restore) is refused: sqlite
    would take an empty file for a new, empty ledger. A symbolic link (the file or its -wal,
    -shm, -journal) is refused too: carbond never follows one in its state directory.
    """
    for p in (path, *(path.with_name(path.name + s) for s in _SIDE_FILES)):
        if p.is_symlink():
            raise LedgerError(f"the ledger {p} is a symbolic link: carbond never follows links in its state "
                              f"directory; replace it by the file itself")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise LedgerError(f"cannot open the ledger {path}: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise LedgerError(f"the ledger {path} is not a regular file")
    if st.st_size == 0:
        raise LedgerError(f"the ledger {path} is empty (0 bytes): {_recovery(path)}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            head = os.read(fd, len(_MAGIC))
        finally:
            os.close(fd)
    except OSError as exc:
        raise LedgerError(f"cannot open the ledger {path}: {exc}") from None
    if head != _MAGIC:
        raise LedgerError(f"the ledger {path} is not an sqlite database ({st.st_size} bytes): {_recovery(path)}")
    return True


def integrity(db: sqlite3.Connection, path: Path) -> None:
    """PRAGMA quick_check at start: a truncated or damaged ledger is refused, never written on."""
    try:
        rows = db.execute("PRAGMA quick_check(5)").fetchall()
    except sqlite3.DatabaseError as exc:
        rows = [(str(exc),)]
    problems = [str(r[0]) for r in rows if r and r[0] != "ok"]
    if problems:
        raise LedgerError(f"the ledger {path} is damaged or truncated (sqlite quick_check: "
                          f"{'; '.join(problems)[:300]}): {_recovery(path)}")


def make_state_dir(path: Path) -> None:
    """The state directory, created 0750 whatever the umask. An existing one is left as it is (it
    may be a directory the operator chose); the ledger's own files are 0640 in any case."""
    if path.is_symlink():
        raise LedgerError(f"the state directory {path} is a symbolic link: use the directory itself")
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE, follow_symlinks=False)


def tighten(path: Path, mode: int) -> None:
    """Take away the permission bits beyond `mode` from a file or directory this user owns."""
    st = os.lstat(path)
    extra = stat.S_IMODE(st.st_mode) & ~mode & 0o777
    if extra and st.st_uid == os.geteuid() and not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~extra, follow_symlinks=False)


def _create(path: Path) -> None:
    """A new, empty ledger file at `path`, 0640 whatever the umask, made whole before it appears
    (built under a temporary name, then linked into place): a crash never leaves an empty ledger."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    for p in (tmp, *(tmp.with_name(tmp.name + s) for s in _SIDE_FILES)):
        if os.path.lexists(p):
            os.unlink(p)  # a stale one from a crash (unlink never follows a link)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.executescript(_SCHEMA)
        finally:
            db.close()
        try:
            os.link(tmp, path)  # never replaces: another process that made it first wins
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def columns_of(db: sqlite3.Connection) -> set[str]:
    """The jobs table's columns (empty before it exists): what a ledger of any release has."""
    return {row[1] for row in db.execute("PRAGMA table_info(jobs)")}


def add_columns(db: sqlite3.Connection, columns: Iterable[tuple[str, str]]) -> list[str]:
    """ALTER TABLE jobs ADD COLUMN for each (name, declaration) the ledger lacks; the names added.

    Another process may add the same column meanwhile (its own migration): that is no error.
    """
    have = columns_of(db)
    added = []
    for name, decl in columns:
        if name in have:
            continue
        try:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
            added.append(name)
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise
    return added


@dataclass(frozen=True)
class Entry:
    """One job's outcome. Energy and CO2e are zero for states that are not COUNTED."""

    job_id: str
    state: str
    energy_j: float = 0.0
    co2e_g: float = 0.0
    partition: str = ""
    account: str = ""
    user: str = ""
    end_time: float | None = None
    token: str | None = None
    """The token to write (PENDING_WRITE) or written; re-merged into the current field on retry."""
    reason: str | None = None
    recorded_at: float = 0.0
    written_at: float | None = None
    pue: float | None = None
    """The PUE the footprint was computed with (None: not recorded, e.g. a ledger from before it was)."""
    origin: str = ""
    """Where the job came from: "" (the spool), "recovered" (reconciliation), or another writer's name."""

    @classmethod
    def from_footprint(cls, job: object, fp: object, token: str | None = None) -> Entry:
        """The entry for an engine result: `job` a carbond.jobs.Job, `fp` its JobFootprint.

        status ok -> PENDING_WRITE when there is a token to write, else ACCOUNTED;
        not-started / zero-length as such. An "error" footprint is not an outcome yet: the
        daemon retries it and, once it gives up, records Entry.dead(...).
        """
        status = getattr(fp, "status", "ok")
        common = dict(job_id=str(getattr(job, "job_id", "")), partition=getattr(job, "partition", ""),
                      account=getattr(job, "account", ""), user=getattr(job, "user", ""),
                      end_time=getattr(job, "end", None))
        if status == "ok":
            return cls(state=PENDING_WRITE if token else ACCOUNTED, energy_j=float(fp.energy_kwh) * 3.6e6,
                       co2e_g=float(fp.co2e_g), token=token, pue=getattr(fp, "pue", None), **common)
        if status in (NOT_STARTED, ZERO_LENGTH):
            return cls(state=status, reason=getattr(fp, "error", None) or None, **common)
        raise LedgerError(f"job {common['job_id']}: a footprint with status {status!r} is not an outcome; "
                          f"retry it or record Entry.dead()")

    @classmethod
    def dead(cls, job_id: str, reason: str, end_time: float | None = None) -> Entry:
        return cls(job_id=job_id, state=DEAD, reason=reason, end_time=end_time)

    @property
    def counted(self) -> bool:
        return self.state in COUNTED

    @property
    def outcome(self) -> str:
        """The carbond_jobs_total label: 'accounted' for every counted state, else the state."""
        return ACCOUNTED if self.counted else self.state


@dataclass(frozen=True)
class Totals:
    joules: float
    grams: float
    jobs: int


@dataclass
class Summary:
    """What the metrics export, read from the ledger's running totals."""

    totals: dict[tuple[str, str, str], Totals] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    """Jobs by outcome now (a dead job re-queued and accounted moves from dead to accounted)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """UNWRITABLE jobs now, by reason (one re-published leaves it)."""
    recovered: int = 0
    states: dict[str, int] = field(default_factory=dict)
    """Jobs in each ledger state now."""
    outcome_events: dict[str, int] = field(default_factory=dict)
    """Jobs that reached each outcome, ever (never decreases: carbond_jobs_total)."""
    skip_events: dict[str, int] = field(default_factory=dict)
    """Writes skipped, by reason, ever (never decreases: carbond_writes_skipped_total)."""


_COLUMNS = ("job_id", "state", "energy_j", "co2e_g", "partition", "account", "user", "end_time", "token",
            "reason", "recorded_at", "written_at", "pue", "origin")


class Ledger:
    """The ledger of one cluster in `state_dir`. Thread-safe; one writer process at a time."""

    def __init__(self, state_dir: str | Path, cluster: str, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(state_dir) / FILENAME
        self.cluster = cluster
        self._clock = clock
        self._lock = threading.Lock()
        try:
            make_state_dir(self.path.parent)
            if not check_file(self.path):
                _create(self.path)
                check_file(self.path)
            for p in (self.path, *(self.path.with_name(self.path.name + x) for x in _SIDE_FILES)):
                if p.exists():
                    tighten(p, FILE_MODE)  # a ledger an earlier release (or umask 022) left world-readable
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from None
        try:
            integrity(self._db, self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not just a crash
            self._db.executescript(_SCHEMA)
            self._migrate()
        except (OSError, sqlite3.Error, LedgerError) as exc:
            self._db.close()
            if isinstance(exc, LedgerError):
                raise
            raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from None

    def _migrate(self) -> None:
        """Add columns and the running totals to a ledger written by an earlier carbond, once."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            add_columns(db, _MIGRATIONS)
            fresh = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='sums'").fetchone() is None
            no_events = db.execute("SELECT 1 FROM sqlite_master WHERE type='trigger' "
                                   "AND name='jobs_events_insert'").fetchone() is None
            for statement in _split(_summary_sql()):
                db.execute(statement)
            if fresh:
                for statement in _split(_FILL_SUMMARY):
                    db.execute(statement)
            if no_events:
                for statement in _split(_FILL_EVENTS):
                    db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            _quiet_rollback(db)
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ---------------------------------------------------------------------------

    def record(self, entry: Entry) -> bool:
        """Insert `entry`; False if the job is already there (count nothing then)."""
        return self.record_many([entry])[0]

    def record_many(self, entries: Iterable[Entry]) -> list[bool]:
        """Insert several entries in one transaction (one fsync); per entry: was it new?

        A DEAD row is replaced by a later entry for the same job (an operator re-queued its
        dead letter); any other existing row wins.
        """
        entries = list(entries)
        for e in entries:
            if e.state not in STATES:
                raise LedgerError(f"job {e.job_id}: unknown ledger state {e.state!r}")
        now = self._clock()
        out = []
        with self._transaction() as db:
            for e in entries:
                db.execute("DELETE FROM jobs WHERE cluster=? AND job_id=? AND state=? AND ?<>?",
                           (self.cluster, e.job_id, DEAD, e.state, DEAD))
                cur = db.execute(
                    f"INSERT OR IGNORE INTO jobs (cluster, {', '.join(_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})",
                    (self.cluster, e.job_id, e.state, e.energy_j if e.counted else 0.0,
                     e.co2e_g if e.counted else 0.0, e.partition, e.account, e.user, e.end_time, e.token,
                     e.reason, e.recorded_at or now, e.written_at, e.pue, e.origin),
                )
                out.append(cur.rowcount == 1)
        return out

    def mark_written(self, job_ids: str | Iterable[str], at: float | None = None) -> int:
        """PENDING_WRITE -> WRITTEN; how many rows changed (a repeated ack changes none)."""
        return self._move(job_ids, (PENDING_WRITE,), WRITTEN, written_at=at if at is not None else self._clock())

    def mark_unwritable(self, job_id: str, reason: str) -> bool:
        """PENDING_WRITE -> UNWRITABLE: the footprint stays counted, the field is left alone."""
        return self._move(job_id, (PENDING_WRITE,), UNWRITABLE, reason=reason) == 1

    def mark_pending(self, job_id: str, token: str) -> bool:
        """ACCOUNTED/WRITTEN/UNWRITABLE -> PENDING_WRITE with a new token (a later `backfill --write`)."""
        return self._move(job_id, (ACCOUNTED, WRITTEN, UNWRITABLE), PENDING_WRITE, token=token, reason=None) == 1

    def republish(self, job_id: str) -> bool:
        """UNWRITABLE -> PENDING_WRITE with the token it already has (its dead letter was re-queued)."""
        entry = self.get(job_id)
        if entry is None or entry.state != UNWRITABLE or not entry.token:
            return False
        return self._move(job_id, (UNWRITABLE,), PENDING_WRITE, reason=None) == 1

    # --- suspend intervals (see carbond/suspend.py) ------------------------------------------

    def suspend_started(self, job_id: str, at: float) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO suspends (cluster, job_id, start, end) VALUES (?, ?, ?, NULL)",
                       (self.cluster, job_id, at))

    def suspend_ended(self, job_id: str, at: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE suspends SET end=? WHERE cluster=? AND job_id=? AND end IS NULL",
                       (at, self.cluster, job_id))

    def suspended(self, job_id: str) -> list[tuple[float, float | None]]:
        """The job's recorded suspend intervals, in order (end None: still open when last seen)."""
        with self._lock:
            return self._db.execute("SELECT start, end FROM suspends WHERE cluster=? AND job_id=? ORDER BY start",
                                    (self.cluster, job_id)).fetchall()

    # --- GPU indices (see carbond/gpu_capture.py) ---------------------------------------------

    def record_gpu_indices(self, job_id: str, per_node: dict[str, str]) -> None:
        """The GPU indices a running job holds per node ("0,2"), as slurmctld shows them."""
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO gpu_indices (cluster, job_id, node, indices) VALUES (?, ?, ?, ?)",
                           [(self.cluster, job_id, n, ix) for n, ix in per_node.items()])

    def gpu_indices(self, job_id: str) -> tuple[tuple[str, str], ...]:
        with self._lock:
            return tuple(self._db.execute("SELECT node, indices FROM gpu_indices WHERE cluster=? AND job_id=? "
                                          "ORDER BY node", (self.cluster, job_id)).fetchall())

    def gpu_jobs_captured(self, job_ids: Iterable[str]) -> set[str]:
        ids = list(job_ids)
        if not ids:
            return set()
        with self._lock:
            marks = ",".join("?" * len(ids))
            rows = self._db.execute(f"SELECT DISTINCT job_id FROM gpu_indices WHERE cluster=? AND job_id IN ({marks})",  # noqa: S608
                                    (self.cluster, *ids)).fetchall()
        return {r[0] for r in rows}

    def open_suspends(self) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT job_id FROM suspends WHERE cluster=? AND end IS NULL",
                                    (self.cluster,)).fetchall()
        return {r[0] for r in rows}

    def _move(self, job_ids: str | Iterable[str], frm: tuple[str, ...], to: str, **values: object) -> int:
        ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        sets = ", ".join(f"{k}=?" for k in values)
        marks = ", ".join("?" * len(frm))
        changed = 0
        with self._transaction() as db:
            for job_id in ids:
                cur = db.execute(
                    f"UPDATE jobs SET state=?{', ' + sets if sets else ''} "
                    f"WHERE cluster=? AND job_id=? AND state IN ({marks})",
                    (to, *values.values(), self.cluster, job_id, *frm),
                )
                changed += cur.rowcount
        return changed

    # --- reading ---------------------------------------------------------------------------

    def get(self, job_id: str) -> Entry | None:
        rows = self._select("WHERE cluster=? AND job_id=?", (self.cluster, job_id))
        return rows[0] if rows else None

    def known(self, job_ids: Iterable[str]) -> dict[str, str]:
        """job id -> state for the given jobs already in the ledger (to skip work early)."""
        ids = list(job_ids)
        out: dict[str, str] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            q = f"SELECT job_id, state FROM jobs WHERE cluster=? AND job_id IN ({', '.join('?' * len(chunk))})"
            with self._lock:
                out.update(self._db.execute(q, (self.cluster, *chunk)).fetchall())
        return out

    def pending_writes(self, limit: int | None = None) -> list[Entry]:
        """Counted jobs whose token has not been acknowledged, oldest end first."""
        tail = f" LIMIT {int(limit)}" if limit else ""
        return self._select("WHERE cluster=? AND state=? ORDER BY end_time, job_id" + tail,
                            (self.cluster, PENDING_WRITE))

    def totals(self) -> dict[tuple[str, str, str], Totals]:
        """(partition, account, user) -> joules, grams and jobs over every counted job."""
        q = (f"SELECT partition, account, user, SUM(energy_j), SUM(co2e_g), COUNT(*) FROM jobs "
             f"WHERE cluster=? AND state IN ({', '.join('?' * len(COUNTED))}) GROUP BY partition, account, user")
        with self._lock:
            rows = self._db.execute(q, (self.cluster, *COUNTED)).fetchall()
        return {(p, a, u): Totals(j, g, n) for p, a, u, j, g, n in rows}

    def pue_of(self, job_id: str) -> float | None:
        """The PUE the job was accounted with, or None (not in the ledger, or recorded before PUE was)."""
        entry = self.get(job_id)
        return entry.pue if entry else None

    def recovered_count(self) -> int:
        """Jobs reconciliation found in slurmdbd without a spool record (carbond_jobs_recovered_total)."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE cluster=? AND origin=?",
                                    (self.cluster, RECOVERED)).fetchone()[0]

    def latest_end(self) -> float | None:
        with self._lock:
            return self._db.execute("SELECT MAX(end_time) FROM jobs WHERE cluster=?", (self.cluster,)).fetchone()[0]

    def read(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """A read-only query under the ledger's lock (for tables other modules add: ledger_columns)."""
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def summary(self) -> Summary:
        """Totals, outcomes, skipped writes and recovered jobs from the running totals: O(groups)."""
        with self._lock:
            sums = self._db.execute("SELECT outcome, partition, account, user, jobs, joules, grams FROM sums "
                                    "WHERE cluster=? AND jobs <> 0", (self.cluster,)).fetchall()
            counts = self._db.execute("SELECT name, label, n FROM counts WHERE cluster=? AND n <> 0",
                                      (self.cluster,)).fetchall()
        out = Summary()
        for outcome, p, a, u, n, j, g in sums:
            out.outcomes[outcome] = out.outcomes.get(outcome, 0) + n
            if outcome == ACCOUNTED:
                out.totals[(p, a, u)] = Totals(j, g, n)
        for name, label, n in counts:
            if name == "skipped":
                key = skip_label(label)
                out.skipped[key] = out.skipped.get(key, 0) + n
            elif name == EVENT_SKIPPED:
                key = skip_label(label)
                out.skip_events[key] = out.skip_events.get(key, 0) + n
            elif name == EVENT_OUTCOME:
                out.outcome_events[label] = out.outcome_events.get(label, 0) + n
            elif name == STATE:
                out.states[label] = out.states.get(label, 0) + n
            elif name == RECOVERED:
                out.recovered += n
        return out

    def state_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs WHERE cluster=? GROUP BY state",
                                    (self.cluster,)).fetchall()
        return dict(rows)

    def outcome_counts(self) -> dict[str, int]:
        """carbond_jobs_total by outcome: accounted / not-started / zero-length / dead."""
        out: dict[str, int] = {}
        for state, n in self.state_counts().items():
            key = ACCOUNTED if state in COUNTED else state
            out[key] = out.get(key, 0) + n
        return out

    def skipped_counts(self) -> dict[str, int]:
        """carbond_writes_skipped_total by reason: UNWRITABLE rows, each reason one of SKIP_REASONS."""
        with self._lock:
            rows = self._db.execute("SELECT COALESCE(reason, ''), COUNT(*) FROM jobs WHERE cluster=? AND state=? "
                                    "GROUP BY reason", (self.cluster, UNWRITABLE)).fetchall()
        out: dict[str, int] = {}
        for reason, n in rows:
            label = skip_label(reason)
            out[label] = out.get(label, 0) + n
        return out

    def _select(self, where: str, args: tuple) -> list[Entry]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs {where}", args).fetchall()
        return [Entry(*row) for row in rows]

    def _transaction(self) -> _Transaction:
        return _Transaction(self)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT under the lock; ROLLBACK on any error."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def __enter__(self) -> sqlite3.Connection:
        self._ledger._lock.acquire()
        try:
            self._ledger._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._ledger._lock.release()
            raise LedgerError(f"cannot write the ledger {self._ledger.path}: {exc}") from None
        return self._ledger._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        """COMMIT, or ROLLBACK; a ROLLBACK that fails too (sqlite may already have rolled back,
        e.g. on 'database or disk is full') never hides the first error, which is re-raised as a
        LedgerError naming the file, so the daemon retries it like any outage."""
        db = self._ledger._db
        try:
            if exc_type is None:
                try:
                    db.execute("COMMIT")
                except sqlite3.Error as err:
                    _quiet_rollback(db)
                    raise LedgerError(f"cannot write the ledger {self._ledger.path}: {err}") from None
            else:
                _quiet_rollback(db)
                if isinstance(exc, sqlite3.Error):
                    raise LedgerError(f"cannot write the ledger {self._ledger.path}: {exc}") from None
        finally:
            self._ledger._lock.release()


def _split(script: str) -> list[str]:
    """Statements of a script; a trigger's body (BEGIN ... END;) stays one statement."""
    out, cur = [], ""
    for line in script.strip().splitlines():
        cur += line + "\n"
        if sqlite3.complete_statement(cur):
            out.append(cur.strip())
            cur = ""
    return out


def _quiet_rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the connection is already out of its transaction; the original error is what matters
