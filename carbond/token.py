"""The carbond token that `sacct` shows in a job's comment field.

    carbond:co2e_g=12.3,energy_kwh=0.0456,gkwh=182,pue=1.2
    carbond:co2e_g=1.25e-3,energy_kwh=6.2e-6,gkwh=200,cov=0.8,pue=1

gkwh is the energy-weighted mean grid intensity (gCO2e/kWh); cov, the fraction of node time
measured, appears only below 1 (method: cov=1 measured, 0 estimated, else mixed); gpu_kwh, the
energy of the job's own measured GPUs, with gpu_by=label or gpu_by=count when they were found by
the series' job label or charged as a share by count (absent: the indices caught while it ran); pue is the
PUE already inside co2e_g (a site constant that can change: the token keeps the one used, for
`carbond show`). co2e_g and energy_kwh come first, so `sacct -o AdminComment%60` shows them.

Lowercase, no spaces, quotes or `|`, so it passes through Slurm 22.05's sacctmgr (which
lowercases values and turns quotes into backticks) and `sacct -P` unchanged. The field is
shared with other tools and with the user's own comment: a rewrite replaces only an earlier
carbond token and keeps every other byte.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from . import footprint
from .errors import JobInputError

PREFIX = "carbond:"
SEPARATOR = " "
"""Put between other content and an appended token: sacct shows it as is, and it ends a token."""

ORDER = ("co2e_g", "energy_kwh", "gkwh", "cov", "pue")
"""co2e_g and energy_kwh first, so they stay visible in a truncated `AdminComment%60` column."""

_KEY = r"[a-z][a-z0-9_]*"
_VALUE = r"[a-z0-9_.+-]+"
_TOKEN = re.compile(rf"(?<![^\s;]){re.escape(PREFIX)}{_KEY}={_VALUE}(?:,{_KEY}={_VALUE})*(?![^\s;])")
_KEY_OK = re.compile(rf"^{_KEY}$")
_VALUE_OK = re.compile(rf"^{_VALUE}$")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?(?:e[+-]?\d+)?$")
_ASCII_UPPER = re.compile(r"[A-Z]")

# Skip reasons, used as metric label values and ledger reasons.
MANGLED = "would-mangle"
FOREIGN = "foreign-payload"


def compact(x: float, digits: int = 3) -> str:
    """`x` with about `digits` significant digits (integers kept whole), no trailing zeros.

    Below 0.001 it is written as `9.47e-5`, shorter than the decimal and still lowercase.
    """
    if not math.isfinite(x):
        raise JobInputError(f"cannot put a non-finite number ({x}) in a carbond token")
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    if magnitude < -3:
        mantissa, _, exponent = f"{x:.{digits - 1}e}".partition("e")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    decimals = min(max(digits - 1 - magnitude, 0), 12)
    text = f"{x:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def token_values(fp: Any) -> dict[str, Any]:
    """The token's values from a JobFootprint-like object (attributes named as in its JSON)."""
    return {
        "co2e_g": fp.co2e_g,
        "energy_kwh": fp.energy_kwh,
        "gkwh": fp.intensity_g_per_kwh,
        # Present whenever the method is not `measured`, capped so rounding never shows 1.
        "cov": min(fp.coverage, 0.999) if fp.method != "measured" else None,
        # The PUE inside co2e_g, so `carbond show` reports the one the job was accounted with.
        "pue": getattr(fp, "pue", None),
        # Measured GPU energy, kWh: only on jobs that held measured GPUs (carbond.gpus).
        "gpu_kwh": _gpu_kwh(fp),
        # ... and, when its GPUs were not caught while it ran, how they were found: label or count.
        "gpu_by": _gpu_by(fp),
    }


def _gpu_kwh(fp: Any) -> float | None:
    return getattr(fp, "gpu_energy_kwh", None)


def _gpu_by(fp: Any) -> str | None:
    """`label` or `count` (a share of all the node's GPUs); absent (like cov) when exact: `idx`."""
    found = getattr(fp, "gpu_found", None)
    return found if _gpu_kwh(fp) is not None and found not in (None, "idx") else None


