"""Slurm hostlist expressions, expanded the way Slurm expands them.

`cpu-p-[1-3,5],gpu-q-[07-08]` -> cpu-p-1 cpu-p-2 cpu-p-3 cpu-p-5 gpu-q-07 gpu-q-08;
several bracket groups multiply out left to right (`rack[1-2]-n[01-02]`), zero padding kept.
"""

from __future__ import annotations

import functools
import itertools
import re

from .errors import HostlistError

MAX_HOSTS = 1_000_000
MAX_DIGITS = 18
"""Longest number in a range: enough for any real host name, and int() of it stays cheap."""
_RANGE = re.compile(rf"([0-9]{{1,{MAX_DIGITS}}})(?:-([0-9]{{1,{MAX_DIGITS}}}))?")
_NAME_OK = re.compile(r"[A-Za-z0-9._-]*")
_EDGE = " \t\r\n"
_STRAY = re.compile(r"[^\x20-\x7e]")
"""Control characters and anything not ASCII: `a\\n[1-2]` or Unicode digits are no host names."""

Range = tuple[int, int, int]
"""lo, hi (inclusive), zero-padded width (0: none)."""


@functools.lru_cache(maxsize=65536)
def expand(expr: str) -> tuple[str, ...]:
    """All host names of `expr`, in Slurm's order; raises HostlistError naming the fault.

    The names are counted (product of the bracket groups' sizes, summed over the comma parts)
    before any is built, so a short expression naming 10^18 hosts fails at once, not after
    filling the memory.
    """
    expr = expr.strip(_EDGE)
    if not expr:
        raise HostlistError("empty hostlist")
    if _STRAY.search(expr):
        raise HostlistError(f"invalid character in hostlist {expr!r} (only ASCII letters, digits, '.', '_', '-')")
    parsed = [_parse_one(part, expr) for part in _split_top(expr)]
    total = 0
    for _, groups in parsed:
        total += _count(groups)
        if total > MAX_HOSTS:
            raise HostlistError(f"hostlist {expr!r} is too large: it names more than {MAX_HOSTS} hosts")
    hosts: list[str] = []
    for literals, groups in parsed:
        hosts.extend(_names(literals, groups))
    return tuple(hosts)


def _count(groups: list[list[Range]]) -> int:
    n = 1
    for ranges in groups:
        n *= sum(hi - lo + 1 for lo, hi, _ in ranges)
        if n > MAX_HOSTS:  # stop before the product of many groups becomes a huge number
            return n
    return n


def _split_top(expr: str) -> list[str]:
    """Split at commas that are outside brackets."""
    parts, depth, cur = [], 0, []
    for ch in expr:
        if ch == "[":
            depth += 1
            if depth > 1:
                raise HostlistError(f"nested brackets in hostlist {expr!r}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"unbalanced ']' in hostlist {expr!r}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise HostlistError(f"unclosed '[' in hostlist {expr!r}")
    parts.append("".join(cur))
    if any(not p.strip() for p in parts):
        raise HostlistError(f"empty host name in hostlist {expr!r}")
    return [p.strip() for p in parts]


def _parse_one(part: str, expr: str) -> tuple[list[str], list[list[Range]]]:
    """The literal pieces of one comma part and its bracket groups' ranges, nothing expanded."""
    pieces = re.split(r"\[([^\]]*)\]", part)
    literals, groups = pieces[0::2], pieces[1::2]
    for lit in literals:
        if not _NAME_OK.fullmatch(lit):
            raise HostlistError(f"invalid character in hostlist {expr!r}")
    return literals, [_ranges(g, expr) for g in groups]


def _ranges(group: str, expr: str) -> list[Range]:
    out: list[Range] = []
    for item in group.split(","):
        m = _RANGE.fullmatch(item.strip(" "))
        if not m:
            raise HostlistError(f"invalid range {item!r} in hostlist {expr!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise HostlistError(f"range {item!r} runs backwards in hostlist {expr!r}")
        if int(hi) - int(lo) >= MAX_HOSTS:
            raise HostlistError(f"range {item!r} is too large in hostlist {expr!r}")
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        out.append((int(lo), int(hi), width))
    return out


def _names(literals: list[str], groups: list[list[Range]]) -> list[str]:
    choices = [[str(n).zfill(w) for lo, hi, w in ranges for n in range(lo, hi + 1)] for ranges in groups]
    out = []
    for combo in itertools.product(*choices):
        name = literals[0]
        for value, lit in zip(combo, literals[1:], strict=False):
            name += value + lit
        out.append(name)
    return out


def compress(hosts: list[str] | tuple[str, ...]) -> str:
    """A compact Slurm expression for `hosts` (consecutive numeric suffixes merged), order kept."""
    out: list[str] = []
    run: tuple[str, int, int, int] | None = None  # prefix, width, lo, hi

    def flush() -> None:
        if run is None:
            return
        prefix, width, lo, hi = run
        if lo == hi:
            out.append(f"{prefix}{str(lo).zfill(width)}")
        else:
            out.append(f"{prefix}[{str(lo).zfill(width)}-{str(hi).zfill(width)}]")

    for h in hosts:
        m = re.match(r"^(.*?)(\d+)$", h)
        if not m:
            flush()
            run = None
            out.append(h)
            continue
        prefix, digits = m.group(1), m.group(2)
        width = len(digits) if digits.startswith("0") else 0
        n = int(digits)
        if run and run[0] == prefix and run[1] == width and n == run[3] + 1:
            run = (prefix, width, run[2], n)
        else:
            flush()
            run = (prefix, width, n, n)
    flush()
    return ",".join(out)
