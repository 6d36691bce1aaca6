"""One way from a job's facts to its footprint, whichever command asks (docs/accounting.md).

The daemon, `backfill`, `footprint --jobs` and `idle` all account a job the same way: its runs
(`sacct -D`: a requeued job ran several times, each on its own nodes), without its recorded
suspend intervals (R7), with the GPU indices captured while it ran (R5), through the one engine.
`histories` gathers those facts from Slurm and the ledger; `account` turns them into footprints.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from .footprint import JobFootprint
from .jobs import Job
from .runs import combine, pieces
from .slurm import Run


@dataclass(frozen=True)
class JobHistory:
    """What the accounting needs of one job beyond slurmdbd's final record."""

    job: Job
    runs: tuple[Run, ...] = ()
    """Every run (oldest first); empty: the job's own start, end and nodes are its one run."""
    suspends: tuple[tuple[float, float | None], ...] = ()
    """Recorded suspend intervals (carbond.suspend)."""


class Accountant(Protocol):
    def account(self, items: Iterable[Job]) -> Iterable[JobFootprint]: ...


class History(Protocol):
    """The ledger's side of a job's facts (carbond.ledger.Ledger)."""

    def suspended(self, job_id: str) -> list[tuple[float, float | None]]: ...

    def gpu_indices(self, job_id: str) -> tuple[tuple[str, str], ...]: ...


def account(engine: Accountant, items: Sequence[JobHistory]) -> list[JobFootprint]:
    """Footprints in input order: each job's stretches through the engine at once, then combined."""
    plan = [pieces(h.job, h.runs, h.suspends) for h in items]
    fps = iter(list(engine.account([p.job for ps in plan for p in ps])))
    return [combine(h.job.job_id, [(p, next(fps)) for p in ps]) for h, ps in zip(items, plan, strict=True)]


GROUP_JOBS = 5000
"""Most jobs accounted in one engine pass by `account_in_windows`."""


def account_in_windows(engine: Accountant, items: Sequence[JobHistory], window: float) -> list[JobFootprint]:
    """`account` in groups of jobs whose runs span at most `window` seconds (by start): each group
    reads its nodes' power over its own span only, so many jobs across months stay in bounded memory.
    Results in input order."""
    def span(h: JobHistory) -> tuple[float, float]:
        times = [(r.start, r.end) for r in h.runs if r.start is not None and r.end is not None]
        if h.job.start is not None and h.job.end is not None:
            times.append((h.job.start, h.job.end))
        return (min(a for a, _ in times), max(b for _, b in times)) if times else (float("inf"), float("inf"))

    spans = [span(h) for h in items]
    order = sorted(range(len(items)), key=lambda i: spans[i])
    out: list[JobFootprint | None] = [None] * len(items)
    group: list[int] = []
    lo = hi = 0.0
    for i in [*order, None]:
        if i is not None and group and spans[i][0] != float("inf") and len(group) < GROUP_JOBS \
                and max(hi, spans[i][1]) - lo <= window:
            group.append(i)
            hi = max(hi, spans[i][1])
            continue
        if group:
            for k, fp in zip(group, account(engine, [items[k] for k in group]), strict=True):
                out[k] = fp
        if i is not None:
            group, (lo, hi) = [i], spans[i]
    return out  # type: ignore[return-value]


def histories(slurm, ledger: History | None, jobs: Sequence[Job]) -> list[JobHistory]:
    """Each job with its runs (one `sacct -D` call for all), and from the ledger its suspend
    intervals and captured GPU indices (none without a ledger)."""
    if not jobs:
        return []
    runs = slurm.read_runs([j.job_id for j in jobs])
    out = []
    for j in jobs:
        rs = tuple(runs.get(j.job_id, ()))
        sus = tuple(ledger.suspended(j.job_id)) if ledger is not None and any(r.suspended > 0 for r in rs) else ()
        ids = ledger.gpu_indices(j.job_id) if ledger is not None and j.gpus and not j.gpu_ids else ()
        out.append(JobHistory(replace(j, gpu_ids=ids) if ids else j, rs, sus))
    return out


class LedgerView:
    """A ledger read-only, for commands that may run without the daemon's rights: the suspend
    intervals and GPU indices it recorded (`footprint --jobs` accounts history with them)."""

    def __init__(self, db, cluster: str) -> None:
        self._db, self._cluster = db, cluster

    def suspended(self, job_id: str) -> list[tuple[float, float | None]]:
        return self._db.execute("SELECT start, end FROM suspends WHERE cluster=? AND job_id=? ORDER BY start",
                                (self._cluster, job_id)).fetchall()

    def gpu_indices(self, job_id: str) -> tuple[tuple[str, str], ...]:
        import sqlite3

        try:
            return tuple(self._db.execute("SELECT node, indices FROM gpu_indices WHERE cluster=? AND job_id=? "
                                          "ORDER BY node", (self._cluster, job_id)).fetchall())
        except sqlite3.OperationalError:  # a ledger from before GPU indices were captured
            return ()


def ledger_view(state_dir: str, cluster: str) -> LedgerView | None:
    """The ledger in `state_dir`, read-only; None when this user cannot read one (`footprint --jobs`
    then charges suspended runs pro rata and finds GPUs by label or count, flagged)."""
    import os
    import sqlite3

    path = os.path.join(state_dir, "ledger.sqlite")
    if not os.access(path, os.R_OK):
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2, check_same_thread=False)
        db.execute("SELECT 1 FROM suspends LIMIT 1")
    except sqlite3.Error:
        return None
    return LedgerView(db, cluster)
