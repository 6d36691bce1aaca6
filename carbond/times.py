"""Times: everything inside carbond is UTC epoch seconds; these functions get it there safely.

Local wall-clock times (sacct's default output) are read in an explicit IANA zone, so a job that
crosses a DST change is neither an hour too long nor too short; a wall-clock time that occurs
twice (the autumn hour) is flagged, one that never occurs (the spring hour) is an error.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from .errors import JobInputError, TimeFormatError

_EPOCH = re.compile(r"^[0-9]{9,11}(\.[0-9]+)?$")
EPOCH_MAX = 253402300799.0
"""9999-12-31T23:59:59Z: the last time iso() and every store of carbond can write."""
MAX_SPAN = 366 * 86400.0
"""Longest job or window carbond accounts: a longer one is an error, not an hour of lookups
(a job from 1970 to now would ask for 54 years of power and grid intensity)."""


def parse_time(text: str, zone: str | None = None) -> tuple[float, str | None]:
    """Epoch seconds for `text`, plus a warning when the wall-clock time was ambiguous.

    Accepts epoch seconds, ISO 8601 with an offset or Z, and (with `zone`) naive local times.
    """
    text = text.strip()
    if _EPOCH.match(text):
        return float(text), None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TimeFormatError(f"cannot read time {text[:80]!r}: expected epoch seconds or ISO 8601") from None
    if dt.tzinfo is not None:
        return in_range(_timestamp(dt, text), text), None
    if zone is None:
        raise TimeFormatError(f"time {text!r} has no UTC offset: give one, or a --timezone to read it in")
    value, warning = _localize(dt, _zone(zone), text)
    return in_range(value, text), warning


def in_range(value: float, text: str = "") -> float:
    """`value` if it is a time carbond can store and print (1970 to 9999 UTC), else an error."""
    if not 0 <= value <= EPOCH_MAX:
        raise TimeFormatError(f"time {(text or value)!r} is outside 1970-01-01 to 9999-12-31 UTC")
    return value


def check_span(start: float, end: float, what: str = "job") -> None:
    """A JobInputError when [start, end] is longer than MAX_SPAN."""
    if end - start > MAX_SPAN:
        raise JobInputError(f"{what} spans {(end - start) / 86400:.0f} days, more than {MAX_SPAN / 86400:.0f}: "
                            "not accounted (is its start time right?)")


def _timestamp(dt: datetime, text: str) -> float:
    try:
        return dt.timestamp()
    except (OverflowError, ValueError):  # year 1 with a positive offset is before datetime.min in UTC
        raise TimeFormatError(f"time {text!r} is outside 1970-01-01 to 9999-12-31 UTC") from None


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimeFormatError(f"unknown time zone {name!r}") from None


def _localize(dt: datetime, tz: ZoneInfo, text: str) -> tuple[float, str | None]:
    first = dt.replace(tzinfo=tz, fold=0)
    second = dt.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return _timestamp(first, text), None
    # fold only matters inside a transition: a gap (spring) or an overlap (autumn).
    back = datetime.fromtimestamp(_timestamp(first, text), tz).replace(tzinfo=None)
    if back != dt:
        raise TimeFormatError(f"local time {text!r} does not exist in {tz.key} (clocks went forward)")
    return first.timestamp(), f"local time {text!r} is ambiguous in {tz.key}; read as the first occurrence"


def iso(epoch: float) -> str:
    """RFC 3339 UTC with a Z: whole seconds, or milliseconds when the time has a fraction."""
    if epoch == int(epoch):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    ms = round(epoch * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def iso_many(epochs: np.ndarray) -> list[str]:
    """iso() for a whole array at once (the bulk path formats millions of period bounds)."""
    epochs = np.asarray(epochs, dtype=np.float64)
    if epochs.size == 0:
        return []
    whole = np.all(epochs == np.floor(epochs))
    unit = "s" if whole else "ms"
    # Period bounds repeat (every job in a half-hour shares them): format each distinct time once.
    uniq, inverse = np.unique(epochs, return_inverse=True)
    stamps = np.round(uniq * (1 if whole else 1000)).astype(f"datetime64[{unit}]")
    text = np.array([s + "Z" for s in np.datetime_as_string(stamps, unit=unit).tolist()], dtype=object)
    return text[inverse].tolist()



def iso_parts(epochs: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """iso_many's text as ASCII in two parts, the hour ('2024-01-01T05:') and the rest ('38:02Z'),
    for a template that writes them side by side. Both parts are shared objects: nothing is
    made per time (the bulk JSON writes millions). None unless every time is a whole second of
    years 1970-9999 and they span under 2,000 hours."""
    t = np.asarray(epochs, dtype=np.float64)
    if t.size == 0:
        return np.zeros(0, dtype=object), np.zeros(0, dtype=object)
    if not (np.all(t == np.floor(t)) and t.min() >= 0 and t.max() - t.min() < 2000 * 3600 and t.max() < 253402300800):
        return None
    hour, rest = np.divmod(t.astype(np.int64), 3600)
    lo = int(hour.min())
    prefix = np.empty(int(hour.max()) + 1 - lo, dtype=object)
    prefix[:] = [time.strftime("%Y-%m-%dT%H:", time.gmtime(h * 3600)).encode() for h in range(lo, int(hour.max()) + 1)]
    return prefix[hour - lo], _minute_second()[rest]


@functools.cache
def _minute_second() -> np.ndarray:
    out = np.empty(3600, dtype=object)
    out[:] = [b"%02d:%02dZ" % (m, s) for m in range(60) for s in range(60)]
    return out


_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)$")
_PART = re.compile(r"[0-9]+(?:\.[0-9]+)?")
"""One number of a Slurm duration: ASCII digits (float() also takes nan, inf, 1e400, -5 and ١٢)."""


def _finite(seconds: float, text: str) -> float:
    if not seconds <= 1e12:  # 30,000 years; also NaN and inf
        raise JobInputError(f"cannot read duration {text[:40]!r}: too long")
    return seconds
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 60}


def parse_duration(text: str) -> float:
    """Seconds of `6h`, `90m`, `1.5d`, or Slurm's forms: `45` (minutes), `MM:SS`, `HH:MM:SS`,
    `D-HH`, `D-HH:MM`, `D-HH:MM:SS`."""
    t = text.strip().lower()
    m = _DURATION.match(t)
    if m:
        return _finite(float(m.group(1)) * _UNITS[m.group(2)], text)
    days, dash, rest = t.partition("-")
    if not dash:
        days, rest = "", t
    parts = rest.split(":")
    try:
        nums = [float(x) for x in parts]
        if not all(_PART.fullmatch(x) for x in [*parts, *([days] if days else [])]):
            raise ValueError
        if days:  # D-HH, D-HH:MM, D-HH:MM:SS
            if len(nums) > 3:
                raise ValueError
            nums += [0.0] * (3 - len(nums))
            return _finite(float(days) * 86400 + nums[0] * 3600 + nums[1] * 60 + nums[2], text)
        if len(nums) == 2:  # MM:SS
            return _finite(nums[0] * 60 + nums[1], text)
        if len(nums) == 3:  # HH:MM:SS
            return _finite(nums[0] * 3600 + nums[1] * 60 + nums[2], text)
        raise ValueError
    except ValueError:
        raise JobInputError(f"cannot read duration {text!r}: expected e.g. 6h, 90m, 1d or 1-12:00:00") from None
