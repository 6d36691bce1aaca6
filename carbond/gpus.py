"""Measured GPU power: per-GPU series from VictoriaMetrics, and which of them a job held.

Each GPU series becomes a trace of its own, keyed `node/gpuN` (or `node/gpuN@job` when the
series carries the job id, as dcgm-exporter's `hpc_job` label does), and the node's trace is
replaced by what the node drew besides all its GPUs. A job's rows are then its node row with its
CPU share (of that rest) plus one row per GPU it held with share 1, so the unchanged footprint
core sums exactly: own GPUs + CPU share x (node - all GPUs).

How a job maps to its GPUs, in order: the indices it held (`Job.gpu_ids`, from the epilog's
SLURM_JOB_GPUS: "0,2" for every node, or {node: "0,2"}); the job label on the series; else, when
only a count is known (AllocTRES gres/gpu=N), N/G of each of the node's G GPUs, with a warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .config import GpuConfig, VictoriaConfig
from .energy import Trace, build_trace
from .victoria import VictoriaClient, _concat, _lines, parse_export_line

SEP = "/gpu"


class GpuClient(VictoriaClient):
    """A VictoriaClient whose series are keyed per GPU (`node/gpuN[@job]`), in watts."""

    def __init__(self, vm: VictoriaConfig, gpu: GpuConfig) -> None:
        from dataclasses import replace

        super().__init__(replace(vm, query=gpu.query, node_label=gpu.node_label))
        self.gpu = gpu

    def _export(self, task) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        form = {"match[]": self.selector(task.nodes), "start": f"{task.start_ms / 1000:.3f}",
                "end": f"{task.end_ms / 1000:.3f}"}
        g = self.gpu
        out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        with self._post("/api/v1/export", form) as resp:
            for line in _lines(resp, self._url):
                metric, t, w = parse_export_line(line)
                node, idx = metric.get(g.node_label), metric.get(g.gpu_label)
                if node is None or idx is None or len(t) == 0:
                    continue
                job = metric.get(g.job_label) if g.job_label else None
                key = f"{node}{SEP}{idx}" + (f"@{job}" if job else "")
                out.setdefault(key, []).append((t, w * g.unit_factor if g.unit_factor != 1 else w))
        return {k: _concat(parts) for k, parts in out.items()}


def rest_power(t: np.ndarray, w: np.ndarray, gpus: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Node watts at its sample times minus every GPU's watts interpolated there (0 outside a GPU's
    samples); never below zero."""
    rest = np.asarray(w, float).copy()
    for gt, gw in gpus:
        if len(gt):
            rest -= np.interp(t, gt, gw, left=0.0, right=0.0)
    return np.maximum(rest, 0.0)


@dataclass
class GpuMap:
    """The GPU traces known per node: node -> [(index, job or None, key)]."""

    by_node: dict[str, list[tuple[str, str | None, str]]] = field(default_factory=dict)

    def has(self, node: str) -> bool:
        return node in self.by_node

    def expand(self, job, rows: list[tuple[float, float]], cpu_share: Sequence[float]
               ) -> tuple[tuple[str, ...], list[tuple[float, float]], list[str]]:
        """The job's trace names and (share, fallback watts) rows with its GPUs added; notes."""
        names: list[str] = []
        out: list[tuple[float, float]] = []
        notes: list[str] = []
        held = _held(getattr(job, "gpu_ids", None), job.nodes)
        per_node = (job.gpus or 0) / max(1, len(job.nodes))
        for i, node in enumerate(job.nodes):
            gpus = self.by_node.get(node)
            if not gpus:
                names.append(node)
                out.append(rows[i])
                continue
            names.append(node)
            out.append((cpu_share[i], rows[i][1]))
            mine = [k for idx, j, k in gpus if j == job.job_id]
            if not mine and node in held:
                mine = [k for idx, j, k in gpus if idx in held[node] and j is None]
            if mine:
                names += mine
                out += [(1.0, float("nan"))] * len(mine)
            elif per_node > 0:
                indices = sorted({idx for idx, _, _ in gpus})
                frac = min(1.0, per_node / len(indices))
                keys = [k for idx, j, k in gpus if j is None]
                names += keys
                out += [(frac, float("nan"))] * len(keys)
                notes.append(f"GPU indices unknown on {node}: charged {per_node:g}/{len(indices)} of its GPUs' energy")
        return tuple(names), out, notes


def _held(ids, nodes: Sequence[str]) -> dict[str, set[str]]:
    if not ids:
        return {}
    if isinstance(ids, Mapping):
        return {n: _indices(v) for n, v in ids.items()}
    return {n: _indices(ids) for n in nodes}


def _indices(v) -> set[str]:
    if isinstance(v, str):
        out: set[str] = set()
        for part in v.split(","):
            a, _, b = part.strip().partition("-")
            if a.isdigit() and b.isdigit():
                out.update(str(i) for i in range(int(a), int(b) + 1))
            elif a:
                out.add(a)
        return out
    return {str(x) for x in v}


def gpu_traces(node_raw: Mapping[str, tuple[np.ndarray, np.ndarray]],
               gpu_raw: Mapping[str, tuple[np.ndarray, np.ndarray]], max_gap: float
               ) -> tuple[dict[str, Trace], GpuMap]:
    """Traces for every node (GPU nodes: the rest besides their GPUs) and every GPU series."""
    gmap = GpuMap()
    by_node: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    traces: dict[str, Trace] = {}
    for key, (t, w) in sorted(gpu_raw.items(), key=lambda kv: _order(kv[0])):  # whatever order VM answered in
        node, _, tail = key.partition(SEP)
        idx, _, job = tail.partition("@")
        gmap.by_node.setdefault(node, []).append((idx, job or None, key))
        by_node.setdefault(node, []).append((np.asarray(t, float), np.asarray(w, float)))
        traces[key] = build_trace(t, w, max_gap)
    for node, (t, w) in node_raw.items():
        if node in by_node:
            w = rest_power(np.asarray(t, float), w, by_node[node])
        traces[node] = build_trace(t, w, max_gap)
    return traces, gmap


def _order(key: str) -> tuple:
    node, _, tail = key.partition(SEP)
    idx, _, job = tail.partition("@")
    return (node, int(idx) if idx.isdigit() else 1 << 30, idx, job)


def gpu_energy_kwh(nodes) -> float:
    """The GPU part of a footprint's per-trace energies (NodeEnergy rows named `node/gpuN`)."""
    return sum(n.energy_kwh or 0.0 for n in nodes if SEP in n.node)
