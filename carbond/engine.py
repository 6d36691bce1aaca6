"""The accounting engine: jobs in, footprints out. The only place that joins I/O and arithmetic.

It asks VictoriaMetrics once for every node over the batch's whole span (the client splits that
by time and node groups), the intensity source once for every half-hour, then runs the pure
numpy core in bounded batches, so requests grow with nodes and time, never with jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .attribution import weighted_share
from .config import Config, NodeClass
from .energy import Trace, build_trace
from .footprint import Allocation, Batch, IntensityView, JobFootprint, JobMeta, compute
from .gpus import GpuMap, gpu_traces
from .jobs import BadLine, Job

BATCH = 50_000


class PowerSource(Protocol):
    def fetch_power(self, nodes: Sequence[str], start: float, end: float) -> dict[str, tuple[np.ndarray, np.ndarray]]: ...


class IntensityLookup(Protocol):
    def lookup(self, start: float, end: float): ...


@dataclass
class Engine:
    cfg: Config
    power: PowerSource
    intensity: IntensityLookup
    node_cpus: Callable[[str], int | None] | None = None
    """Extra source of node CPU counts (e.g. Slurm) for nodes the config does not describe."""
    _nodes: dict[str, tuple[NodeClass | None, int | None]] = field(default_factory=dict)
    gpu_power: PowerSource | None = None
    """Per-GPU series (carbond.gpus.GpuClient) when `gpu` is configured."""
    _gpu: GpuMap | None = None

    def account(self, items: Iterable[Job | BadLine]) -> Iterator[JobFootprint]:
        """Footprints in input order; jobs that cannot be accounted get a status, never vanish."""
        for batch in self.batches(items):
            yield from batch.footprints()

    def batches(self, items: Iterable[Job | BadLine]) -> Iterator[Batch]:
        """The input accounted in bounded batches, in input order (the bulk writers' way in)."""
        items = list(items)
        ready = [j for j in items if isinstance(j, Job) and _status(j) is None]
        traces, view = self._inputs(ready) if ready else ({}, None)
        for lo in range(0, len(items), BATCH):
            yield self._batch(items[lo : lo + BATCH], traces, view)

    def _inputs(self, jobs: list[Job]) -> tuple[dict[str, Trace], IntensityView]:
        nodes = sorted({n for j in jobs for n in j.nodes})
        lo = min(j.start for j in jobs)  # type: ignore[type-var]
        hi = max(j.end for j in jobs)  # type: ignore[type-var]
        gap = self.cfg.max_gap
        raw = self.power.fetch_power(nodes, lo - gap, hi + gap)
        if self.gpu_power is not None:  # GPU nodes: their GPUs' traces, and the node besides them
            traces, self._gpu = gpu_traces(raw, self.gpu_power.fetch_power(nodes, lo - gap, hi + gap), gap)
        else:
            traces = {n: build_trace(t, w, gap) for n, (t, w) in raw.items()}
        table = self.intensity.lookup(lo, hi)
        view = IntensityView(table.first_slot, table.values, np.asarray(table.kinds), np.asarray(table.stale))
        return traces, view

    def _batch(self, chunk: list[Job | BadLine], traces: dict[str, Trace], view: IntensityView | None) -> Batch:
        pue = self.cfg.pue
        jobs = [j for j in chunk if isinstance(j, Job) and _status(j) is None]
        alloc, metas, names, errors = self._allocate(jobs)
        acc = None
        if metas and view is not None:
            trace_list = [traces.get(n) for n in names]
            acc = compute(alloc, trace_list, view, pue, self.cfg.embodied.g_per_node_hour)
        index = {m.job_id: i for i, m in enumerate(metas)}
        slots: list[int | JobFootprint] = []
        for item in chunk:
            if isinstance(item, BadLine):
                slots.append(JobFootprint(item.job_id, "error", error=f"line {item.line_no}: {item.error}", pue=pue))
            elif (status := _status(item)) is not None:
                slots.append(_unaccounted(item, status, pue))
            elif item.job_id in errors:
                slots.append(JobFootprint(item.job_id, "error", error=errors[item.job_id], pue=pue))
            else:
                slots.append(index[item.job_id])
        return Batch(slots, metas, acc, alloc, pue)

    def _allocate(self, jobs: list[Job]) -> tuple[Allocation, list[JobMeta], list[str], dict[str, str]]:
        """The flattened job-node table; a job whose shares cannot be known becomes an error."""
        node_index: dict[str, int] = {}
        start, end, row_job, row_node, share, fallback = [], [], [], [], [], []
        metas: list[JobMeta] = []
        errors: dict[str, str] = {}
        for job in jobs:
            try:
                rows = [self._row(job, i) for i in range(len(job.nodes))]
            except _NoShare as exc:
                errors[job.job_id] = str(exc)
                continue
            j = len(metas)
            names, notes = job.nodes, []
            if self._gpu is not None and any(self._gpu.has(n) for n in job.nodes):
                names, rows, notes = self._gpu.expand(job, rows, [self._load(job, i) for i in range(len(job.nodes))])
            metas.append(JobMeta(job.job_id, names, job.partition, job.account, job.user, list(job.warnings) + notes,
                                 gpu=names is not job.nodes))
            start.append(job.start)
            end.append(job.end)
            for node, (s, fw) in zip(names, rows, strict=False):
                row_job.append(j)
                row_node.append(node_index.setdefault(node, len(node_index)))
                share.append(s)
                fallback.append(fw)
        alloc = Allocation(
            start=np.array(start, dtype=np.float64),
            end=np.array(end, dtype=np.float64),
            row_job=np.array(row_job, dtype=np.int64),
            row_node=np.array(row_node, dtype=np.int64),
            share=np.array(share, dtype=np.float64),
            fallback_w=np.array(fallback, dtype=np.float64),
        )
        return alloc, metas, list(node_index), errors

    def _node(self, node: str) -> tuple[NodeClass | None, int | None]:
        """The node's class and CPU count, looked up once per node."""
        if node not in self._nodes:
            cls = self.cfg.node_class(node)
            cpus = cls.cpus if cls and cls.cpus else (self.node_cpus(node) if self.node_cpus else None)
            self._nodes[node] = (cls, cpus)
        return self._nodes[node]

    def _row(self, job: Job, i: int) -> tuple[float, float]:
        """(share of node energy, fallback watts) for the job's i-th node."""
        node = job.nodes[i]
        cls, node_cpus = self._node(node)
        held = job.cpus[i] if job.cpus else None
        if held is None:
            load = 1.0
        elif node_cpus:
            load = min(1.0, held / node_cpus)
        elif self.cfg.attribution == "exclusive":
            load = 1.0
        else:
            raise _NoShare(
                f"cannot attribute energy: CPU count of node {node} unknown (add it under `nodes` in the config)"
            )
        share = 1.0 if self.cfg.attribution == "exclusive" else load
        if cls is not None and cls.weights is not None and self.cfg.attribution != "exclusive" and not (
            self._gpu is not None and self._gpu.has(node)
        ):
            share = weighted_share(cls, job, i, node_cpus, share)
        if cls and cls.idle_watts is not None and cls.max_watts is not None:
            # Its share of the idle floor plus the dynamic power of its own busy CPUs.
            fallback = share * cls.idle_watts + (cls.max_watts - cls.idle_watts) * load
        else:
            fallback = float("nan")
        return share, fallback

    def _load(self, job: Job, i: int) -> float:
        """CPUs held / node CPUs (1 when unknown): the share of a GPU node's power besides its GPUs."""
        _, node_cpus = self._node(job.nodes[i])
        held = job.cpus[i] if job.cpus else None
        return min(1.0, held / node_cpus) if held is not None and node_cpus else 1.0


class _NoShare(Exception):
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


def _unaccounted(job: Job, status: str, pue: float) -> JobFootprint:
    if status.startswith("error:"):
        return JobFootprint(job.job_id, "error", error=status[6:], start=job.start, end=job.end, pue=pue)
    return JobFootprint(
        job.job_id,
        status,
        pue=pue,
        method="none",
        coverage=0.0 if status != "zero-length" else 1.0,
        start=job.start,
        end=job.end,
        partition=job.partition,
        account=job.account,
        user=job.user,
        warnings=job.warnings,
    )


def build_engine(cfg: Config, node_cpus: Callable[[str], int | None] | None = None):
    """The engine wired to the configured VictoriaMetrics and intensity source (with its cache)."""
    import logging
    import os

    from .intensity import IntensitySource, make_provider
    from .victoria import VictoriaClient

    victoria = VictoriaClient(cfg.victoriametrics)
    provider = make_provider(cfg, victoria=victoria)
    gpu_power = None
    if cfg.gpu is not None:
        from .gpus import GpuClient

        gpu_power = GpuClient(cfg.victoriametrics, cfg.gpu)
    cache = os.path.join(cfg.state_dir, "intensity.sqlite")
    try:
        os.makedirs(cfg.state_dir, exist_ok=True)
        if not os.access(cfg.state_dir, os.W_OK):
            raise PermissionError(cfg.state_dir)
    except OSError:
        logging.getLogger("carbond").warning("state_dir %s is not writable: intensity cache off", cfg.state_dir)
        cache = None
    source = IntensitySource(provider, cache, refresh_seconds=cfg.intensity.refresh_seconds)
    return Engine(cfg, victoria, source, node_cpus, gpu_power=gpu_power), victoria