def method_of(values: Mapping[str, Any]) -> str:
    """measured, mixed or estimated, from a parsed token's coverage (absent: fully measured)."""
    return footprint.method_of(float(values.get("cov", 1)))


def format_token(values: Mapping[str, Any] | Any) -> str:
    """`carbond:k=v,...` from a mapping (or a JobFootprint); known keys first, then the rest sorted.

    None values are left out; a key or text value outside [a-z0-9_.+-] is a JobInputError,
    because it could break the field for sacct or for the next parse.
    """
    if not isinstance(values, Mapping):
        values = token_values(values)
    keys = [k for k in ORDER if k in values] + sorted(k for k in values if k not in ORDER)
    pairs = []
    for key in keys:
        value = values[key]
        if value is None:
            continue
        if not _KEY_OK.match(key):
            raise JobInputError(f"invalid carbond token key {key!r}")
        text = _format_value(key, value)
        pairs.append(f"{key}={text}")
    if not pairs:
        raise JobInputError("a carbond token needs at least one value")
    return PREFIX + ",".join(pairs)


def _format_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return compact(float(value))
    text = str(value)
    if not _VALUE_OK.match(text):
        raise JobInputError(f"invalid carbond token value {key}={text!r}: only [a-z0-9_.+-] allowed")
    return text


def find(field: str) -> re.Match[str] | None:
    """The last carbond token in `field` (the one carbond wrote most recently), or None."""
    last = None
    for m in _TOKEN.finditer(field or ""):
        last = m
    return last


def parse(field: str | None) -> dict[str, Any] | None:
    """Values of the carbond token anywhere in `field` (numbers as float), or None without one."""
    m = find(field or "")
    if m is None:
        return None
    out: dict[str, Any] = {}
    for pair in m.group(0)[len(PREFIX) :].split(","):
        key, _, value = pair.partition("=")
        out[key] = float(value) if _NUMBER.match(value) else value
    return out


def merge(existing: str | None, token: str) -> str:
    """`existing` with `token` in place of its carbond token, or appended after SEPARATOR.

    Every other byte of `existing` is kept, so a user's comment or another tool's text survives;
    merging the same token twice gives the same field.
    """
    if not _TOKEN.fullmatch(token):
        raise JobInputError(f"not a carbond token: {token!r}")
    existing = existing or ""
    m = find(existing)
    if m is not None:
        return existing[: m.start()] + token + existing[m.end() :]
    if not existing:
        return token
    if existing[-1].isspace() or existing[-1] == ";":
        return existing + token
    return existing + SEPARATOR + token


def survives_sacctmgr(existing: str | None, lowercases: bool = True) -> bool:
    """Would rewriting `existing` through sacctmgr keep its bytes?

    Slurm 22.05's sacctmgr lowercases the ASCII letters of the value (C tolower: `ÄÖ` pass;
    `lowercases`, since 23.02 no longer done) and turns `"` and `'` into backticks, dropping a
    leading one; a field holding those would come back changed: carbond must not rewrite it.
    """
    text = existing or ""
    if '"' in text or "'" in text:
        return False
    return not (lowercases and _ASCII_UPPER.search(text))


def skip_reason(existing: str | None, lowercases: bool = True) -> str | None:
    """Why the field must not be rewritten (MANGLED or FOREIGN), or None when it is safe.

    FOREIGN: the field is one opaque payload whose reader would break on an appended token:
    Princeton jobstats' `JS1:<base64>` (read as `b64decode(field[4:])`) or a JSON document.
    """
    text = existing or ""
    if not survives_sacctmgr(text, lowercases):
        return MANGLED
    if find(text) is None and _is_whole_payload(text):
        return FOREIGN
    return None


def _is_whole_payload(text: str) -> bool:
    stripped = text.strip()
    if stripped[:4].lower() == "js1:":
        return True
    if stripped[:1] in ("{", "["):
        try:
            json.loads(stripped)
        except ValueError:
            return False
        return True
    return False
