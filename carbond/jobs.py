"""Jobs as carbond sees them, and the reader for `sacct -P` tables.

A job is what the accounting needs and nothing more: when it ran (UTC epoch seconds),
where, and how many CPUs it held on each node.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .errors import CarbondError, JobInputError
from .hostlist import expand
from .times import parse_time

REQUIRED_COLUMNS = ("JobIDRaw", "Start", "End", "NodeList", "AllocTRES")
NOT_STARTED = {"", "unknown", "none"}


@dataclass(frozen=True)
class Job:
    job_id: str
    """JobIDRaw: unique, and what sacctmgr's `where jobid=` takes."""
    start: float | None
    end: float | None
    nodes: tuple[str, ...] = ()
    cpus: tuple[float, ...] = ()
    """CPUs held on each node, in `nodes` order (an even split when only a total is known)."""
    gpus: int = 0
    partition: str = ""
    account: str = ""
    user: str = ""
    display_id: str = ""
    """JobID as users see it (`1234_7` for an array task)."""
    warnings: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        return self.display_id or self.job_id


@dataclass(frozen=True)
class BadLine:
    """A line that could not be read; reported in the results, never silently skipped."""

    job_id: str
    line_no: int
    error: str


@functools.lru_cache(maxsize=4096)
def parse_tres(tres: str) -> dict[str, str]:
    """`billing=4,cpu=4,gres/gpu=1,node=1` -> {'cpu': '4', ...}."""
    out: dict[str, str] = {}
    for item in tres.split(","):
        key, sep, value = item.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def tres_counts(tres: str) -> tuple[int, int]:
    """Allocated CPUs and GPUs from an AllocTRES string."""
    t = parse_tres(tres)
    try:
        cpus = int(t.get("cpu", "0"))
        gpus = int(t.get("gres/gpu", "0"))
    except ValueError:
        raise JobInputError(f"cannot read AllocTRES {tres!r}") from None
    return cpus, gpus


def even_split(total: float, n: int) -> tuple[float, ...]:
    return (total / n,) * n if n else ()


def read_sacct(lines: Iterable[str], zone: str | None = None) -> Iterator[Job | BadLine]:
    """Jobs of a `sacct -P` table with a header line; steps (`123.batch`) are skipped.

    Times may be epoch seconds (SLURM_TIME_FORMAT=%s) or local times read in `zone`.
    """
    it = iter(lines)
    header = next(it, "").rstrip("\n").split("|")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise JobInputError(
            f"sacct table lacks column(s) {', '.join(missing)}; run sacct -P -o {','.join(REQUIRED_COLUMNS)}"
        )
    col = {name: i for i, name in enumerate(header)}
    optional = {k: col.get(k) for k in ("JobID", "Partition", "Account", "User")}
    for line_no, line in enumerate(it, start=2):
        line = line.rstrip("\n")
        if not line:
            continue
        row = line.split("|")
        job_id = row[col["JobIDRaw"]] if len(row) > col["JobIDRaw"] else "?"
        if "." in job_id:
            continue
        try:
            yield _job_from_row(row, col, optional, zone, len(header))
        except CarbondError as exc:
            yield BadLine(job_id, line_no, str(exc))


def _job_from_row(row: list[str], col: dict[str, int], opt: dict[str, int | None], zone: str | None, width: int) -> Job:
    if len(row) != width:
        raise JobInputError(f"expected {width} fields, got {len(row)}")
    job_id = row[col["JobIDRaw"]]
    warnings: list[str] = []
    start = _time(row[col["Start"]], zone, warnings)
    end = _time(row[col["End"]], zone, warnings)
    nodes_expr = row[col["NodeList"]]
    nodes = () if nodes_expr.lower() in ("none assigned", "", "none") else expand(nodes_expr)
    cpus, gpus = tres_counts(row[col["AllocTRES"]])

    def get(k: str) -> str:
        i = opt[k]
        return row[i] if i is not None else ""

    return Job(
        job_id=job_id,
        start=start,
        end=end,
        nodes=nodes,
        cpus=even_split(cpus, len(nodes)),
        gpus=gpus,
        partition=get("Partition"),
        account=get("Account"),
        user=get("User"),
        display_id=get("JobID"),
        warnings=tuple(warnings),
    )


def _time(text: str, zone: str | None, warnings: list[str]) -> float | None:
    if text.strip().lower() in NOT_STARTED:
        return None
    if text.isdigit():
        return float(text)
    value, warning = parse_time(text, zone)
    if warning:
        warnings.append(warning)
    return value
