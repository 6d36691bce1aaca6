"""Measured GPU power: per-GPU series from VictoriaMetrics, and which of them a job held.

Every series of one GPU (one index of a node; dcgm-exporter adds the `hpc_job` label while a
job holds it) is merged into one physical trace keyed `node/gpuN`; the node meter stays whole.
footprint.compute then gives a job on such a node its own GPUs' energy plus its CPU share of
what the node drew besides all of them, GPU meters above the node meter scaled down
(docs/accounting.md R5).

How a job maps to its GPUs, in order: the indices it held (`Job.gpu_ids`, captured while it ran
by carbond.gpu_capture: {node: "0,2"}); the job label on the series; else, when only a count is
known (AllocTRES gres/gpu=N), N/G of each of the node's G GPUs, with a warning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .config import GpuConfig, VictoriaConfig
from .energy import Trace, build_trace, counter_ms
from .victoria import VictoriaClient, _concat, add_matcher, parse_export_counted

SEP = "/gpu"


class GpuClient(VictoriaClient):
    """A VictoriaClient whose series are keyed per GPU (`node/gpuN[@job]`), in watts."""

    def __init__(self, vm: VictoriaConfig, gpu: GpuConfig) -> None:
        from dataclasses import replace

        super().__init__(replace(vm, query=gpu.query, node_label=gpu.node_label))
        self.gpu = gpu

    def _export(self, task) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """One export request (the same size limits, deadline and sample checks as the node meters');
        dcgm-exporter's node label is `Hostname`, `hostname` in its newer releases: both are asked."""
        g = self.gpu
        selectors = [self.selector(task.nodes)]
        if g.node_label == "Hostname":
            selectors.append(add_matcher(g.query, "hostname=~" + self.names.matcher(task.nodes).split("=~", 1)[1]))
        form = [*(("match[]", sel) for sel in selectors), ("start", f"{task.start_ms / 1000:.3f}"),
                ("end", f"{task.end_ms / 1000:.3f}")]
        out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        with self._post("/api/v1/export", form) as resp:  # type: ignore[arg-type]
            for line in self._lines(resp):
                metric, t, w, dropped = parse_export_counted(line)
                node = metric.get(g.node_label) or (metric.get("hostname") if g.node_label == "Hostname" else None)
                idx = metric.get(g.gpu_label)
                if node is None or idx is None:
                    self.count_dropped(dropped)
                    continue
                w = w * g.unit_factor if g.unit_factor != 1 else w
                if g.kind == "counter":  # dcgm's TOTAL_ENERGY_CONSUMPTION: mJ since boot (unit_factor 0.001)
                    t, w = counter_ms(t, w, math.inf)
                keep = w <= self.max_watts(node)  # a GPU draws no more than its node may
                self.count_dropped(dropped + int(np.count_nonzero(~keep)))
                if not keep.all():
                    t, w = t[keep], w[keep]
                if not len(t):
                    continue
                job = metric.get(g.job_label) if g.job_label else None
                key = f"{node}{SEP}{idx}" + (f"@{job}" if job else "")
                out.setdefault(key, []).append((t, w))
        return {k: _concat(parts) for k, parts in out.items()}


FOUND_BY = ("idx", "label", "count")
"""How a job's GPUs were found, most exact first: the indices caught while it ran, the series'
job label, its GPU count's share of the node's GPUs. A job is labelled by its least exact node."""


def least_exact(*ways: str) -> str:
    """The least exact of FOUND_BY values ("" ignored)."""
    known = [w for w in ways if w]
    return max(known, key=FOUND_BY.index) if known else ""


@dataclass
class GpuMap:
    """The measured GPUs per node (their indices), and which jobs their series were labelled with."""

    by_node: dict[str, list[str]] = field(default_factory=dict)
    labelled: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """(node, GPU index) -> job ids of the series of that GPU that carried a job label (`hpc_job`)."""

    @staticmethod
    def key(node: str, idx: str) -> str:
        return f"{node}{SEP}{idx}"

    def fractions(self, job_id: str, node: str, held: Mapping[str, set[str]], per_node: float
                  ) -> tuple[list[tuple[str, float]], str, str]:
        """(trace key, the job's fraction of that GPU) for every GPU of `node` (docs/accounting.md R5),
        how they were found (FOUND_BY) and a note when the indices were not known: the captured
        indices first, then the job label, then the job's GPU count over the node's GPUs."""
        gpus = self.by_node.get(node, [])
        if node in held:  # captured, possibly none on this node: never a guess
            mine = held[node]
            return [(self.key(node, idx), 1.0 if idx in mine else 0.0) for idx in gpus], "idx", ""
        mine = {idx for idx in gpus if job_id in self.labelled.get((node, idx), ())}
        if mine:
            return [(self.key(node, idx), 1.0 if idx in mine else 0.0) for idx in gpus], "label", ""
        if per_node <= 0 or not gpus:
            return [(self.key(node, idx), 0.0) for idx in gpus], "", ""
        frac = min(1.0, per_node / len(gpus))
        note = f"GPU indices unknown on {node}: charged {per_node:g}/{len(gpus)} of its GPUs' energy"
        return [(self.key(node, idx), frac) for idx in gpus], "count", note


def held_indices(ids, nodes: Sequence[str]) -> dict[str, set[str]]:
    """The GPU indices a job held per node, from "0,2" (every node) or {node: "0,2"}."""
    if not ids:
        return {}
    if isinstance(ids, tuple) and isinstance(ids[0], tuple):
        ids = dict(ids)
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


def gpu_traces(gpu_raw: Mapping[str, tuple[np.ndarray, np.ndarray]], max_gap: float
               ) -> tuple[dict[str, Trace], GpuMap]:
    """One trace per physical GPU (`node/gpuN`): every series of that index (with and without a job
    label) merged, so a GPU is never counted twice; the node meters stay whole (docs/accounting.md R5)."""
    gmap = GpuMap()
    parts: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
    for key, (t, w) in sorted(gpu_raw.items(), key=lambda kv: _order(kv[0])):  # whatever order VM answered in
        node, _, tail = key.partition(SEP)
        idx, _, job = tail.partition("@")
        parts.setdefault((node, idx), []).append((np.asarray(t, float), np.asarray(w, float)))
        if job:
            gmap.labelled.setdefault((node, idx), set()).add(job)
    traces: dict[str, Trace] = {}
    for (node, idx), series in parts.items():
        gmap.by_node.setdefault(node, []).append(idx)
        t = np.concatenate([s[0] for s in series])
        w = np.concatenate([s[1] for s in series])
        traces[GpuMap.key(node, idx)] = build_trace(t, w, max_gap)
    return traces, gmap


def _order(key: str) -> tuple:
    node, _, tail = key.partition(SEP)
    idx, _, job = tail.partition("@")
    return (node, int(idx) if idx.isdigit() else 1 << 30, idx, job)
