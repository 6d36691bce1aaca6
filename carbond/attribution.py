"""Fair attribution on shared nodes: weighted TRES, and the energy no job carries. Pure numpy.
(Measured GPUs are split in footprint.compute, docs/accounting.md R5.)

Two rules, each a few array operations over rows (one row per job-node window, or per
(job, node, half-hour) piece), so they vectorise like carbond.footprint:

- weighted TRES, where no per-GPU series exists: the node's measured power is split by
  `cpu*W_cpu + gpu*W_gpu + mem_gb*W_mem` of the job against that of the whole node (`tres_share`);
- idle: per node and half-hour, measured energy = sum of jobs' measured energy + unattributed,
  exactly; `idle: spread` hands the unattributed part to the jobs on the node by their weight
  (`reconcile`). The jobs never get more than the node measured in total.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IDLE_POLICIES = ("report", "spread")


@dataclass(frozen=True)
class Weights:
    """Watts one allocated unit of each TRES stands for on a node class (relative weights suffice)."""

    cpu: float = 1.0
    gpu: float = 0.0
    mem_gb: float = 0.0


def tres_share(
    cpus: np.ndarray,
    gpus: np.ndarray,
    mem_gb: np.ndarray,
    node_cpus: np.ndarray,
    node_gpus: np.ndarray,
    node_mem_gb: np.ndarray,
    w: Weights,
) -> np.ndarray:
    """Each row's share of its node's power by weighted TRES; NaN where the node's weighted
    capacity is zero (nothing to split by). Clipped to [0, 1]."""
    held = w.cpu * np.asarray(cpus, float) + w.gpu * np.asarray(gpus, float) + w.mem_gb * np.asarray(mem_gb, float)
    cap = w.cpu * np.asarray(node_cpus, float) + w.gpu * np.asarray(node_gpus, float)
    cap = cap + w.mem_gb * np.asarray(node_mem_gb, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(cap > 0, held / np.where(cap > 0, cap, 1.0), np.nan)
    return np.clip(share, 0.0, 1.0)


@dataclass(frozen=True)
class Reconciled:
    """Per piece: the job's energy after the idle policy; per (node, half-hour) key: the rest."""

    piece_j: np.ndarray
    keys: np.ndarray
    """The distinct (node, half-hour) keys, ascending."""
    measured_j: np.ndarray
    """Measured joules per key (as given)."""
    jobs_j: np.ndarray
    """Sum of the jobs' energy per key, after the policy."""
    unattributed_j: np.ndarray
    """measured_j - jobs_j: exactly, and never negative."""


def reconcile(
    piece_key: np.ndarray,
    piece_j: np.ndarray,
    piece_weight: np.ndarray,
    keys: np.ndarray,
    measured_j: np.ndarray,
    policy: str = "report",
) -> Reconciled:
    """Close every (node, half-hour) `keys[k]` with `measured_j[k]`: jobs' energy plus unattributed.

    piece_key: the key of each job piece (must be in `keys`); piece_j: its measured energy as
    attributed by share; piece_weight: how it takes part in `spread` (share x seconds).
    Where the pieces of a key add up to more than was measured (overlapping shares, meters out of
    step) they are scaled down to the measurement. `report` leaves the remainder unattributed;
    `spread` gives it to the key's pieces by weight (a key without pieces keeps it).
    """
    if policy not in IDLE_POLICIES:
        raise ValueError(f"idle policy must be one of {', '.join(IDLE_POLICIES)}, got {policy!r}")
    keys = np.asarray(keys)
    raw = np.maximum(np.asarray(measured_j, float), 0.0)
    measured = _flush(raw)
    idx = np.searchsorted(keys, piece_key)
    if piece_key.size and (np.any(idx >= keys.size) or np.any(keys[np.minimum(idx, keys.size - 1)] != piece_key)):
        raise ValueError("a piece's key is not among the keys")
    pj = _flush(np.asarray(piece_j, float))
    summed = np.bincount(idx, pj, minlength=keys.size)
    with np.errstate(all="ignore"):
        scale = np.where(summed > measured, measured / np.where(summed > 0, summed, 1.0), 1.0)
    pj = pj * scale[idx]
    if policy == "spread":
        weight = np.maximum(np.asarray(piece_weight, float), 0.0)
        wsum = np.bincount(idx, weight, minlength=keys.size)
        left = measured - np.bincount(idx, pj, minlength=keys.size)
        frac = np.divide(weight, wsum[idx], out=np.zeros_like(weight), where=wsum[idx] > 0)
        pj = pj + np.maximum(left, 0.0)[idx] * frac
    jobs = np.bincount(idx, pj, minlength=keys.size)
    # jobs <= measured up to rounding; pin the remainder so the identity is exact and >= 0.
    over = jobs > measured
    if over.any():
        pj = pj * np.where(over, measured / np.where(jobs > 0, jobs, 1.0), 1.0)[idx]
        jobs = np.bincount(idx, pj, minlength=keys.size)
    unattributed = np.maximum(raw - jobs, 0.0)  # a subnormal measurement stays all unattributed
    return Reconciled(pj, keys, raw, jobs, unattributed)


def _flush(x: np.ndarray) -> np.ndarray:
    """Negative to 0, and below 1e-300 J to 0 too: subnormal floats cannot keep the identity exact."""
    return np.where(x > 1e-300, x, 0.0)


def weighted_share(cls, job, i: int, node_cpus: int | None, cpu_share: float) -> float:
    """The rule for one row: the job's share of node `job.nodes[i]` by the class's TRES weights.

    GPUs and memory are spread evenly over the job's nodes (AllocTRES gives totals).
    Falls back to `cpu_share` when the node's weighted capacity is unknown.
    """
    w = cls.weights
    held_cpus = job.cpus[i] if job.cpus else 0.0
    gpus = (job.gpus or 0) / max(1, len(job.nodes))
    mem = (getattr(job, "mem_gb", 0.0) or 0.0) / max(1, len(job.nodes))
    share = tres_share([held_cpus], [gpus], [mem], [node_cpus or 0], [cls.gpus or 0], [cls.mem_gb or 0],
                       Weights(w.cpu, w.gpu, w.mem_gb))[0]
    return cpu_share if not np.isfinite(share) else float(share)
