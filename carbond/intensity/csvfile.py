"""The `csv` provider: intensity from a local file, header `from,to,intensity`.

Times are ISO 8601 with an explicit UTC offset (`2024-03-31T01:00Z` or `+00:00`; other offsets
are converted), rows cover whole half-hours (half-hourly, hourly or longer) and must not overlap,
values are gCO2e/kWh. Every bad row is reported at once with the file and line. The file is read
again when it changes, so a long-running daemon picks up a corrected file.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from ..errors import ConfigError, IntensityUnavailable
from . import HALF_HOUR, MAX_G_PER_KWH, Reading, check_readings

if TYPE_CHECKING:
    from ..config import IntensityConfig

HEADER = ["from", "to", "intensity"]
MAX_PROBLEMS = 20


@dataclass
class CsvIntensity:
    path: str
    max_value: float = MAX_G_PER_KWH
    name: str = "csv"
    cacheable: bool = False
    _values: dict[int, float] = field(default_factory=dict, repr=False)
    _mtime: int = -1

    @classmethod
    def from_config(cls, ic: IntensityConfig) -> CsvIntensity:
        if not ic.path:
            raise ConfigError(["intensity.path: required by provider csv"])
        provider = cls(ic.path, ic.max_g_per_kwh)
        provider.reload()
        return provider

    @property
    def cache_key(self) -> str:
        return f"{self.name}:{self.path}"

    def fetch(self, start: int, end: int) -> list[Reading]:
        try:
            self.reload()
        except ConfigError as exc:
            # Edited badly while the daemon runs: a ConfigError is for start-up only; at run time the
            # provider is unavailable until the file is fixed, and the daemon retries.
            raise IntensityUnavailable(f"intensity csv {self.path}: {'; '.join(exc.problems)}") from None
        values = self._values
        out = [Reading(s, values[s], "csv") for s in range(start, end, HALF_HOUR) if s in values]
        check_readings(f"csv {self.path}", out, self.max_value)
        return out

    def reload(self) -> None:
        """Read the file when it is new or changed since the last read."""
        try:
            mtime = os.stat(self.path).st_mtime_ns
            if mtime == self._mtime:
                return
            with open(self.path, encoding="utf-8", newline="") as fh:
                self._values = parse(fh, self.path)
        except OSError as exc:
            raise ConfigError([f"intensity.path: cannot read {self.path}: {exc.strerror or exc}"]) from None
        self._mtime = mtime


def parse(lines, path: str) -> dict[int, float]:
    """slot -> gCO2e/kWh; raises ConfigError listing every bad line of `path`."""
    values: dict[int, float] = {}
    owner: dict[int, int] = {}
    problems: list[str] = []
    reader = csv.reader(lines)
    header_seen = False
    for row in reader:
        line = reader.line_num
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if not header_seen:
            header_seen = True
            if [c.strip().lower() for c in row] != HEADER:
                problems.append(f"line {line}: header must be {','.join(HEADER)}, got {','.join(row)}")
                break
            continue
        try:
            start, end, value = _row(row)
        except ValueError as exc:
            problems.append(f"line {line}: {exc}")
            continue
        for s in range(start, end, HALF_HOUR):
            if s in owner:
                problems.append(f"line {line}: overlaps line {owner[s]}")
                break
            owner[s], values[s] = line, value
    if not header_seen and not problems:
        problems.append(f"line 1: empty file, expected the header {','.join(HEADER)}")
    if problems:
        more = len(problems) - MAX_PROBLEMS
        shown = problems[:MAX_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])
        raise ConfigError([f"intensity.path: {path} {p}" for p in shown])
    return values


def _row(row: list[str]) -> tuple[int, int, float]:
    if len(row) != 3:
        raise ValueError(f"expected 3 fields (from,to,intensity), got {len(row)}")
    start, end = _time(row[0]), _time(row[1])
    if end <= start:
        raise ValueError(f"'to' {row[1].strip()} is not after 'from' {row[0].strip()}")
    try:
        value = float(row[2])
    except ValueError:
        raise ValueError(f"intensity {row[2].strip()!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"intensity {row[2].strip()!r} must be a finite number >= 0")
    return start, end, value


@functools.lru_cache(maxsize=4096)
def _time(text: str) -> int:
    """Cached: each row's 'to' is the next row's 'from' (a year's file: 17,520 rows read per command)."""
    text = text.strip()
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"time {text!r} is not ISO 8601") from None
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset (write it in UTC, e.g. {text}Z)")
    t = dt.timestamp()
    if t % HALF_HOUR:
        raise ValueError(f"time {text!r} is not on a UTC half-hour")
    return int(t)
