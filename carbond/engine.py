"""The accounting engine: jobs in, footprints out. The only place that joins I/O and arithmetic.

Two ways through, one arithmetic (`footprint.compute`, called per batch from `_batch`):

- `account`/`batches` (the daemon, small inputs): VictoriaMetrics is asked once for every node
  over the whole span of the input, then the jobs are accounted in bounded batches, in input order.
- `stream` (bulk: `footprint --jobs`, `backfill`): windows of jobs in time order; each window
  fetches only the node-time its jobs need (PowerCache carries every node's running integral
  across windows and drops samples no later job needs), so memory follows the window, not the
  span, and results come out window by window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .config import Config
from .energy import Trace, build_trace
from .footprint import Allocation, Batch, IntensityView, JobFootprint, JobMeta, compute
from .jobs import BadLine, Job, JobTable, NodeNames
from .powercache import PowerCache

BATCH = 50_000
WINDOW = 86400.0
"""Default streaming window: a day of job starts."""


class PowerSource(Protocol):
    def fetch_power(self, nodes: Sequence[str], start: float, end: float) -> dict[str, tuple[np.ndarray, np.ndarray]]: ...


class IntensityLookup(Protocol):
    def lookup(self, start: float, end: float): ...


TraceOf = Callable[[str], "Trace | None"]


@dataclass
class Engine:
    cfg: Config
    power: PowerSource
    intensity: IntensityLookup
    node_cpus: Callable[[str], int | None] | None = None
    """Extra source of node CPU counts (e.g. Slurm) for nodes the config does not describe."""
    _names: NodeNames = field(default_factory=NodeNames)
    _props: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    """Per NodeNames index: CPUs, idle watts, max watts (NaN: unknown)."""
    cache: PowerCache | None = None
    """The streaming path's power (kept for its statistics)."""

    def account(self, items: Iterable[Job | BadLine]) -> Iterator[JobFootprint]:
        """Footprints in input order; jobs that cannot be accounted get a status, never vanish."""
        for batch in self.batches(items):
            yield from batch.footprints()

    def batches(self, items: Iterable[Job | BadLine]) -> Iterator[Batch]:
        """The input accounted in bounded batches, in input order (one fetch for the whole span)."""
        items = list(items)
        ready = [j for j in items if isinstance(j, Job) and _status(j) is None]
        traces, view = self._inputs(ready) if ready else ({}, None)
        for lo in range(0, len(items), BATCH):
            chunk = items[lo : lo + BATCH]
            table = JobTable.from_jobs([j for j in chunk if isinstance(j, Job)], self._names)
            b = self._batch(table, traces.get, view)
            it = iter(b.slots)
            slots = [next(it) if isinstance(x, Job) else _bad(x, self.cfg.pue) for x in chunk]
            yield Batch(slots, b.metas, b.acc, b.alloc, b.pue)

    def stream(self, windows: Iterable[JobTable], span: tuple[float, float] | None = None,
               align: float = WINDOW) -> Iterator[Batch]:
        """Windows of jobs (each a JobTable, in time order) accounted one after the other.

        `span` (earliest start, latest end), when known, makes one intensity lookup for the run;
        otherwise each window looks up its own. Bad lines of a table follow its jobs.
        """
        from concurrent.futures import ThreadPoolExecutor

        self.cache = PowerCache(self.power.fetch_power, self.cfg.max_gap, align=align)
        view = self._view(*span) if span and span[0] <= span[1] else None
        it = iter(windows)
        table = next(it, None)
        # The next window's power is read while this one is computed and written out.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="carbond-prefetch") as pool:
            pending = pool.submit(self._prepare, table, view) if table is not None else None
            while table is not None and pending is not None:
                traces, wview = pending.result()
                following = next(it, None)
                pending = pool.submit(self._prepare, following, view) if following is not None else None
                for lo in range(0, len(table), BATCH):
                    part = table.take(np.arange(lo, min(lo + BATCH, len(table)))) if len(table) > BATCH else table
                    yield self._batch(part, traces.get, wview)
                if table.bad:
                    yield Batch([_bad(b, self.cfg.pue) for b in table.bad], [], None, None, self.cfg.pue)
                table = following

    def _prepare(self, table: JobTable, view: IntensityView | None) -> tuple[dict[str, Trace | None], IntensityView | None]:
        """Power (and intensity, unless the run has one view) of a window; earlier samples are freed.

        Runs in the prefetch thread, one window at a time: the only code that changes the cache.
        The traces handed out are snapshots, so the window before keeps reading its own.
        """
        cache = self.cache
        assert cache is not None
        ok = _ready(table)
        if not ok.any():
            return {}, None
        cache.drop_before(float(np.min(table.start[ok])) - self.cfg.max_gap)
        needs = self._needs(table, ok)
        cache.ensure(needs)
        wview = view or self._view(float(np.min(table.start[ok])), float(np.max(table.end[ok])))
        return {n: cache.trace(n) for n in needs}, wview

    # -- inputs ---------------------------------------------------------------------------------
    def _inputs(self, jobs: list[Job]) -> tuple[dict[str, Trace], IntensityView]:
        nodes = sorted({n for j in jobs for n in j.nodes})
        lo = min(j.start for j in jobs)  # type: ignore[type-var]
        hi = max(j.end for j in jobs)  # type: ignore[type-var]
        gap = self.cfg.max_gap
        raw = self.power.fetch_power(nodes, lo - gap, hi + gap)
        traces = {n: build_trace(t, w, gap) for n, (t, w) in raw.items()}
        return traces, self._view(lo, hi)

    def _view(self, lo: float, hi: float) -> IntensityView:
        table = self.intensity.lookup(lo, hi)
        return IntensityView(table.first_slot, table.values, np.asarray(table.kinds), np.asarray(table.stale))

    def _needs(self, table: JobTable, ok: np.ndarray) -> dict[str, tuple[float, float]]:
        """Per node: [earliest start - max_gap, latest end + max_gap] of the window's jobs on it."""
        counts = np.diff(table.node_offsets)
        rows = np.repeat(ok, counts)
        node = table.node[rows]
        start = np.repeat(table.start, counts)[rows]
        end = np.repeat(table.end, counts)[rows]
        uniq, inv = np.unique(node, return_inverse=True)
        lo = np.full(uniq.size, np.inf)
        hi = np.full(uniq.size, -np.inf)
        np.minimum.at(lo, inv, start)
        np.maximum.at(hi, inv, end)
        gap = self.cfg.max_gap
        names = table.names.names
        return {names[n]: (a - gap, b + gap) for n, a, b in zip(uniq.tolist(), lo.tolist(), hi.tolist(), strict=True)}

    # -- one batch: allocation, then the arithmetic ------------------------------------------------
    def _batch(self, table: JobTable, trace_of: TraceOf, view: IntensityView | None) -> Batch:
        pue = self.cfg.pue
        status = _statuses(table)
        alloc, ok, names, errors = self._allocate(table, status == 0)
        acc = None
        metas = _metas(table, ok)
        if ok.size and view is not None:
            acc = compute(alloc, [trace_of(n) for n in names], view, pue, self.cfg.embodied.g_per_node_hour)
        slots: list[int | JobFootprint] = []
        k = 0
        st = status.tolist()
        for j in range(len(table)):
            if st[j]:
                slots.append(_unaccounted(table, j, st[j], pue))
            elif j in errors:
                slots.append(JobFootprint(str(table.job_id[j]), "error", error=errors[j], pue=pue))
            else:
                slots.append(k)
                k += 1
        return Batch(slots, metas, acc, alloc, pue)

    def _allocate(self, table: JobTable, ready: np.ndarray) -> tuple[Allocation, np.ndarray, list[str], dict[int, str]]:
        """The flattened job-node table of the ready jobs; a job whose shares cannot be known is an error."""
        counts = np.diff(table.node_offsets)
        props = self._node_props(table.names)
        node = table.node
        ncpu, idle, peak = props[node, 0], props[node, 1], props[node, 2]
        held = table.row_cpus
        exclusive = self.cfg.attribution == "exclusive"
        with np.errstate(divide="ignore", invalid="ignore"):
            load = np.where(np.isnan(held), 1.0, np.where(ncpu > 0, np.minimum(1.0, held / ncpu), 1.0))
        unknown = ~np.isnan(held) & ~(ncpu > 0) & (not exclusive)
        errors: dict[int, str] = {}
        if unknown.any():
            row_job = np.repeat(np.arange(len(table)), counts)
            for r in np.flatnonzero(unknown & np.repeat(ready, counts)).tolist():
                j = int(row_job[r])
                errors.setdefault(j, f"cannot attribute energy: CPU count of node {table.names.names[node[r]]} "
                                     "unknown (add it under `nodes` in the config)")
            ready = ready.copy()
            ready[list(errors)] = False
        share = np.ones_like(load) if exclusive else load
        fallback = np.where(np.isnan(idle) | np.isnan(peak), np.nan, share * idle + (peak - idle) * load)
        ok = np.flatnonzero(ready)
        rows = np.repeat(ready, counts)
        local, inverse = np.unique(node[rows], return_inverse=True)
        alloc = Allocation(
            start=table.start[ok],
            end=table.end[ok],
            row_job=np.repeat(np.arange(ok.size), counts[ok]),
            row_node=inverse.astype(np.int64),
            share=share[rows],
            fallback_w=fallback[rows],
        )
        names = table.names.names
        return alloc, ok, [names[i] for i in local.tolist()], errors

    def _node_props(self, names: NodeNames) -> np.ndarray:
        """CPUs, idle and max watts of every node named so far, each looked up once."""
        if names is not self._names:
            self._names, self._props = names, np.zeros((0, 3))
        have = self._props.shape[0]
        if have < len(names.names):
            extra = [self._node(n) for n in names.names[have:]]
            self._props = np.vstack([self._props, np.array(extra, dtype=np.float64).reshape(-1, 3)])
        return self._props

    def _node(self, node: str) -> tuple[float, float, float]:
        cls = self.cfg.node_class(node)
        cpus = cls.cpus if cls and cls.cpus else (self.node_cpus(node) if self.node_cpus else None)
        idle = cls.idle_watts if cls and cls.idle_watts is not None and cls.max_watts is not None else None
        peak = cls.max_watts if idle is not None else None
        return (np.nan if not cpus else float(cpus), np.nan if idle is None else float(idle),
                np.nan if peak is None else float(peak))


