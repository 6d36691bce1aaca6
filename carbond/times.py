"""Times: everything inside carbond is UTC epoch seconds; these functions get it there safely.

Local wall-clock times (sacct's default output) are read in an explicit IANA zone, so a job that
crosses a DST change is neither an hour too long nor too short; a wall-clock time that occurs
twice (the autumn hour) is flagged, one that never occurs (the spring hour) is an error.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from .errors import TimeFormatError

HALF_HOUR = 1800
_EPOCH = re.compile(r"^\d{9,11}(\.\d+)?$")


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
        raise TimeFormatError(f"cannot read time {text!r}: expected epoch seconds or ISO 8601") from None
    if dt.tzinfo is not None:
        return dt.timestamp(), None
    if zone is None:
        raise TimeFormatError(f"time {text!r} has no UTC offset: give one, or a --timezone to read it in")
    return _localize(dt, _zone(zone), text)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimeFormatError(f"unknown time zone {name!r}") from None


def _localize(dt: datetime, tz: ZoneInfo, text: str) -> tuple[float, str | None]:
    first = dt.replace(tzinfo=tz, fold=0)
    second = dt.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first.timestamp(), None
    # fold only matters inside a transition: a gap (spring) or an overlap (autumn).
    back = datetime.fromtimestamp(first.timestamp(), tz).replace(tzinfo=None)
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
