"""The accounting engine: jobs in, footprints out. The only place that joins I/O and arithmetic.

Two ways through, one arithmetic (`footprint.compute`, called per batch from `_batch`):

- `account`/`batches` (the daemon, small inputs): VictoriaMetrics is asked once for every node
  over the whole span of the input, then the jobs are accounted in bounded batches, in input order.
- `stream` (bulk: `footprint --jobs`, `backfill`): windows of jobs in time order; each window
  fetches only the node-time its jobs need (PowerCache carries every node's running integral
  across windows and drops samples no later job needs), so memory follows the window, not the
  span, and results come out window by window.

Measured GPUs (carbond.gpus), when `gpu` is configured, enter through the traces and the
allocation: each physical GPU gets a trace of its own beside its node's whole meter, and each
job-node row on such a node lists every GPU of the node with the job's fraction of it
(`footprint.GpuRows`); `compute` splits the node's energy by docs/accounting.md R5. Without
per-GPU series, a node class's `weights` split the node's power by allocated TRES
(attribution.tres_share).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Protocol

import numpy as np

from .attribution import Weights, tres_share
from .config import Config
from .energy import Trace, build_trace
from .footprint import Allocation, Batch, GpuRows, IntensityView, JobFootprint, JobMeta, compute
from .gpus import GpuMap, gpu_traces, held_indices, least_exact
from .jobs import BadLine, Job, JobTable, NodeNames
from .powercache import PowerCache
from .runs import base_id

BATCH = 50_000
READ_AHEAD = 2
"""A busy node's power is read this many windows ahead. VictoriaMetrics decodes whole blocks of
a series per request (up to 8,192 samples, ~3 days at 30 s): ten one-day requests cost it 1.5x
the CPU of one ten-day request. Each extension also copies the samples the node still holds.
The benchmark month: 5-6 % faster with 2 than with 1, for ~15 MB of peak RSS."""
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
    _props: np.ndarray = field(default_factory=lambda: np.zeros((0, _PROPS)))
    """Per NodeNames index: CPUs, idle watts, max watts, TRES weight per CPU and per GPU, the class's
    GPUs, weight per GB, the class's memory GB (NaN: unknown; the weights NaN when the class has none)."""
    cache: PowerCache | None = None
    """The streaming path's power (kept for its statistics)."""
    gpu_power: PowerSource | None = None
    """Per-GPU series (carbond.gpus.GpuClient) when `gpu` is configured."""

    def account(self, items: Iterable[Job | BadLine]) -> Iterator[JobFootprint]:
        """Footprints in input order; jobs that cannot be accounted get a status, never vanish."""
        for batch in self.batches(items):
            yield from batch.footprints()

    def batches(self, items: Iterable[Job | BadLine]) -> Iterator[Batch]:
        """The input accounted in bounded batches, in input order (one fetch for the whole span)."""
        items = list(items)
        ready = [j for j in items if isinstance(j, Job) and _status(j) is None]
        traces, view, gmap = self._inputs(ready) if ready else ({}, None, None)
        for lo in range(0, len(items), BATCH):
            chunk = items[lo : lo + BATCH]
            table = JobTable.from_jobs([j for j in chunk if isinstance(j, Job)], self._names)
            b = self._batch(table, traces.get, view, gmap)
            it = iter(b.slots)
            slots = [next(it) if isinstance(x, Job) else _bad(x, self.cfg.pue) for x in chunk]
            yield Batch(slots, b.metas, b.acc, b.alloc, b.pue)

    def stream(self, windows: Iterable[JobTable], span: tuple[float, float] | None = None,
               align: float = WINDOW, view: IntensityView | None = None) -> Iterator[Batch]:
        """Windows of jobs (each a JobTable, in time order) accounted one after the other.

        `span` (earliest start, latest end), when known, makes one intensity lookup for the run,
        or `view` is that lookup already made; otherwise each window looks up its own. Bad lines
        of a table follow its jobs.
        """
        from concurrent.futures import ThreadPoolExecutor

        self.cache = PowerCache(self.power.fetch_power, self.cfg.max_gap, align=align * READ_AHEAD)
        if view is None and span and span[0] <= span[1]:
            view = self.intensity_view(*span)
        it = iter(windows)
        table, after = next(it, None), next(it, None)
        # The next window's power is read while this one is computed and written out. The last
        # window reads no further than its jobs need (the next segment's process reads on).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="carbond-prefetch") as pool:
            pending = pool.submit(self._prepare, table, view, after is None) if table is not None else None
            while table is not None and pending is not None:
                traces, wview, gmap = pending.result()
                following, after = after, (next(it, None) if after is not None else None)
                pending = pool.submit(self._prepare, following, view, after is None) if following is not None else None
                for lo in range(0, len(table), BATCH):
                    part = table.take(np.arange(lo, min(lo + BATCH, len(table)))) if len(table) > BATCH else table
                    yield self._batch(part, traces.get, wview, gmap)
                if table.bad:
                    yield Batch([_bad(b, self.cfg.pue) for b in table.bad], [], None, None, self.cfg.pue)
                table = following

    def _prepare(self, table: JobTable, view: IntensityView | None, last: bool = False
                 ) -> tuple[dict[str, Trace | None], IntensityView | None, GpuMap | None]:
        """Power (and intensity, unless the run has one view) of a window; earlier samples are freed.

        Runs in the prefetch thread, one window at a time: the only code that changes the cache.
        The traces handed out are snapshots, so the window before keeps reading its own. GPU series
        are read per window (not cached) and the window's GPU nodes' traces rebuilt without them.
        """
        cache = self.cache
        assert cache is not None
        ok = _ready(table)
        if not ok.any():
            return {}, None, None
        cache.drop_before(float(np.min(table.start[ok])) - self.cfg.max_gap)
        needs = self._needs(table, ok)
        cache.ensure(needs, ahead=not last)
        wview = view or self.intensity_view(float(np.min(table.start[ok])), float(np.max(table.end[ok])))
        traces, gmap = self._with_gpus({n: cache.trace(n) for n in needs}, needs)
        return traces, wview, gmap

    # -- inputs ---------------------------------------------------------------------------------
    def _inputs(self, jobs: list[Job]) -> tuple[dict[str, Trace | None], IntensityView, GpuMap | None]:
        lo = min(j.start for j in jobs)  # type: ignore[type-var]
        hi = max(j.end for j in jobs)  # type: ignore[type-var]
        traces, gmap = self.traces(sorted({n for j in jobs for n in j.nodes}), lo, hi)
        return traces, self.intensity_view(lo, hi), gmap

    def traces(self, nodes: Sequence[str], lo: float, hi: float) -> tuple[dict[str, Trace | None], GpuMap | None]:
        """Every node's meter (and its GPUs') over [lo - max_gap, hi + max_gap], one fetch each."""
        gap = self.cfg.max_gap
        raw = self.power.fetch_power(list(nodes), lo - gap, hi + gap)
        traces: dict[str, Trace | None] = {n: build_trace(t, w, gap) for n, (t, w) in raw.items()}
        return self._with_gpus(traces, {n: (lo - gap, hi + gap) for n in nodes})

    def _with_gpus(self, traces: dict[str, Trace | None], needs: dict[str, tuple[float, float]]
                   ) -> tuple[dict[str, Trace | None], GpuMap | None]:
        """Add one trace per physical GPU of the nodes in `needs` (no-op without `gpu`)."""
        if self.gpu_power is None or not needs:
            return traces, None
        lo = min(a for a, _ in needs.values())
        hi = max(b for _, b in needs.values())
        gpu_raw = self.gpu_power.fetch_power(sorted(needs), lo, hi)
        if not gpu_raw:
            return traces, GpuMap()
        extra, gmap = gpu_traces(gpu_raw, self.cfg.max_gap)
        return {**traces, **extra}, gmap

    def intensity_view(self, lo: float, hi: float) -> IntensityView:
        """The grid intensity of every half-hour of [lo, hi], looked up once (cache, then provider)."""
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

    def allocation(self, jobs: list[Job], gmap: GpuMap | None = None) -> tuple[Allocation, list[JobMeta], list[str]]:
        """The shares `compute` would use for `jobs` (carbond.idle closes half-hours with them):
        the allocation of the jobs that can be attributed, their metas and the trace names."""
        table = JobTable.from_jobs(jobs, self._names)
        alloc, ok, names, _errors, _gpu_jobs = self._allocate(table, _ready(table), gmap)
        return alloc, _metas(table, ok), names

    # -- one batch: allocation, then the arithmetic ------------------------------------------------
    def _batch(self, table: JobTable, trace_of: TraceOf, view: IntensityView | None,
               gmap: GpuMap | None = None) -> Batch:
        pue = self.cfg.pue
        status = _statuses(table)
        alloc, ok, names, errors, gpu_jobs = self._allocate(table, status == 0, gmap)
        acc = None
        metas = _metas(table, ok)
        for k, (found, notes) in gpu_jobs.items():
            m = metas[k]
            metas[k] = m._replace(warnings=(*m.warnings, *notes), gpu=found)
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

    def _allocate(self, table: JobTable, ready: np.ndarray, gmap: GpuMap | None = None
                  ) -> tuple[Allocation, np.ndarray, list[str], dict[int, str], dict[int, list[str]]]:
        """The flattened job-node table of the ready jobs; a job whose shares cannot be known is an error.

        Returns the allocation, the ready jobs' table indices, the trace name of each trace index
        (nodes, then GPUs), the errors by table index, and per job on a node with measured GPUs
        (its position in the ready jobs) the notes on how its GPUs were found.
        """
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
        gpu_node = self._gpu_rows(table, gmap)
        share = np.ones_like(load) if exclusive else self._weighted(table, props, counts, load, gpu_node)
        fallback = np.where(np.isnan(idle) | np.isnan(peak), np.nan, share * idle + (peak - idle) * load)
        ok = np.flatnonzero(ready)
        rows = np.repeat(ready, counts)
        key = node[rows]
        row_job = np.repeat(np.arange(ok.size), counts[ok])
        local, inverse = np.unique(key, return_inverse=True)
        names = [table.names.names[i] for i in local.tolist()]
        gpus, gpu_jobs = None, {}
        if gmap is not None and gpu_node[rows].any():
            gpus, gpu_jobs = _gpu_rows(table, ok, row_job, node[rows], gpu_node[rows], gmap, names)
        alloc = Allocation(
            start=table.start[ok],
            end=table.end[ok],
            row_job=row_job,
            row_node=inverse.astype(np.int64),
            share=share[rows],
            fallback_w=fallback[rows],
            gpus=gpus,
        )
        return alloc, ok, names, errors, gpu_jobs

    @staticmethod
    def _gpu_rows(table: JobTable, gmap: GpuMap | None) -> np.ndarray:
        """Per row: its node has measured GPU series."""
        if gmap is None or not gmap.by_node:
            return np.zeros(table.node.size, dtype=bool)
        index = table.names.index
        ids = [index[n] for n in gmap.by_node if n in index]
        return np.isin(table.node, ids)

    def _weighted(self, table: JobTable, props: np.ndarray, counts: np.ndarray, load: np.ndarray,
                  gpu_node: np.ndarray) -> np.ndarray:
        """Shares by the node class's TRES weights where it has some (and no measured GPUs), else `load`.

        GPUs and memory are spread evenly over a job's nodes (AllocTRES gives totals); the class's
        `mem_gb` is the node's memory (config requires it with `weights.mem_gb`)."""
        node = table.node
        w_cpu, w_gpu, cls_gpus, w_mem, cls_mem = (props[node, k] for k in (3, 4, 5, 6, 7))
        has = ~np.isnan(w_cpu) & ~gpu_node
        if not has.any():
            return load
        held = np.nan_to_num(table.row_cpus, nan=0.0)
        per_node = np.maximum(1, counts)
        gpus = np.repeat(table.gpus / per_node, counts)
        mem = np.repeat((table.mem_gb if table.mem_gb is not None else np.zeros(len(table))) / per_node, counts)
        ncpu = np.nan_to_num(props[node, 0], nan=0.0)
        w_mem = np.nan_to_num(w_mem)
        weighted = tres_share(held * w_cpu, gpus * w_gpu, mem * w_mem, ncpu * w_cpu, np.nan_to_num(cls_gpus) * w_gpu,
                              np.nan_to_num(cls_mem) * w_mem, Weights(1.0, 1.0, 1.0))
        return np.where(has & np.isfinite(weighted), weighted, load)

    def _node_props(self, names: NodeNames) -> np.ndarray:
        """CPUs, idle and max watts of every node named so far, each looked up once."""
        if names is not self._names:
            self._names, self._props = names, np.zeros((0, _PROPS))
        have = self._props.shape[0]
        if have < len(names.names):
            extra = [self._node(n) for n in names.names[have:]]
            self._props = np.vstack([self._props, np.array(extra, dtype=np.float64).reshape(-1, _PROPS)])
        return self._props

    def _node(self, node: str) -> tuple[float, ...]:
        cls = self.cfg.node_class(node)
        cpus = cls.cpus if cls and cls.cpus else (self.node_cpus(node) if self.node_cpus else None)
        idle = cls.idle_watts if cls and cls.idle_watts is not None and cls.max_watts is not None else None
        peak = cls.max_watts if idle is not None else None
        w = cls.weights if cls is not None else None
        return (np.nan if not cpus else float(cpus), np.nan if idle is None else float(idle),
                np.nan if peak is None else float(peak), np.nan if w is None else float(w.cpu),
                np.nan if w is None else float(w.gpu), float(cls.gpus or 0) if cls is not None else 0.0,
                np.nan if w is None else float(w.mem_gb), float(cls.mem_gb or 0) if cls is not None else 0.0)


