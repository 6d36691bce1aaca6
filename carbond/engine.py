"""The accounting engine: jobs in, footprints out. The only place that joins I/O and arithmetic.

Two ways through, one arithmetic (`footprint.compute`, called per batch from `_batch`):

- `account`/`batches` (the daemon, small inputs): VictoriaMetrics is asked once for every node
  over the whole span of the input, then the jobs are accounted in bounded batches, in input order.
- `stream` (bulk: `footprint --jobs`, `backfill`): windows of jobs in time order; each window
  fetches only the node-time its jobs need (PowerCache carries every node's running integral
  across windows and drops samples no later job needs), so memory follows the window, not the
  span, and results come out window by window.

Measured GPUs (carbond.gpus), when `gpu` is configured, enter through the traces and the rows
only: a GPU node's trace becomes what it drew besides its GPUs, each GPU gets a trace of its
own, and a job on such a node gets its CPU-share row plus one row per GPU it held
(`GpuMap.expand`); `compute` then sums them like any other rows. Without per-GPU series, a node
class's `weights` split the node's power by allocated TRES (attribution.tres_share).
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
from .footprint import Allocation, Batch, IntensityView, JobFootprint, JobMeta, compute
from .gpus import SEP, GpuMap, gpu_traces
from .jobs import BadLine, Job, JobTable, NodeNames
from .powercache import PowerCache

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
    GPUs (NaN: unknown; the weights NaN when the class has none)."""
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
        nodes = sorted({n for j in jobs for n in j.nodes})
        lo = min(j.start for j in jobs)  # type: ignore[type-var]
        hi = max(j.end for j in jobs)  # type: ignore[type-var]
        gap = self.cfg.max_gap
        raw = self.power.fetch_power(nodes, lo - gap, hi + gap)
        traces: dict[str, Trace | None] = {n: build_trace(t, w, gap) for n, (t, w) in raw.items()}
        traces, gmap = self._with_gpus(traces, {n: (lo - gap, hi + gap) for n in nodes})
        return traces, self.intensity_view(lo, hi), gmap

    def _with_gpus(self, traces: dict[str, Trace | None], needs: dict[str, tuple[float, float]]
                   ) -> tuple[dict[str, Trace | None], GpuMap | None]:
        """Add each GPU's trace and make its node's trace the rest (no-op without `gpu`)."""
        if self.gpu_power is None or not needs:
            return traces, None
        lo = min(a for a, _ in needs.values())
        hi = max(b for _, b in needs.values())
        gpu_raw = self.gpu_power.fetch_power(sorted(needs), lo, hi)
        if not gpu_raw:
            return traces, GpuMap()
        gpu_nodes = {k.partition(SEP)[0] for k in gpu_raw}
        node_raw = {n: (tr.t, tr.w) for n, tr in traces.items() if tr is not None and n in gpu_nodes}
        extra, gmap = gpu_traces(node_raw, gpu_raw, self.cfg.max_gap)
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
        alloc, ok, names, _errors, _expanded = self._allocate(table, _ready(table), gmap)
        return alloc, _metas(table, ok), names

    # -- one batch: allocation, then the arithmetic ------------------------------------------------
    def _batch(self, table: JobTable, trace_of: TraceOf, view: IntensityView | None,
               gmap: GpuMap | None = None) -> Batch:
        pue = self.cfg.pue
        status = _statuses(table)
        alloc, ok, names, errors, expanded = self._allocate(table, status == 0, gmap)
        acc = None
        metas = _metas(table, ok)
        for k, (rows, notes) in expanded.items():
            m = metas[k]
            metas[k] = m._replace(nodes=rows, warnings=(*m.warnings, *notes), gpu=any(SEP in r for r in rows))
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
                  ) -> tuple[Allocation, np.ndarray, list[str], dict[int, str], dict[int, tuple[tuple[str, ...], list[str]]]]:
        """The flattened job-node table of the ready jobs; a job whose shares cannot be known is an error.

        Returns the allocation, the ready jobs' table indices, the trace name of each local node
        index, the errors by table index, and per GPU job (position in the ready jobs) its row names
        (`node`, `node/gpuN`) and notes.
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
        key, r_share, r_fb = node[rows], share[rows], fallback[rows]
        row_job = np.repeat(np.arange(ok.size), counts[ok])
        extra: list[str] = []
        expanded: dict[int, tuple[tuple[str, ...], list[str]]] = {}
        if gmap is not None and gpu_node[rows].any():
            key, r_share, r_fb, row_job, extra, expanded = _expand_gpus(
                table, ok, counts, (key, r_share, r_fb, row_job), load[rows], gpu_node[rows], gmap)
        local, inverse = np.unique(key, return_inverse=True)
        alloc = Allocation(
            start=table.start[ok],
            end=table.end[ok],
            row_job=row_job,
            row_node=inverse.astype(np.int64),
            share=r_share,
            fallback_w=r_fb,
        )
        names = table.names.names
        n = len(names)
        return alloc, ok, [names[i] if i < n else extra[i - n] for i in local.tolist()], errors, expanded

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

        GPUs are spread evenly over a job's nodes (AllocTRES gives a total); memory is not in the
        job record, so `weights.mem_gb` stays out on both sides (as attribution.weighted_share)."""
        node = table.node
        w_cpu, w_gpu, cls_gpus = props[node, 3], props[node, 4], props[node, 5]
        has = ~np.isnan(w_cpu) & ~gpu_node
        if not has.any():
            return load
        held = np.nan_to_num(table.row_cpus, nan=0.0)
        gpus = np.repeat(table.gpus / np.maximum(1, counts), counts)
        ncpu = np.nan_to_num(props[node, 0], nan=0.0)
        zero = np.zeros(node.size)
        weighted = tres_share(held * w_cpu, gpus * w_gpu, zero, ncpu * w_cpu, np.nan_to_num(cls_gpus) * w_gpu, zero,
                              Weights(1.0, 1.0, 0.0))
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
                np.nan if w is None else float(w.gpu), float(cls.gpus or 0) if cls is not None else 0.0)


