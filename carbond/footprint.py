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

import numpy as np

from .energy import HALF_HOUR, Trace, split_half_hours, window
from .times import iso

J_PER_KWH = 3.6e6
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


def compute(
    alloc: Allocation,
    traces: Sequence[Trace | None],
    intensity: IntensityView,
    pue: float = 1.0,
    embodied_g_per_node_hour: float = 0.0,
) -> Accounting:
    """Energy and emissions of every job in `alloc`; rows must be grouped by job, in job order."""
    n_jobs, n_rows = alloc.start.size, alloc.row_job.size
    pieces = split_half_hours(alloc.start[alloc.row_job], alloc.end[alloc.row_job])
    measured_j, covered_s = _measure(pieces, alloc.row_node, traces)
    seconds = pieces.end - pieces.start

    # Mean measured node power over each job-node window fills that window's unmeasured seconds.
    row_mj = np.bincount(pieces.owner, measured_j, minlength=n_rows)
    row_cs = np.bincount(pieces.owner, covered_s, minlength=n_rows)
    row_s = np.bincount(pieces.owner, seconds, minlength=n_rows)
    mean_w = np.divide(row_mj, row_cs, out=np.zeros(n_rows), where=row_cs > 0)
    est_w = np.where(row_cs > 0, alloc.share * mean_w, alloc.fallback_w)
    missing_s = np.clip(seconds - covered_s, 0.0, None)
    piece_j = alloc.share[pieces.owner] * measured_j + np.where(missing_s > 0, est_w[pieces.owner] * missing_s, 0.0)

    # One period per (job, half-hour): sum the job's nodes.
    piece_job = alloc.row_job[pieces.owner]
    key = piece_job * (1 << 32) + (pieces.slot // HALF_HOUR - _min_slot(pieces.slot))
    keys, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    period_job = piece_job[first]
    period_j = np.bincount(inverse, piece_j, minlength=keys.size)
    intensity_v, kinds, stale = intensity.at(pieces.slot[first])
    period_g = period_j / J_PER_KWH * intensity_v * pue

    row_share_h = alloc.share * row_s / 3600.0
    embodied = embodied_g_per_node_hour * np.bincount(alloc.row_job, row_share_h, minlength=n_jobs)
    total_s = np.bincount(alloc.row_job, row_s, minlength=n_jobs)
    coverage = np.divide(
        np.bincount(alloc.row_job, row_cs, minlength=n_jobs), total_s, out=np.zeros(n_jobs), where=total_s > 0
    )
    return Accounting(
        energy_j=np.bincount(period_job, period_j, minlength=n_jobs),
        operational_g=np.bincount(period_job, period_g, minlength=n_jobs),
        embodied_g=embodied,
        coverage=np.minimum(coverage, 1.0),
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
    )


def _min_slot(slots: np.ndarray) -> int:
    return int(slots.min() // HALF_HOUR) if slots.size else 0


def _offsets(owner: np.ndarray, n: int) -> np.ndarray:
    """Start of each owner's run in an array grouped by owner (length n + 1)."""
    return np.concatenate(([0], np.cumsum(np.bincount(owner, minlength=n))))


def _measure(pieces, row_node: np.ndarray, traces: Sequence[Trace | None]) -> tuple[np.ndarray, np.ndarray]:
    """Measured joules and covered seconds of every piece, one searchsorted pass per node."""
    node = row_node[pieces.owner]
    measured = np.zeros(node.size)
    covered = np.zeros(node.size)
    order = np.argsort(node, kind="stable")
    sorted_nodes = node[order]
    bounds = np.searchsorted(sorted_nodes, np.arange(len(traces) + 1))
    for n, trace in enumerate(traces):
        if trace is None or bounds[n] == bounds[n + 1]:
            continue
        idx = order[bounds[n] : bounds[n + 1]]
        measured[idx], covered[idx] = window(trace, pieces.start[idx], pieces.end[idx])
    return measured, covered


# ---- the job-level view -------------------------------------------------------------------


@dataclass(frozen=True)
class NodeEnergy:
    node: str
    energy_kwh: float
    share: float


@dataclass(frozen=True)
class Period:
    start: float
    end: float
    energy_kwh: float
    intensity_g_per_kwh: float | None
    intensity_kind: str
    co2e_g: float | None
    stale: bool = False


@dataclass(frozen=True)
class JobFootprint:
    job_id: str
    status: str
    """ok | not-started | zero-length | running | error"""
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

    def to_dict(self) -> dict:
        d = {
            "job_id": self.job_id,
            "status": self.status,
            "energy_kwh": _r(self.energy_kwh),
            "co2e_g": _r(self.co2e_g),
            "operational_g": _r(self.operational_g),
            "embodied_g": _r(self.embodied_g),
            "intensity_g_per_kwh": _r(self.intensity_g_per_kwh),
            "pue": self.pue,
            "method": self.method,
            "coverage": _r(self.coverage),
            "start": iso(self.start) if self.start is not None else None,
            "end": iso(self.end) if self.end is not None else None,
            "nodes": [{"node": n.node, "energy_kwh": _r(n.energy_kwh), "share": _r(n.share)} for n in self.nodes],
            "periods": [
                {
                    "start": iso(p.start),
                    "end": iso(p.end),
                    "energy_kwh": _r(p.energy_kwh),
                    "intensity_g_per_kwh": _r(p.intensity_g_per_kwh),
                    "intensity_kind": p.intensity_kind + ("-stale" if p.stale else ""),
                    "co2e_g": _r(p.co2e_g),
                }
                for p in self.periods
            ],
        }
        if self.warnings:
            d["warnings"] = list(self.warnings)
        if self.error:
            d["error"] = self.error
        return d


def _r(x: float | None, digits: int = 9) -> float | None:
    """Round for output only; NaN (unknown) becomes null."""
    if x is None or x != x:
        return None
    return round(float(x), digits)


def method_of(coverage: float) -> str:
    if coverage >= FULL:
        return "measured"
    return "estimated" if coverage <= 0.0 else "mixed"


@dataclass
class JobMeta:
    """What the vector core does not carry: ids, names and notes, per job in `Allocation` order."""

    job_id: str
    nodes: tuple[str, ...]
    partition: str = ""
    account: str = ""
    user: str = ""
    warnings: list[str] = field(default_factory=list)


def footprints(acc: Accounting, alloc: Allocation, metas: Sequence[JobMeta], pue: float) -> Iterator[JobFootprint]:
    """Per-job results from the batch arrays (Python floats via tolist(): this loop is the hot path)."""
    energy = acc.energy_j.tolist()
    op_g = acc.operational_g.tolist()
    emb_g = acc.embodied_g.tolist()
    cov = acc.coverage.tolist()
    start, end = alloc.start.tolist(), alloc.end.tolist()
    row_j, share = acc.row_energy_j.tolist(), alloc.share.tolist()
    ps, pe, pj = acc.period_start.tolist(), acc.period_end.tolist(), acc.period_energy_j.tolist()
    pi, pk, pst, pg = (
        acc.period_intensity.tolist(),
        acc.period_kind.tolist(),
        acc.period_stale.tolist(),
        acc.period_g.tolist(),
    )
    ro, po = acc.row_offsets.tolist(), acc.period_offsets.tolist()
    for i, meta in enumerate(metas):
        r0, p0, p1 = ro[i], po[i], po[i + 1]
        nodes = tuple(NodeEnergy(n, row_j[r0 + k] / J_PER_KWH, share[r0 + k]) for k, n in enumerate(meta.nodes))
        periods = tuple(
            Period(ps[p], pe[p], pj[p] / J_PER_KWH, pi[p], pk[p], pg[p], pst[p]) for p in range(p0, p1)
        )
        yield _job_footprint(meta, energy[i], op_g[i], emb_g[i], cov[i], start[i], end[i], nodes, periods, pue)


def _job_footprint(meta, energy_j, op_g, emb_g, cov, start, end, nodes, periods, pue) -> JobFootprint:
    warnings = list(meta.warnings)
    status, error = "ok", None
    if energy_j != energy_j:
        status = "error"
        bad = [n.node for n in nodes if n.energy_kwh != n.energy_kwh]
        error = f"no power samples for {', '.join(bad)} in the job's window and no idle_watts/max_watts to estimate from"
    elif op_g != op_g:
        status = "error"
        gaps = [iso(p.start) for p in periods if p.intensity_g_per_kwh != p.intensity_g_per_kwh]
        error = f"no grid intensity for {len(gaps)} half-hour(s) from {gaps[0]}"
    if any(p.stale for p in periods):
        warnings.append("intensity provider unreachable: cached values used")
    if any(p.intensity_kind == "forecast" for p in periods):
        warnings.append("forecast intensity used for some half-hours (actual not yet published)")
    kwh = energy_j / J_PER_KWH
    mean_i = (op_g / pue / kwh) if kwh > 0 and op_g == op_g else _time_mean(periods)
    return JobFootprint(
        job_id=meta.job_id,
        status=status,
        energy_kwh=kwh,
        co2e_g=op_g + emb_g if op_g == op_g else None,
        operational_g=op_g if op_g == op_g else None,
        embodied_g=emb_g,
        intensity_g_per_kwh=mean_i,
        pue=pue,
        method=method_of(cov),
        coverage=cov,
        start=start,
        end=end,
        nodes=nodes,
        periods=periods,
        warnings=tuple(warnings),
        error=error,
        partition=meta.partition,
        account=meta.account,
        user=meta.user,
    )


def _time_mean(periods: Sequence[Period]) -> float | None:
    secs = [p.end - p.start for p in periods]
    vals = [p.intensity_g_per_kwh for p in periods]
    if not periods or any(v is None or v != v for v in vals) or sum(secs) <= 0:
        return None
    return sum(s * v for s, v in zip(secs, vals, strict=False)) / sum(secs)
