"""Closing the books per node and half-hour: what the jobs carried, and the rest (idle, unallocated).

For every node (its meter, GPUs included) and every UTC half-hour of a closed window, measured
energy = jobs' measured energy + unattributed, exactly (docs/accounting.md R10). A half-hour can
be closed as soon as it is past: the share of a job still running is already fixed for it, so the
jobs to close it with are all those that overlapped it (`sacct -S -E`, any state), each clipped to
the window. The daemon closes each half-hour once, `settle_seconds` after its end, and records the
rest with `ledger_columns.record_unattributed` and `Metrics.unattributed`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .attribution import reconcile
from .energy import HALF_HOUR, Trace, window
from .footprint import J_PER_KWH, Accounting, Allocation, compute


@dataclass(frozen=True)
class IdleTable:
    names: list[str]
    """The nodes (physical: a node's GPUs are inside its meter)."""
    slots: np.ndarray
    measured_j: np.ndarray
    """(nodes, slots) measured joules of each whole half-hour (NaN-free; 0 without samples)."""
    jobs_j: np.ndarray
    unattributed_j: np.ndarray
    job_extra_j: np.ndarray
    """Per job of the allocation: joules `idle: spread` adds (zeros under `report`)."""
    extra_job: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """`idle: spread`, per (job, half-hour) it added to: the job index ..."""
    extra_slot: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """... the half-hour ..."""
    extra_j: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """... and the joules."""
    spread: tuple = ()
    """close_window under `idle: spread`: (Job, slot, joules, grams CO2e) per job and half-hour."""

    def by_node(self) -> dict[tuple[str, int], float]:
        """(node, slot) -> unattributed joules."""
        return {(name, slot): float(self.unattributed_j[i, k])
                for i, name in enumerate(self.names) for k, slot in enumerate(self.slots.tolist())}


def idle_table(alloc: Allocation, acc: Accounting, row_node: np.ndarray, node_traces: Sequence[Trace | None],
               names: Sequence[str], lo: float, hi: float, policy: str = "report") -> IdleTable:
    """Reconcile every node over the half-hours of [lo, hi) (slot-aligned) with the jobs' measured
    pieces in `acc` (footprint.compute of `alloc`, jobs clipped to the range; `row_node`: each
    allocation row's index into `names`): docs/accounting.md R10."""
    if lo % HALF_HOUR or hi <= lo:
        raise ValueError("the window must start on a UTC half-hour")
    lo = int(lo)
    slots = np.arange(lo, hi, HALF_HOUR, dtype=np.int64)
    n_t, n_s = len(names), slots.size
    measured = np.zeros((n_t, n_s))
    ends = np.minimum(slots + float(HALF_HOUR), hi)  # the last half-hour may be cut at `hi` (a look, not a close)
    for i, tr in enumerate(node_traces):
        if tr is not None:
            measured[i] = window(tr, slots.astype(float), ends)[0]
    row = acc.piece_row
    piece_j = acc.piece_measured_j
    weight = alloc.share[row] * acc.piece_seconds
    slot_k = (acc.piece_slot - lo) // HALF_HOUR
    key = row_node[row] * n_s + slot_k
    r = reconcile(key, piece_j, weight, np.arange(n_t * n_s), measured.ravel(), policy)
    added = r.piece_j - piece_j
    job = alloc.row_job[row]
    extra = np.bincount(job, added, minlength=alloc.start.size)
    js_key = job * n_s + slot_k
    uniq, inv = np.unique(js_key, return_inverse=True)
    js_j = np.bincount(inv, added, minlength=uniq.size)
    keep = js_j > 0
    return IdleTable(list(names), slots, measured, r.jobs_j.reshape(n_t, n_s), r.unattributed_j.reshape(n_t, n_s),
                     extra, uniq[keep] // n_s, slots[uniq[keep] % n_s], js_j[keep])


def clip_jobs(jobs: Sequence, lo: float, hi: float) -> list:
    """The jobs' parts inside [lo, hi): running jobs run to `hi`; jobs outside it or never started drop out."""
    out = []
    for j in jobs:
        if j.start is None or not j.nodes:
            continue
        end = hi if j.end is None else min(j.end, hi)
        start = max(j.start, lo)
        if end > start:
            out.append(replace(j, start=start, end=end))
    return out


def close_window(engine, jobs: Sequence, lo: float, hi: float, policy: str = "report",
                 all_nodes: Sequence[str] = ()) -> tuple[IdleTable, dict]:
    """Close [lo, hi) with the jobs that overlapped it (a carbond.engine.Engine's inputs and shares);
    `all_nodes` adds the nodes no job ran on (wholly idle). Every node's power is read over the
    whole range (+- max_gap), so its measured energy is the meter's, not the jobs' span's.

    Returns the table and node -> the partition most of its jobs ran in ('' without jobs)."""
    from .engine import Engine

    assert isinstance(engine, Engine)
    clipped = clip_jobs(jobs, lo, hi)
    job_nodes = sorted({n for j in clipped for n in j.nodes})
    nodes = list(dict.fromkeys([*all_nodes, *job_nodes]))
    traces, gmap = engine.traces(nodes, lo, hi)
    alloc, metas, names = engine.allocation(clipped, gmap)
    acc = compute(alloc, [traces.get(n) for n in names], None)
    where = {n: i for i, n in enumerate(nodes)}
    row_node = np.array([where[names[k]] for k in alloc.row_node.tolist()], dtype=np.int64)
    table = idle_table(alloc, acc, row_node, [traces.get(n) for n in nodes], nodes, lo, hi, policy)
    parts: dict[str, Counter] = {n: Counter() for n in job_nodes}
    for j in clipped:
        for n in j.nodes:
            parts[n][j.partition] += 1
    if table.extra_j.size:  # `idle: spread`: what each job got, priced
        view = engine.intensity_view(lo, hi)
        by_id = {j.job_id: j for j in clipped}
        intensity = view.at(table.extra_slot)[0]
        table = replace(table, spread=tuple(
            (by_id[metas[k].job_id], int(slot), float(e), float(e / J_PER_KWH * i * engine.cfg.pue))
            for k, slot, e, i in zip(table.extra_job.tolist(), table.extra_slot.tolist(), table.extra_j.tolist(),
                                     intensity.tolist(), strict=True)))
    return table, {n: c.most_common(1)[0][0] if c else "" for n, c in parts.items()}


def ledger_rows(table: IdleTable, partitions: dict[str, str], node_class) -> list[tuple[str, int, str, str, float]]:
    """(node, slot, partition, node class, joules) for ledger_columns.record_unattributed;
    `node_class(node)` gives the class label."""
    return [(node, slot, partitions.get(node, ""), node_class(node), joules)
            for (node, slot), joules in sorted(table.by_node().items())]


# ---- the daemon's and the command's entry points --------------------------------------------------


def close_and_record(cfg, engine, slurm, lo: float, hi: float, db=None, metrics=None, ledger=None):
    """Close [lo, hi) from sacct and record it: the one call the daemon makes per closed half-hour(s)
    (with its engine, SlurmIO, an open ledger_columns.connect() and its Metrics). Returns the table
    and the ledger rows; `db` None records nothing (a dry run). The jobs are their stretches as
    carbond.accounting sees them (every run, no suspended time, captured GPU indices from `ledger`)."""
    from .ledger_columns import record_spread, record_unattributed

    jobs = stretches(slurm, ledger, jobs_overlapping(slurm, lo, hi))
    table, parts = close_window(engine, jobs, lo, hi, cfg.idle, every_node(cfg, slurm))
    rows = ledger_rows(table, parts, lambda n: _label(cfg, n))
    if db is not None:
        record_unattributed(db, cfg.cluster, rows)
        if table.spread:
            record_spread(db, cfg.cluster, [(j.job_id, slot, j.account, j.user, j.partition,
                                             _label(cfg, j.nodes[0]), e, g) for j, slot, e, g in table.spread])
        if metrics is not None:
            for _node, _slot, partition, _cls, joules in rows:
                metrics.add_unattributed(partition, joules)
    return table, rows


def stretches(slurm, ledger, jobs: Sequence) -> list:
    """Each job as the stretches it really ran (docs/accounting.md R7), under its own id: a requeued
    job's earlier runs on their own nodes, a suspended job's intervals cut out. A run charged pro rata
    (intervals unknown) stays whole here: its suspended share is not known to the second."""
    from .accounting import histories
    from .runs import pieces

    ended = [j for j in jobs if j.end is not None]
    out = [j for j in jobs if j.end is None]
    for h in histories(slurm, ledger, ended):
        out += [replace(p.job, job_id=h.job.job_id) for p in pieces(h.job, h.runs, h.suspends)]
    return out


def every_node(cfg, slurm) -> list[str]:
    """Slurm's nodes and every node the config's `nodes` name: a node that ran nothing (or that
    Slurm no longer lists) is closed too, its whole meter unattributed."""
    from .hostlist import expand

    named = {n for c in cfg.nodes for n in expand(c.match)}
    return sorted(set(slurm.node_cpus()) | named)


def _label(cfg, node: str) -> str:
    c = cfg.node_class(node)
    return c.label if c else ""


def resume_metrics(db, cluster: str, metrics) -> None:
    """Start carbond_unattributed_energy_joules_total at the ledger's sums (daemon start)."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name='unattributed_daily'").fetchone():
        return
    q = "SELECT partition, SUM(energy_j) FROM unattributed_daily WHERE cluster=? GROUP BY partition"
    for partition, joules in db.execute(q, (cluster,)).fetchall():
        metrics.add_unattributed(partition, joules)


MAX_SLOTS = 4
"""Half-hours one Closer.run closes at most: a pass stays short after a long stop (it catches up)."""
RETRY_SECONDS = 60.0


@dataclass
class Closer:
    """The daemon's closing of the books: each UTC half-hour once, `settle_seconds` after it ends.

    It resumes after the newest half-hour the ledger holds; on a ledger without any it starts at
    the current one (past ranges are `carbond idle --write`'s). A failed close (Slurm or
    VictoriaMetrics down) is tried again RETRY_SECONDS later; the daemon calls `run` inside its
    error boundary, every pass (cheap when nothing is due).
    """

    cfg: object
    engine: object
    slurm: object
    metrics: object
    clock: object
    ledger: object = None
    """The daemon's ledger: suspend intervals and GPU indices for the jobs' stretches."""
    next_slot: float | None = None
    not_before: float = 0.0
    _db: object = None

    def run(self) -> int:
        """Close what is due (at most MAX_SLOTS half-hours); returns how many were closed."""
        import math

        from .ledger_columns import connect

        now = self.clock()
        if now < self.not_before:
            return 0
        self.not_before = now + RETRY_SECONDS  # until this attempt succeeds
        if self._db is None:
            self._db = connect(self.cfg.state_dir)
        hi = math.floor((now - self.cfg.settle_seconds) / HALF_HOUR) * HALF_HOUR
        if self.next_slot is None:
            resume_metrics(self._db, self.cfg.cluster, self.metrics)
            last = self._db.execute("SELECT MAX(slot) FROM unattributed WHERE cluster=?",
                                    (self.cfg.cluster,)).fetchone()[0]
            self.next_slot = float(last + HALF_HOUR if last is not None else hi)
        if hi <= self.next_slot:
            self.not_before = self.next_slot + HALF_HOUR + self.cfg.settle_seconds
            return 0
        lo, hi = self.next_slot, min(hi, self.next_slot + MAX_SLOTS * HALF_HOUR)
        close_and_record(self.cfg, self.engine, self.slurm, lo, hi, self._db, self.metrics, self.ledger)
        self.next_slot = hi
        self.not_before = 0.0
        return int((hi - lo) // HALF_HOUR)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


# ---- the command -------------------------------------------------------------------------------


def jobs_overlapping(slurm, lo: float, hi: float) -> list:
    """Every job (any state, running ones included) that held nodes during [lo, hi), from sacct."""
    from .times import iso

    facts = slurm._read(["-a", "-S", iso(lo - 1).replace("Z", ""), "-E", iso(hi + 1).replace("Z", "")])
    return [f.job for f in facts.values() if f.job.start is not None and f.job.start < hi
            and (f.job.end is None or f.job.end > lo)]


def run(args, cfg, out=None) -> int:
    """`carbond idle --start --end [--write] [--json]`: close the half-hours of a past range."""
    import json
    import math
    import sys
    import time

    from .accounting import ledger_view
    from .errors import JobInputError
    from .ledger_columns import connect
    from .services import build
    from .times import iso, parse_time

    out = out or sys.stdout
    lo = math.floor(parse_time(args.start)[0] / HALF_HOUR) * HALF_HOUR
    end = parse_time(args.end)[0]
    hi = math.ceil(end / HALF_HOUR) * HALF_HOUR
    latest = time.time() - cfg.settle_seconds
    if hi > latest and (args.write or end > latest):
        raise JobInputError("--end must be in the past (settle_seconds before now): a half-hour closes once it is "
                            "over" + ("" if args.write else "; without --write it may end inside a half-hour"))
    if hi > latest:
        hi = end  # a look at the half-hour so far: nothing is recorded
    services = build(cfg)
    slurm, engine = services.slurm, services.engine
    db = connect(cfg.state_dir) if args.write else None
    try:
        table, rows = close_and_record(cfg, engine, slurm, lo, hi, db, ledger=ledger_view(cfg.state_dir, cfg.cluster))
    finally:
        if db is not None:
            db.close()
    per_node: dict[str, list[float]] = {}
    for i, name in enumerate(table.names):
        acc = per_node.setdefault(name, [0.0, 0.0, 0.0])
        acc[0] += table.measured_j[i].sum()
        acc[1] += table.jobs_j[i].sum()
        acc[2] += table.unattributed_j[i].sum()
    if args.json:
        for node, (m, j, u) in sorted(per_node.items()):
            out.write(json.dumps({"node": node, "start": iso(lo), "end": iso(hi), "measured_kwh": m / 3.6e6,
                                  "jobs_kwh": j / 3.6e6, "unattributed_kwh": u / 3.6e6, "policy": cfg.idle}) + "\n")
    else:
        out.write(f"{'node':<16} {'measured kWh':>13} {'jobs kWh':>10} {'unattributed kWh':>17}\n")
        for node, (m, j, u) in sorted(per_node.items()):
            out.write(f"{node:<16} {m / 3.6e6:>13.4g} {j / 3.6e6:>10.4g} {u / 3.6e6:>17.4g}\n")
    if args.write:
        print(f"carbond: {len(rows)} node half-hour(s) recorded in the ledger", file=sys.stderr)
    return 0
