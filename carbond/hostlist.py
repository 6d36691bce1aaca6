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
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_NAME_OK = re.compile(r"^[A-Za-z0-9._-]*$")


@functools.lru_cache(maxsize=65536)
def expand(expr: str) -> tuple[str, ...]:
    """All host names of `expr`, in Slurm's order; raises HostlistError naming the fault."""
    expr = expr.strip()
    if not expr:
        raise HostlistError("empty hostlist")
    hosts: list[str] = []
    for part in _split_top(expr):
        hosts.extend(_expand_one(part, expr))
        if len(hosts) > MAX_HOSTS:
            raise HostlistError(f"hostlist {expr!r} names more than {MAX_HOSTS} hosts")
    return tuple(hosts)


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


def _expand_one(part: str, expr: str) -> list[str]:
    pieces = re.split(r"\[([^\]]*)\]", part)
    literals, groups = pieces[0::2], pieces[1::2]
    for lit in literals:
        if not _NAME_OK.match(lit):
            raise HostlistError(f"invalid character in hostlist {expr!r}")
    choices = [_range_values(g, expr) for g in groups]
    out = []
    for combo in itertools.product(*choices):
        name = literals[0]
        for value, lit in zip(combo, literals[1:], strict=False):
            name += value + lit
        out.append(name)
    return out


def _range_values(group: str, expr: str) -> list[str]:
    values: list[str] = []
    for item in group.split(","):
        m = _RANGE.match(item.strip())
        if not m:
            raise HostlistError(f"invalid range {item!r} in hostlist {expr!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise HostlistError(f"range {item!r} runs backwards in hostlist {expr!r}")
        if int(hi) - int(lo) >= MAX_HOSTS:
            raise HostlistError(f"range {item!r} is too large in hostlist {expr!r}")
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        values.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return values


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