_PROPS = 8


def _gpu_rows(table: JobTable, ok: np.ndarray, row_job: np.ndarray, row_node: np.ndarray, on_gpu: np.ndarray,
              gmap: GpuMap, names: list[str]) -> tuple[GpuRows, dict[int, list[str]]]:
    """Every GPU of each row's node with the job's fraction of it; GPU traces are appended to `names`."""
    index: dict[str, int] = {}
    rows: list[int] = []
    traces: list[int] = []
    fracs: list[float] = []
    notes: dict[int, list[str]] = {}
    found: dict[int, str] = {}
    node_names = table.names.names
    held_of: dict[int, dict[str, set[str]]] = {}
    for r in np.flatnonzero(on_gpu).tolist():
        k = int(row_job[r])
        j = int(ok[k])
        nodes = table.nodes_of(j)
        held = held_of.get(k)
        if held is None:
            held = held_of[k] = held_indices(table.gpu_ids.get(j), nodes)
        per_node = float(table.gpus[j]) / max(1, len(nodes))
        pairs, how, note = gmap.fractions(base_id(str(table.job_id[j])), node_names[row_node[r]], held, per_node)
        for name, frac in pairs:
            t = index.get(name)
            if t is None:
                t = index[name] = len(names)
                names.append(name)
            rows.append(r)
            traces.append(t)
            fracs.append(frac)
        if any(f > 0 for _, f in pairs):  # the job held (some of) the node's GPUs
            notes.setdefault(k, [])
            found[k] = least_exact(found.get(k, ""), how)
        if note:
            notes.setdefault(k, []).append(note)
    return (GpuRows(np.array(rows, dtype=np.int64), np.array(traces, dtype=np.int64), np.array(fracs, dtype=np.float64)),
            {k: (found.get(k) or "count", n) for k, n in notes.items()})


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
    warnings = [tuple(warn.get(j, ())) for j in ok.tolist()] if warn else [()] * len(nodes)
    ids, parts, accts, users = (a[ok].tolist() for a in (table.job_id, table.partition, table.account, table.user))
    rows = zip(ids, nodes, parts, accts, users, warnings, [False] * len(nodes), strict=True)
    return list(map(tuple.__new__, repeat(JobMeta), rows))  # JobMeta(*row) without its Python-level __new__


