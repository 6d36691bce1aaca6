"""Footprints: attribute node energy to jobs and price each UTC half-hour in CO2e. Pure numpy.

The input is a flattened job-node table (one row per node a job ran on), so a month of a
large cluster is a handful of array operations, not a loop over jobs or samples:

    job-node rows --cut at half-hours--> pieces --per node: E(b)-E(a)--> measured joules
    --x share, + estimate for unmeasured seconds--> job joules per piece
    --sum per (job, half-hour)--> periods --x intensity x PUE--> grams
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import repeat
from typing import NamedTuple

import numpy as np

from .energy import HALF_HOUR, Trace, split_half_hours, window
from .times import iso, iso_many
from .units import J_PER_KWH

FULL = 1.0 - 1e-9


@dataclass(frozen=True)
class Allocation:
    """Jobs and the nodes they held, as parallel arrays (J jobs, K job-node rows)."""

    start: np.ndarray
    end: np.ndarray
    row_job: np.ndarray
    """Job index of each job-node row."""
    row_node: np.ndarray
    """Index into the trace list of each row's node."""
    share: np.ndarray
    """Fraction of the node's energy the job carries (CPUs held / node CPUs, or 1)."""
    fallback_w: np.ndarray
    """The job's own watts on that node when the node has no sample at all (NaN: unknown)."""
    gpus: GpuRows | None = None
    """Rows on nodes with measured GPUs: every GPU of the node and the job's fraction of it (R5)."""


@dataclass(frozen=True)
class GpuRows:
    """Sparse (row, GPU) pairs: for a job-node row on a node with measured GPUs, one entry per GPU of
    that node (the job's fraction of it: 1 held, 0 not, or its count's share when indices are unknown),
    so the node's GPUs are summed whole (S) and the job's own part (sum f x G) in one pass."""

    row: np.ndarray
    trace: np.ndarray
    """Index into the trace list of the GPU's physical trace."""
    frac: np.ndarray


