"""A plain reference implementation of the accounting rules R1-R10 (docs: /work/notes/rules.md, issue 15).

Written from the rules alone, to check carbond's engine against: plain Python floats, a loop per
sample segment and per piece, nothing imported from carbond. Slow and obvious on purpose; the
engine's numpy arithmetic must agree with it within 1e-9 relative.

Input: a `Cluster` of plain dataclasses (nodes with their meter samples and GPU series, jobs with
their runs, suspend intervals and GPU indices, intensity per half-hour, PUE, embodied CO2).
Output: `account(cluster)` -> per job an `Expected`; `idle(cluster, lo, hi)` -> per (node, half-hour)
an `IdleRow`.

Where the rules leave a choice open, the choice made here is written at the place it is made
(search for "choice:").
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field

HALF_HOUR = 1800
J_PER_KWH = 3.6e6
FULL = 1.0 - 1e-9
SUSPEND_TOLERANCE = 2.0


# ---- input -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSeries:
    """One exported series of a GPU (dcgm-exporter: one per label set)."""

    index: str
    samples: tuple[tuple[float, float], ...]
    job: str | None = None
    """The `hpc_job` label, when the series has one."""


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    samples: tuple[tuple[float, float], ...] = ()
    gpus: tuple[GpuSeries, ...] = ()
    idle_watts: float | None = None
    max_watts: float | None = None
    weights: tuple[float, float, float] | None = None
    """The node class's `weights: {cpu, gpu, mem_gb}` (R3), with its `gpus` and `mem_gb` below."""
    class_gpus: int = 0
    mem_gb: float = 0.0


@dataclass(frozen=True)
class Run:
    """One run of a job (a row of `sacct -D`)."""

    start: float
    end: float
    nodes: tuple[str, ...]
    cpus: tuple[float, ...] | None = None
    """CPUs held on each node, in `nodes` order; None: unknown (a whole node)."""
    suspended: float = 0.0
    """sacct's Suspended seconds of this run."""


@dataclass(frozen=True)
class Job:
    job_id: str
    runs: tuple[Run, ...]
    gpus: int = 0
    gpu_ids: Mapping[str, tuple[str, ...]] | None = None
    """GPU indices held per node, captured while the job ran; None: not captured."""
    suspends: tuple[tuple[float, float], ...] = ()
    """Suspend intervals carbond recorded (squeue polls)."""
    mem_gb: float = 0.0
    """Allocated memory (AllocTRES mem), for R3's weights."""


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[Node, ...]
    jobs: tuple[Job, ...]
    intensity: Mapping[int, float]
    """Grid intensity (g/kWh) per half-hour start (epoch seconds, a multiple of 1800)."""
    pue: float = 1.0
    embodied_g_per_node_hour: float = 0.0
    max_gap: float = 300.0
    attribution: str = "cpus"

    def __repr__(self) -> str:
        """Short enough for a failing example: the samples as counts and spans, the jobs in full."""
        def series(samples) -> str:
            ts = [t for t, _ in samples]
            return f"{len(ts)} samples {min(ts):.0f}..{max(ts):.0f}" if ts else "no samples"

        nodes = "; ".join(f"{n.name} {n.cpus} CPUs, {series(n.samples)}"
                          + "".join(f", gpu{g.index}@{g.job or '-'} {series(g.samples)}" for g in n.gpus)
                          for n in self.nodes)
        jobs = "\n  ".join(repr(j) for j in self.jobs)
        return (f"Cluster(pue={self.pue}, embodied={self.embodied_g_per_node_hour}, max_gap={self.max_gap}, "
                f"attribution={self.attribution}\n nodes: {nodes}\n jobs:\n  {jobs})")

    def _repr_pretty_(self, p, cycle) -> None:  # hypothesis' and IPython's printer
        p.text(repr(self))

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


# ---- R1 traces ---------------------------------------------------------------------------------