def one_malloc_arena() -> None:
    """Keep glibc to one malloc arena for a long streaming run (call before any thread starts).

    The prefetch thread allocates each window's arrays and the main thread frees them; with an
    arena per thread the freed memory fragments, and peak RSS crept up with the span (6 months:
    +50 % over one month). One arena keeps it flat; measured no slower. Fixed thresholds: with
    glibc's sliding ones the arrays moved into the heap after the first large free and
    fragmented it (6 months: 214 MB against 201 with every array of 256 KiB or more mapped on
    its own). Mapping each array on its own costs a page fault per 4 KiB of every temporary,
    though: 1.5 system CPU-s of the month. Arrays under 32 MiB in the heap, which keeps up to
    64 MiB free for the next batch instead of trimming it, cut that to 0.9-1.0 s; peak RSS
    month 185 -> 194 MB, 6 months 191 -> 202 MB (bench_footprint.py). A no-op off glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")  # not ctypes.util.find_library: it runs ldconfig (~8 ms)
        libc.mallopt(-8, 1)  # M_ARENA_MAX
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
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
    from .victoria import VictoriaClient, power_bound

    victoria = VictoriaClient(cfg.victoriametrics, max_watts=power_bound(cfg))
    provider = make_provider(cfg, victoria=victoria)
    cache = os.path.join(cfg.state_dir, "intensity.sqlite")
    try:
        os.makedirs(cfg.state_dir, exist_ok=True)
        if not os.access(cfg.state_dir, os.W_OK):
            raise PermissionError(cfg.state_dir)
    except OSError:
        logging.getLogger("carbond").warning("state_dir %s is not writable: intensity cache off", cfg.state_dir)
        cache = None
    source = IntensitySource(provider, cache, refresh_seconds=cfg.intensity.refresh_seconds,
                             max_value=cfg.intensity.max_g_per_kwh)
    gpu_power = None
    if cfg.gpu is not None:
        from .gpus import GpuClient

        gpu_power = GpuClient(cfg.victoriametrics, cfg.gpu)
    return Engine(cfg, victoria, source, node_cpus, gpu_power=gpu_power), victoria
