"""The persistent intensity cache: one sqlite file in state_dir, shared by the daemon and the CLI.

WAL mode lets one process write while others read; writes take the lock up front
(BEGIN IMMEDIATE) and wait on a busy timeout, so two processes never see "database is locked".
Rows are keyed by (provider cache_key, slot); `value` NULL records "the provider had nothing".
A cache that fails (a corrupt or unwritable file) is a CacheError, which IntensitySource turns
into a warning: it is only a cache, so it is bypassed, never a reason to refuse a job.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Mapping
from typing import NamedTuple

from ..errors import IntensityUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS intensity (
    key TEXT NOT NULL,
    slot INTEGER NOT NULL,
    value REAL,
    kind TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    PRIMARY KEY (key, slot)
) WITHOUT ROWID
"""


class CacheError(IntensityUnavailable):
    """The intensity cache cannot be opened, read or written (an outage at worst, never a poison record)."""


class Entry(NamedTuple):
    value: float | None
    kind: str
    fetched_at: float


class IntensityCache:
    """sqlite at `path`, or in memory when `path` is None."""

    def __init__(self, path: str | None, timeout: float = 30.0) -> None:
        self.path = path or ":memory:"
        self._lock = threading.Lock()
        try:
            if path:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            if path:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot open the intensity cache {self.path}: {exc}") from None

    def get(self, key: str, start: int, end: int) -> dict[int, Entry]:
        """Rows of `key` with start <= slot < end."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT slot, value, kind, fetched_at FROM intensity WHERE key = ? AND slot >= ? AND slot < ?",
                    (key, start, end),
                ).fetchall()
            except (sqlite3.Error, OverflowError) as exc:
                raise CacheError(f"cannot read the intensity cache {self.path}: {exc}") from None
        return {slot: Entry(value, kind, fetched_at) for slot, value, kind, fetched_at in rows}

    def put(self, key: str, entries: Mapping[int, Entry]) -> None:
        """Insert or replace, all in one transaction."""
        rows = [(key, slot, e.value, e.kind, e.fetched_at) for slot, e in entries.items()]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO intensity (key, slot, value, kind, fetched_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (key, slot) DO UPDATE SET value = excluded.value, kind = excluded.kind, "
                    "fetched_at = excluded.fetched_at",
                    rows,
                )
                self._db.execute("COMMIT")
            except (sqlite3.Error, OverflowError) as exc:
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the connection is closed or broken: the transaction is gone with it
                raise CacheError(f"cannot write the intensity cache {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