class Trace:
    """R1: a meter's samples as a piecewise-linear trace bridged over segments <= max_gap."""

    def __init__(self, samples, max_gap: float) -> None:
        clean = [(float(t), float(w)) for t, w in samples if math.isfinite(t) and math.isfinite(w)]
        clean.sort(key=lambda s: s[0])  # stable: equal timestamps stay in input order
        kept: list[tuple[float, float]] = []
        for t, w in clean:
            if kept and kept[-1][0] == t:
                kept[-1] = (t, w)  # of equal timestamps the last one
            else:
                kept.append((t, w))
        self.t = [t for t, _ in kept]
        self.w = [w for _, w in kept]
        self.max_gap = float(max_gap)

    def _parts(self, a: float, b: float):
        """(u, v, w(u), w(v)) of every bridged segment's overlap with [a, b]."""
        t, w = self.t, self.w
        if len(t) < 2 or b <= a:
            return
        i = max(0, bisect_right(t, a) - 1)
        while i + 1 < len(t) and t[i] < b:
            t0, t1 = t[i], t[i + 1]
            if t1 - t0 <= self.max_gap:
                u, v = max(a, t0), min(b, t1)
                if v > u:
                    slope = (w[i + 1] - w[i]) / (t1 - t0)
                    yield u, v, w[i] + slope * (u - t0), w[i] + slope * (v - t0)
            i += 1

    def energy(self, a: float, b: float) -> float:
        """E(a, b): joules over [a, b] on bridged segments."""
        return sum((v - u) * (wu + wv) / 2.0 for u, v, wu, wv in self._parts(a, b))

    def covered(self, a: float, b: float) -> float:
        """C(a, b): covered seconds in [a, b]."""
        return sum(v - u for u, v, _, _ in self._parts(a, b))


def gpu_traces(node: Node, max_gap: float) -> dict[str, Trace]:
    """R5: every series of one (node, GPU index) is one physical GPU: R1 over the union of samples."""
    by_index: dict[str, list[tuple[float, float]]] = {}
    for s in node.gpus:
        by_index.setdefault(s.index, []).extend(s.samples)
    return {i: Trace(samples, max_gap) for i, samples in sorted(by_index.items())}


# ---- R2, R7: stretches and pieces ------------------------------------------------------------------


@dataclass(frozen=True)
class Stretch:
    """A part of a run the job really ran (R7), charged at `scale` of its footprint."""

    run: Run
    start: float
    end: float
    scale: float = 1.0
    flagged: bool = False


def stretches(job: Job) -> list[Stretch]:
    """R7: each run minus the recorded suspend intervals inside it when they add up to sacct's
    Suspended within 2 s per interval; otherwise the whole run at (elapsed - suspended) / elapsed."""
    out: list[Stretch] = []
    for run in job.runs:
        if not run.end > run.start:
            continue
        inside = [(max(s, run.start), min(e, run.end)) for s, e in job.suspends]
        inside = sorted((s, e) for s, e in inside if e > s)
        recorded = sum(e - s for s, e in inside)
        if abs(recorded - run.suspended) <= SUSPEND_TOLERANCE * len(inside):
            t = run.start
            for s, e in inside:
                if s > t:
                    out.append(Stretch(run, t, s))
                t = max(t, e)
            if run.end > t:
                out.append(Stretch(run, t, run.end))
        else:
            elapsed = run.end - run.start
            out.append(Stretch(run, run.start, run.end, max(0.0, elapsed - run.suspended) / elapsed, True))
    return out


def half_hours(a: float, b: float) -> list[tuple[int, float, float]]:
    """R2: [a, b] cut at every UTC half-hour boundary: (slot, start, end)."""
    out = []
    slot = int(math.floor(a / HALF_HOUR)) * HALF_HOUR
    while slot < b:
        lo, hi = max(a, float(slot)), min(b, float(slot + HALF_HOUR))
        if hi > lo:
            out.append((slot, lo, hi))
        slot += HALF_HOUR
    return out


# ---- R3-R5: one piece's measured energy --------------------------------------------------------------


@dataclass(frozen=True)
class PieceResult:
    node: str
    slot: int
    start: float
    end: float
    measured_j: float
    """e_p (R4/R5): the measured part, before R6 and before the R7 scale."""
    gpu_j: float
    covered_s: float
    node_j: float
    """N = E_node(a, b)."""
    share: float
    """R3 share (CPU node) or cpu_share (GPU node): embodied when N = 0, and the R6 fallback."""
    load: float
    count_fraction: bool = False