_STATUS = ("", "not-started", "running", "zero-length", "error:ends before it starts", "error:no nodes recorded")


def _statuses(table: JobTable) -> np.ndarray:
    """Why each job cannot go through the arithmetic (an index into _STATUS), 0 if it can."""
    s, e = table.start, table.end
    n_nodes = np.diff(table.node_offsets)
    with np.errstate(invalid="ignore"):
        return np.select(
            [np.isnan(s), np.isnan(e), e == s, e < s, n_nodes == 0], [1, 2, 3, 4, 5], 0
        ).astype(np.int64)


def _ready(table: JobTable) -> np.ndarray:
    return _statuses(table) == 0


def _metas(table: JobTable, ok: np.ndarray) -> list[JobMeta]:
    names = table.names.names
    first = table.node_offsets[ok]
    counts = table.node_offsets[ok + 1] - first
    if counts.size and np.all(counts == 1):
        nodes = [(names[i],) for i in table.node[first].tolist()]
    else:
        node = table.node.tolist()
        nodes = [tuple(names[i] for i in node[a : a + c]) for a, c in zip(first.tolist(), counts.tolist(), strict=True)]
    warn = table.warnings
    warnings = [list(warn.get(j, ())) for j in ok.tolist()] if warn else [[] for _ in range(ok.size)]
    ids, parts, accts, users = (a[ok].tolist() for a in (table.job_id, table.partition, table.account, table.user))
    return list(map(JobMeta, ids, nodes, parts, accts, users, warnings))