@dataclass(frozen=True)
class IntensityView:
    """Grid intensity per UTC half-hour from `first_slot` on; NaN where unknown."""

    first_slot: int
    values: np.ndarray
    kinds: np.ndarray
    stale: np.ndarray

    def at(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = (np.asarray(slots, dtype=np.int64) - self.first_slot) // HALF_HOUR
        ok = (idx >= 0) & (idx < self.values.size)
        safe = np.where(ok, idx, 0)
        values = np.where(ok, self.values[safe] if self.values.size else np.nan, np.nan)
        kinds = np.where(ok, self.kinds[safe] if self.kinds.size else "missing", "missing")
        stale = np.where(ok, self.stale[safe] if self.stale.size else False, False)
        return values, kinds, stale


@dataclass(frozen=True)
class Accounting:
    """Everything computed for a batch; `job(i)` turns one job's slice into a JobFootprint."""

    energy_j: np.ndarray
    operational_g: np.ndarray
    embodied_g: np.ndarray
    coverage: np.ndarray
    intensity: np.ndarray
    """Mean grid intensity per job: energy-weighted, or time-weighted for a job that used none."""
    row_energy_j: np.ndarray
    period_job: np.ndarray
    period_start: np.ndarray
    period_end: np.ndarray
    period_energy_j: np.ndarray
    period_intensity: np.ndarray
    period_kind: np.ndarray
    period_stale: np.ndarray
    period_g: np.ndarray
    row_offsets: np.ndarray
    period_offsets: np.ndarray
    gpu_energy_j: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Per job: the part of energy_j from its own measured GPUs (R5)."""
    piece_row: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Per piece (a row cut at half-hours): its row, half-hour, seconds and measured joules (no
    estimate), for closing half-hours (carbond.idle)."""
    piece_slot: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    piece_seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    piece_measured_j: np.ndarray = field(default_factory=lambda: np.zeros(0))


def compute(
    alloc: Allocation,
    traces: Sequence[Trace | None],
    intensity: IntensityView | None,
    pue: float = 1.0,
    embodied_g_per_node_hour: float = 0.0,
) -> Accounting:
    """Energy and emissions of every job in `alloc` (docs/accounting.md R2-R9); rows grouped by job.

    `intensity` None prices nothing (NaN grams): carbond.idle needs only the energy."""
    n_jobs, n_rows = alloc.start.size, alloc.row_job.size
    pieces = split_half_hours(alloc.start[alloc.row_job], alloc.end[alloc.row_job])
    node_j, covered_s = _integrate(alloc.row_node[pieces.owner], pieces.start, pieces.end, traces)
    seconds = pieces.end - pieces.start
    share = alloc.share[pieces.owner]
    meas_j, gpu_j, e_share = _measured(alloc, pieces, node_j, share, traces)

    # The job's own mean measured power on a node over its stretch fills that stretch's unmeasured seconds.
    row_mj = np.bincount(pieces.owner, meas_j, minlength=n_rows)
    row_cs = np.bincount(pieces.owner, covered_s, minlength=n_rows)
    row_s = np.bincount(pieces.owner, seconds, minlength=n_rows)
    est_w = np.where(row_cs > 0, np.divide(row_mj, row_cs, out=np.zeros(n_rows), where=row_cs > 0), alloc.fallback_w)
    missing_s = np.clip(seconds - covered_s, 0.0, None)
    piece_j = meas_j + np.where(missing_s > 0, est_w[pieces.owner] * missing_s, 0.0)

    # One period per (job, half-hour): sum the job's nodes.
    piece_job = alloc.row_job[pieces.owner]
    key = piece_job * (1 << 32) + (pieces.slot // HALF_HOUR - _min_slot(pieces.slot))
    keys, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    period_job = piece_job[first]
    period_j = np.bincount(inverse, piece_j, minlength=keys.size)
    if intensity is None:
        intensity_v, kinds, stale = np.full(keys.size, np.nan), np.full(keys.size, "missing"), np.zeros(keys.size, bool)
    else:
        intensity_v, kinds, stale = intensity.at(pieces.slot[first])
    period_g = period_j / J_PER_KWH * intensity_v * pue

    job_j = np.bincount(period_job, period_j, minlength=n_jobs)
    period_s = pieces.end[first] - pieces.start[first]
    by_energy = np.bincount(period_job, period_j * intensity_v, minlength=n_jobs)
    by_time = np.bincount(period_job, period_s * intensity_v, minlength=n_jobs)
    job_s = np.bincount(period_job, period_s, minlength=n_jobs)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_i = np.where(job_j > 0, by_energy / job_j, by_time / job_s)

    # Embodied: per node-hour, shared by the job's share of the node's energy (R9), never per GPU.
    embodied = embodied_g_per_node_hour / 3600.0 * np.bincount(piece_job, e_share * seconds, minlength=n_jobs)
    total_s = np.bincount(alloc.row_job, row_s, minlength=n_jobs)
    coverage = np.divide(
        np.bincount(alloc.row_job, row_cs, minlength=n_jobs), total_s, out=np.zeros(n_jobs), where=total_s > 0
    )
    return Accounting(
        energy_j=job_j,
        operational_g=np.bincount(period_job, period_g, minlength=n_jobs),
        embodied_g=embodied,
        coverage=np.minimum(coverage, 1.0),
        intensity=mean_i,
        row_energy_j=np.bincount(pieces.owner, piece_j, minlength=n_rows),
        period_job=period_job,
        period_start=pieces.start[first],
        period_end=pieces.end[first],
        period_energy_j=period_j,
        period_intensity=intensity_v,
        period_kind=kinds,
        period_stale=stale,
        period_g=period_g,
        row_offsets=_offsets(alloc.row_job, n_jobs),
        period_offsets=_offsets(period_job, n_jobs),
        gpu_energy_j=np.bincount(piece_job, gpu_j, minlength=n_jobs),
        piece_row=pieces.owner,
        piece_slot=pieces.slot,
        piece_seconds=seconds,
        piece_measured_j=meas_j,
    )


def _measured(alloc: Allocation, pieces, node_j: np.ndarray, share: np.ndarray, traces: Sequence[Trace | None]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per piece: the job's measured joules (R4/R5), the part from its own GPUs, and its share of
    the node's energy (R9: the node share, or e/N on a node with measured GPUs)."""
    meas = share * node_j
    gpu = np.zeros(node_j.size)
    g = alloc.gpus
    if g is None or not g.row.size:
        return meas, gpu, share
    # Each (row, GPU) pair repeated over the row's pieces (pieces are grouped by row, in row order).
    offs = _offsets(pieces.owner, alloc.row_job.size)
    counts = offs[g.row + 1] - offs[g.row]
    pair = np.repeat(np.arange(g.row.size), counts)
    piece = np.repeat(offs[g.row], counts) + (np.arange(pair.size) - np.repeat(np.cumsum(counts) - counts, counts))
    gj, _ = _integrate(g.trace[pair], pieces.start[piece], pieces.end[piece], traces)
    n = node_j.size
    all_gpu = np.bincount(piece, gj, minlength=n)
    own_raw = np.bincount(piece, g.frac[pair] * gj, minlength=n)
    on_gpu_node = np.zeros(n, dtype=bool)
    on_gpu_node[piece] = True
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(all_gpu > node_j, np.where(all_gpu > 0, node_j / all_gpu, 0.0), 1.0)
        own = k * own_raw
        rest = np.where(all_gpu > node_j, 0.0, node_j - all_gpu)  # exactly 0 when the GPUs are scaled down
        meas = np.where(on_gpu_node, own + share * rest, meas)
        e_share = np.where(on_gpu_node & (node_j > 0), meas / np.where(node_j > 0, node_j, 1.0), share)
    return meas, np.where(on_gpu_node, own, 0.0), e_share


def _min_slot(slots: np.ndarray) -> int:
    return int(slots.min() // HALF_HOUR) if slots.size else 0


def _offsets(owner: np.ndarray, n: int) -> np.ndarray:
    """Start of each owner's run in an array grouped by owner (length n + 1)."""
    return np.concatenate(([0], np.cumsum(np.bincount(owner, minlength=n))))


def _integrate(trace_of: np.ndarray, start: np.ndarray, end: np.ndarray, traces: Sequence[Trace | None]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Measured joules and covered seconds of every window [start, end] on trace `trace_of`, one
    searchsorted pass per trace."""
    measured = np.zeros(trace_of.size)
    covered = np.zeros(trace_of.size)
    order = np.argsort(trace_of, kind="stable")
    bounds = np.searchsorted(trace_of[order], np.arange(len(traces) + 1))
    for n, trace in enumerate(traces):
        if trace is None or bounds[n] == bounds[n + 1]:
            continue
        idx = order[bounds[n] : bounds[n + 1]]
        measured[idx], covered[idx] = window(trace, start[idx], end[idx])
    return measured, covered


# ---- the job-level view -------------------------------------------------------------------


class NodeEnergy(NamedTuple):
    node: str
    energy_kwh: float
    share: float


class Period(NamedTuple):
    """One UTC half-hour of a job, ready for output: RFC 3339 times, rounded numbers, None if unknown."""

    start: str
    end: str
    energy_kwh: float
    intensity_g_per_kwh: float | None
    intensity_kind: str
    """actual, forecast, constant, csv, series or missing; `-stale` appended when a cached value
    stood in for an unreachable provider."""
    co2e_g: float | None


class Status(StrEnum):
    """Whether a job went through the arithmetic, and if not, why (a footprint's `status`)."""

    OK = "ok"
    NOT_STARTED = "not-started"
    RUNNING = "running"
    ZERO_LENGTH = "zero-length"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class JobFootprint:
    job_id: str
    status: str
    """A Status: ok | not-started | zero-length | running | error"""
    energy_kwh: float = 0.0
    co2e_g: float | None = 0.0
    operational_g: float | None = 0.0
    embodied_g: float = 0.0
    intensity_g_per_kwh: float | None = None
    pue: float = 1.0
    method: str = "measured"
    coverage: float = 1.0
    start: float | None = None
    end: float | None = None
    nodes: tuple[NodeEnergy, ...] = ()
    periods: tuple[Period, ...] = ()
    warnings: tuple[str, ...] = ()
    error: str | None = None
    partition: str = ""
    account: str = ""
    user: str = ""
    gpu_energy_kwh: float | None = None
    """The part of energy_kwh from the job's own measured GPUs; None where the job held none."""
    gpu_found: str | None = None
    """How its GPUs were found: idx (caught while it ran), label (the series' job label) or count."""

    def to_dict(self) -> dict:
        d = {
            "job_id": self.job_id,
            "status": self.status,
            "energy_kwh": self.energy_kwh,
            "co2e_g": self.co2e_g,
            "operational_g": self.operational_g,
            "embodied_g": self.embodied_g,
            "intensity_g_per_kwh": self.intensity_g_per_kwh,
            "pue": self.pue,
            "method": self.method,
            "coverage": self.coverage,
            "start": iso(self.start) if self.start is not None else None,
            "end": iso(self.end) if self.end is not None else None,
            "nodes": [dict(zip(NodeEnergy._fields, n, strict=True)) for n in self.nodes],
            "periods": [dict(zip(Period._fields, p, strict=True)) for p in self.periods],
        }
        if self.gpu_energy_kwh is not None:
            d["gpu_energy_kwh"] = self.gpu_energy_kwh
            d["gpu_found"] = self.gpu_found
        if self.warnings:
            d["warnings"] = list(self.warnings)
        if self.error:
            d["error"] = self.error
        return d


def method_of(coverage: float) -> str:
    if coverage >= FULL:
        return "measured"
    return "estimated" if coverage <= 0.0 else "mixed"


class JobMeta(NamedTuple):
    """What the vector core does not carry: ids, names and notes, per job in `Allocation` order.
    (A tuple: the engine makes one per job, 2x faster than a dataclass's __init__.)"""

    job_id: str
    nodes: tuple[str, ...]
    partition: str = ""
    account: str = ""
    user: str = ""
    warnings: tuple[str, ...] = ()
    gpu: bool | str = False
    """How the job's measured GPUs were found (gpus.FOUND_BY), falsy when it held none: formatted
    by to_dict (with gpu_energy_kwh), not the bulk path."""


SIGNIFICANT = 12


def significant(values: np.ndarray, digits: int = SIGNIFICANT) -> np.ndarray:
    """Round to `digits` significant digits: tiny jobs keep their precision, JSON loses float noise."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(all="ignore"):
        magnitude = np.floor(np.log10(np.abs(values)))
        scale = 10.0 ** (digits - 1 - np.nan_to_num(magnitude, posinf=0.0, neginf=0.0))
        rounded = np.round(values * scale) / scale
    return np.where(np.isfinite(rounded) & (values != 0), rounded, values)


def _out(values: np.ndarray) -> list[float | None]:
    """Output-ready floats (already `significant`), NaN (unknown) as None."""
    out = values.tolist()
    if np.isnan(values).any():
        out = [None if v != v else v for v in out]
    return out


@dataclass(frozen=True)
class Columns:
    """A batch's output values as Python lists, converted once per array (the bulk path's currency)."""

    p_start: list[str]
    p_end: list[str]
    p_kwh: list[float | None]
    p_intensity: list[float | None]
    p_kind: list[str]
    p_g: list[float | None]
    row_kwh: list[float | None]
    share: list[float | None]
    kwh: list[float | None]
    total_g: list[float | None]
    op_g: list[float | None]
    emb_g: list[float | None]
    cov: list[float | None]
    mean_i: list[float | None]
    start: list[float]
    end: list[float]
    row_offsets: list[int]
    period_offsets: list[int]
    stale: list[bool]
    forecast: list[bool]
    gpu_kwh: list[float | None]


def numbers(acc: Accounting, alloc: Allocation) -> dict[str, np.ndarray]:
    """A batch's output numbers (Columns' names), rounded by `significant`, NaN where unknown."""
    return {
        "p_kwh": significant(acc.period_energy_j / J_PER_KWH),
        "p_intensity": significant(acc.period_intensity),
        "p_g": significant(acc.period_g),
        "row_kwh": significant(acc.row_energy_j / J_PER_KWH),
        "share": significant(alloc.share),
        "kwh": significant(acc.energy_j / J_PER_KWH),
        "total_g": significant(acc.operational_g + acc.embodied_g),
        "op_g": significant(acc.operational_g),
        "emb_g": significant(acc.embodied_g),
        "cov": significant(acc.coverage),
        "mean_i": significant(acc.intensity),
        "gpu_kwh": significant(acc.gpu_energy_j / J_PER_KWH),
    }


def notes(acc: Accounting) -> tuple[np.ndarray, np.ndarray]:
    """Per job: whether some half-hour's intensity is stale, and whether some is a forecast."""
    n = acc.energy_j.size
    return (np.bincount(acc.period_job, acc.period_stale, minlength=n) > 0,
            np.bincount(acc.period_job, acc.period_kind == "forecast", minlength=n) > 0)


def columns(acc: Accounting, alloc: Allocation) -> Columns:
    kinds = acc.period_kind.tolist()
    if acc.period_stale.any():
        kinds = [k + "-stale" if s else k for k, s in zip(kinds, acc.period_stale.tolist(), strict=True)]
    stale, forecast = notes(acc)
    return Columns(
        p_start=iso_many(acc.period_start),
        p_end=iso_many(acc.period_end),
        p_kind=kinds,
        start=alloc.start.tolist(),
        end=alloc.end.tolist(),
        row_offsets=acc.row_offsets.tolist(),
        period_offsets=acc.period_offsets.tolist(),
        stale=stale.tolist(),
        forecast=forecast.tolist(),
        **{k: _out(v) for k, v in numbers(acc, alloc).items()},
    )


def footprints(acc: Accounting, alloc: Allocation, metas: Sequence[JobMeta], pue: float,
               c: Columns | None = None) -> Iterator[JobFootprint]:
    """Per-job results from the batch arrays; every number and time is formatted once, per array
    (pass `c` when the caller already has the columns)."""
    c = c if c is not None else columns(acc, alloc)
    rows = zip(c.p_start, c.p_end, c.p_kwh, c.p_intensity, c.p_kind, c.p_g, strict=True)
    periods = list(map(tuple.__new__, repeat(Period), rows))  # Period(*row) without its Python-level __new__
    for i, meta in enumerate(metas):
        r0, r1 = c.row_offsets[i], c.row_offsets[i + 1]
        nodes = tuple(map(NodeEnergy, meta.nodes, c.row_kwh[r0:r1], c.share[r0:r1]))
        yield job_footprint(c, i, meta, nodes, tuple(periods[c.period_offsets[i] : c.period_offsets[i + 1]]), pue)


@dataclass(frozen=True)
class Batch:
    """A bounded slice of the input, accounted: the arrays of the jobs that went through the
    arithmetic and, in input order, either an index into them or a finished result."""

    slots: list[int | JobFootprint]
    metas: list[JobMeta]
    acc: Accounting | None
    alloc: Allocation | None
    pue: float

    def footprints(self) -> Iterator[JobFootprint]:
        done = list(footprints(self.acc, self.alloc, self.metas, self.pue)) if self.acc is not None else []
        for slot in self.slots:
            yield done[slot] if isinstance(slot, int) else slot

    def failures(self) -> int:
        """Jobs of the batch that could not be accounted (an error, or a number that is not one)."""
        count = sum(1 for s in self.slots if isinstance(s, JobFootprint) and s.status == "error")
        if self.acc is not None:
            bad = ~np.isfinite(self.acc.energy_j) | ~np.isfinite(self.acc.operational_g)
            count += int(np.count_nonzero(bad))
        return count


def job_footprint(c: Columns, i: int, meta: JobMeta, nodes, periods, pue: float) -> JobFootprint:
    kwh, op_g = c.kwh[i], c.op_g[i]
    warnings = list(meta.warnings)
    status, error = "ok", None
    if kwh is None:
        status = "error"
        bad = [n.node for n in nodes if n.energy_kwh is None]
        error = f"no power samples for {', '.join(bad)} in the job's window and no idle_watts/max_watts to estimate from"
    elif op_g is None:
        status = "error"
        gaps = [p.start for p in periods if p.intensity_g_per_kwh is None]
        error = f"no grid intensity for {len(gaps)} half-hour(s) from {gaps[0]}"
    if c.stale[i]:
        warnings.append("intensity provider unreachable: cached values used")
    if c.forecast[i]:
        warnings.append("forecast intensity used for some half-hours (actual not yet published)")
    return JobFootprint(
        job_id=meta.job_id,
        status=status,
        energy_kwh=kwh,
        co2e_g=c.total_g[i],
        operational_g=op_g,
        embodied_g=c.emb_g[i],
        intensity_g_per_kwh=c.mean_i[i],
        pue=pue,
        method=method_of(c.cov[i]),
        coverage=c.cov[i],
        start=c.start[i],
        end=c.end[i],
        nodes=nodes,
        periods=periods,
        warnings=tuple(warnings),
        error=error,
        partition=meta.partition,
        account=meta.account,
        user=meta.user,
        gpu_energy_kwh=c.gpu_kwh[i] if meta.gpu else None,
        gpu_found=str(meta.gpu) if meta.gpu else None,
    )