class Meters:
    """The cluster's traces, built once."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.node = {n.name: Trace(n.samples, cluster.max_gap) for n in cluster.nodes}
        self.gpus = {n.name: gpu_traces(n, cluster.max_gap) for n in cluster.nodes if n.gpus}
        # choice: "a node with GPU series" = a node with at least one GPU series holding a sample.
        self.gpus = {k: v for k, v in self.gpus.items() if any(tr.t for tr in v.values())}


def cpu_load(node: Node, cpus: float | None) -> float:
    """min(1, cpus held / node CPUs); unknown CPUs held -> 1 (a whole node)."""
    if cpus is None:
        return 1.0
    return min(1.0, cpus / node.cpus)


def cpu_share(cluster: Cluster, node: Node, job: Job, run: Run, cpus: float | None, load: float) -> float:
    """R3 on a node without GPU series: exclusive 1; the class's TRES weights; else CPUs held / node CPUs."""
    if cluster.attribution == "exclusive":
        return 1.0
    if node.weights is None:
        return load
    wc, wg, wm = node.weights
    # choice: with weights, unknown CPUs held count as none (the rules give 1 only for the CPU ratio)
    c, g, m = cpus or 0.0, job.gpus / len(run.nodes), job.mem_gb / len(run.nodes)
    cap = node.cpus * wc + node.class_gpus * wg + node.mem_gb * wm
    if not cap > 0:  # choice: nothing to split by -> the CPU ratio
        return load
    return min(1.0, max(0.0, (c * wc + g * wg + m * wm) / cap))


def piece(meters: Meters, job: Job, run: Run, i: int, slot: int, a: float, b: float) -> PieceResult:
    """R3-R5 for the piece [a, b] of `job` on node `run.nodes[i]`."""
    cluster = meters.cluster
    name = run.nodes[i]
    node = cluster.node(name)
    cpus = run.cpus[i] if run.cpus is not None else None
    load = cpu_load(node, cpus)
    trace = meters.node[name]
    n_j = trace.energy(a, b)
    c_s = trace.covered(a, b)
    gpus = meters.gpus.get(name)
    if not gpus:
        share = cpu_share(cluster, node, job, run, cpus, load)  # R3
        return PieceResult(name, slot, a, b, share * n_j, 0.0, c_s, n_j, share, load)
    g = {idx: tr.energy(a, b) for idx, tr in gpus.items()}
    s = sum(g.values())
    k = 1.0 if s == 0 else min(1.0, n_j / s)
    held = (job.gpu_ids or {}).get(name)
    count = False
    if held is not None:
        f = {idx: 1.0 if idx in set(held) else 0.0 for idx in g}
    else:
        labelled = {x.index for x in node.gpus if x.job == job.job_id}
        if labelled:
            f = {idx: 1.0 if idx in labelled else 0.0 for idx in g}
        else:
            per_node = job.gpus / len(run.nodes)
            f = {idx: min(1.0, per_node / len(g)) for idx in g}  # never more than a whole GPU
            count = job.gpus > 0
    own = k * sum(f[idx] * g[idx] for idx in g)
    e_p = own + load * (0.0 if s > n_j else n_j - s)  # N - k*S, exactly 0 when the GPUs are scaled down
    return PieceResult(name, slot, a, b, e_p, own, c_s, n_j, load, load, count)


# ---- R6-R9: a job's footprint ----------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    job_id: str
    energy_j: float
    gpu_energy_j: float
    operational_g: float
    embodied_g: float
    co2e_g: float
    coverage: float
    intensity: float
    method: str
    flags: frozenset[str] = frozenset()
    """`gpu-count-fraction` (R5 fallback), `suspend-pro-rata` (R7 fallback), `no-samples` (R6 fallback)."""
    periods: Mapping[int, float] = field(default_factory=dict)
    """Joules per half-hour (E_jh, R8)."""


class NoEstimate(Exception):
    """R6: a node without any covered second and no idle/max watts: the job is an error."""


def job_pieces(meters: Meters, job: Job) -> list[tuple[Stretch, list[PieceResult]]]:
    """Per (stretch, node): its pieces."""
    out = []
    for st in stretches(job):
        for i in range(len(st.run.nodes)):
            out.append((st, [piece(meters, job, st.run, i, slot, a, b) for slot, a, b in half_hours(st.start, st.end)]))
    return out