def one_malloc_arena() -> None:
    """Keep glibc to one malloc arena for a long streaming run (call before any thread starts).

    The prefetch thread allocates each window's arrays and the main thread frees them; with an
    arena per thread the freed memory fragments, and peak RSS crept up with the span (6 months:
    +50 % over one month). One arena keeps it flat; measured no slower. A no-op off glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _status(job: Job) -> str | None:
    """Why a job cannot go through the arithmetic, or None if it can."""
    if job.start is None:
        return "not-started"
    if job.end is None:
        return "running"
    if job.end == job.start:
        return "zero-length"
    if job.end < job.start:
        return "error:ends before it starts"
    if not job.nodes:
        return "error:no nodes recorded"
    return None


def _bad(item: BadLine, pue: float) -> JobFootprint:
    return JobFootprint(item.job_id, "error", error=f"line {item.line_no}: {item.error}", pue=pue)


def _unaccounted(table: JobTable, j: int, code: int, pue: float) -> JobFootprint:
    status = _STATUS[code]
    start = None if np.isnan(table.start[j]) else float(table.start[j])
    end = None if np.isnan(table.end[j]) else float(table.end[j])
    job_id = str(table.job_id[j])
    if status.startswith("error:"):
        return JobFootprint(job_id, "error", error=status[6:], start=start, end=end, pue=pue)
    return JobFootprint(
        job_id,
        status,
        pue=pue,
        method="none",
        coverage=0.0 if status != "zero-length" else 1.0,
        start=start,
        end=end,
        partition=str(table.partition[j]),
        account=str(table.account[j]),
        user=str(table.user[j]),
        warnings=table.warnings.get(j, ()),
    )


def build_engine(cfg: Config, node_cpus: Callable[[str], int | None] | None = None):
    """The engine wired to the configured VictoriaMetrics and intensity source (with its cache)."""
    import logging
    import os

    from .intensity import IntensitySource, make_provider
    from .victoria import VictoriaClient

    victoria = VictoriaClient(cfg.victoriametrics)
    provider = make_provider(cfg, victoria=victoria)
    cache = os.path.join(cfg.state_dir, "intensity.sqlite")
    try:
        os.makedirs(cfg.state_dir, exist_ok=True)
        if not os.access(cfg.state_dir, os.W_OK):
            raise PermissionError(cfg.state_dir)
    except OSError:
        logging.getLogger("carbond").warning("state_dir %s is not writable: intensity cache off", cfg.state_dir)
        cache = None
    source = IntensitySource(provider, cache, refresh_seconds=cfg.intensity.refresh_seconds)
    return Engine(cfg, victoria, source, node_cpus), victoria