_PROPS = 6


@dataclass(frozen=True)
class _GpuJob:
    """What GpuMap.expand reads of a job."""

    job_id: str
    nodes: tuple[str, ...]
    gpus: int
    gpu_ids: object


def _expand_gpus(table: JobTable, ok: np.ndarray, counts: np.ndarray, cols: tuple, load: np.ndarray,
                 gpu_row: np.ndarray, gmap: GpuMap):
    """The row columns with each GPU job's rows replaced by GpuMap.expand's (its node rows at their CPU
    share of the rest, plus its GPUs); GPU traces get keys after the NodeNames indices."""
    key, share, fb, row_job = cols
    bounds = np.concatenate(([0], np.cumsum(counts[ok])))
    n = len(table.names.names)
    index = table.names.index
    extra: dict[str, int] = {}
    expanded: dict[int, tuple[tuple[str, ...], list[str]]] = {}
    parts: list[tuple[np.ndarray, ...]] = []
    prev = 0
    for k in np.unique(row_job[gpu_row]).tolist():
        a, b = int(bounds[k]), int(bounds[k + 1])
        parts.append((key[prev:a], share[prev:a], fb[prev:a], row_job[prev:a]))
        j = int(ok[k])
        job = _GpuJob(str(table.job_id[j]), table.nodes_of(j), int(table.gpus[j]), table.gpu_ids.get(j))
        names, rows, notes = gmap.expand(job, list(zip(share[a:b].tolist(), fb[a:b].tolist(), strict=True)),
                                         load[a:b].tolist())
        keys = [n + extra.setdefault(x, len(extra)) if SEP in x else index[x] for x in names]
        parts.append((np.array(keys, dtype=np.int64), np.array([r[0] for r in rows], dtype=np.float64),
                      np.array([r[1] for r in rows], dtype=np.float64), np.full(len(rows), k, dtype=np.int64)))
        expanded[k] = (tuple(names), notes)
        prev = b
    parts.append((key[prev:], share[prev:], fb[prev:], row_job[prev:]))
    key, share, fb, row_job = (np.concatenate(c) for c in zip(*parts, strict=True))
    return key, share, fb, row_job, list(extra), expanded


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