def footprint(cluster: Cluster, job: Job, meters: Meters | None = None) -> Expected:
    meters = meters or Meters(cluster)
    periods: dict[int, float] = {}
    seconds: dict[int, float] = {}
    gpu_j = embodied_h = covered = total = 0.0
    flags: set[str] = set()
    for st, ps in job_pieces(meters, job):
        if st.flagged:
            flags.add("suspend-pro-rata")
        measured = sum(p.measured_j for p in ps)
        cov = sum(p.covered_s for p in ps)
        node = cluster.node(ps[0].node) if ps else None
        for p in ps:
            if cov > 0:
                extra = measured / cov * (p.end - p.start - p.covered_s)  # R6
            else:
                assert node is not None
                if node.idle_watts is None or node.max_watts is None:
                    raise NoEstimate(f"job {job.job_id}: node {node.name} has no samples and no idle/max watts")
                flags.add("no-samples")
                # choice: on a GPU node the fallback's share is cpu_share.
                extra = (p.share * node.idle_watts + (node.max_watts - node.idle_watts) * p.load) * (p.end - p.start)
            e = st.scale * (p.measured_j + extra)
            periods[p.slot] = periods.get(p.slot, 0.0) + e
            seconds[p.slot] = seconds.get(p.slot, 0.0) + st.scale * (p.end - p.start)
            gpu_j += st.scale * p.gpu_j
            s_p = p.measured_j / p.node_j if (p.node in meters.gpus and p.node_j > 0) else p.share  # R9
            embodied_h += st.scale * s_p * (p.end - p.start) / 3600.0
            covered += p.covered_s
            total += p.end - p.start
            if p.count_fraction:
                flags.add("gpu-count-fraction")
    energy = sum(periods.values())
    operational = sum(e / J_PER_KWH * cluster.intensity[h] * cluster.pue for h, e in periods.items())  # R8
    if energy > 0:
        mean_i = sum(e * cluster.intensity[h] for h, e in periods.items()) / energy
    else:  # choice: time-weighted by the job's (scaled) seconds in each half-hour, over its nodes
        span = sum(seconds.values())
        mean_i = sum(s * cluster.intensity[h] for h, s in seconds.items()) / span if span > 0 else math.nan
    embodied = cluster.embodied_g_per_node_hour * embodied_h
    # choice: coverage is over the pieces unscaled (R6); a pro-rata run only forces it below 1.
    coverage = covered / total if total > 0 else 1.0
    method = "measured" if coverage >= FULL else ("estimated" if coverage <= 0 else "mixed")
    if "suspend-pro-rata" in flags and method == "measured":
        method = "mixed"
    return Expected(job.job_id, energy, gpu_j, operational, embodied, operational + embodied, coverage, mean_i,
                    method, frozenset(flags), periods)


def account(cluster: Cluster) -> dict[str, Expected]:
    meters = Meters(cluster)
    return {j.job_id: footprint(cluster, j, meters) for j in cluster.jobs}


# ---- R10: closing half-hours ----------------------------------------------------------------------


@dataclass(frozen=True)
class IdleRow:
    measured_j: float
    jobs_j: float
    unattributed_j: float


def idle(cluster: Cluster, lo: int, hi: int) -> dict[tuple[str, int], IdleRow]:
    """R10 over the whole half-hours of [lo, hi), for every configured node.

    choice: J uses each piece's e_p as R4/R5 define it, without a pro-rata run's R7 scale (R10 names
    e_p, not the job's charged energy); suspended intervals are out as R7 cuts them."""
    assert lo % HALF_HOUR == 0 and hi % HALF_HOUR == 0 and hi > lo
    meters = Meters(cluster)
    jobs: dict[tuple[str, int], float] = {}
    for job in cluster.jobs:
        for st in stretches(job):
            a, b = max(st.start, lo), min(st.end, hi)
            for i in range(len(st.run.nodes)):
                for slot, u, v in half_hours(a, b):
                    p = piece(meters, job, st.run, i, slot, u, v)
                    jobs[(p.node, slot)] = jobs.get((p.node, slot), 0.0) + p.measured_j
    out = {}
    for node in cluster.nodes:
        for slot in range(lo, hi, HALF_HOUR):
            m = meters.node[node.name].energy(float(slot), float(slot + HALF_HOUR))
            j = jobs.get((node.name, slot), 0.0)
            j = min(j, m) if j > m else j  # the pieces scaled by M/J when they add up to more
            out[(node.name, slot)] = IdleRow(m, j, m - j)
    return out
