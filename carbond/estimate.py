"""`carbond estimate`: the footprint of a planned job, and when to start it to emit less.

Power comes from measurement where there is some: watts per CPU and per GPU fitted (least
squares, non-negative) to the ledger's measured jobs of the node class; without history, the
class's max_watts per CPU and its TRES weight per GPU, and the output says which. Intensity is
the configured provider's forecast (UK: 48 h ahead), a constant or a CSV as they are; half-hours
beyond the forecast take the mean of those known, and the output says how many.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING

from .errors import JobInputError
from .hostlist import compress
from .ledger import COUNTED, columns_of
from .times import parse_duration
from .units import HALF_HOUR, J_PER_KWH

if TYPE_CHECKING:
    import numpy as np

    from .config import NodeClass

MIN_JOBS = 5
"""Fewest measured jobs a learned model is built from."""


# ---- pure arithmetic ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerModel:
    w_per_cpu: float
    w_per_gpu: float
    source: str
    """How the figures were obtained, in words."""
    jobs: int = 0


def learn_power(cpus: np.ndarray, gpus: np.ndarray, seconds: np.ndarray, energy_j: np.ndarray) -> tuple[float, float]:
    """Watts per CPU and per GPU that best explain the jobs' mean power (non-negative least squares).

    Each job's residual is taken per allocated unit (CPU + GPU), so every job counts alike: a few
    whole-node jobs must not decide the model for the many small ones it will mostly price."""
    import numpy as np

    c = np.asarray(cpus, float)
    g = np.asarray(gpus, float)
    p = np.asarray(energy_j, float) / np.asarray(seconds, float)
    size = np.maximum(c + g, 1.0)
    a_mat = np.column_stack([c, g]) / size[:, None]
    y = p / size
    if g.any():
        (a, b), *_ = np.linalg.lstsq(a_mat, y, rcond=None)
        if a >= 0 and b >= 0:
            return float(a), float(b)
        if a < 0 and g.any():  # GPUs explain all of it
            return 0.0, max(0.0, float(np.dot(a_mat[:, 1], y) / np.dot(a_mat[:, 1], a_mat[:, 1])))
    a = float(np.dot(a_mat[:, 0], y) / np.dot(a_mat[:, 0], a_mat[:, 0])) if c.any() else 0.0
    return max(0.0, a), 0.0


def mean_intensity(first_slot: int, values: np.ndarray, starts: np.ndarray, seconds: float) -> np.ndarray:
    """Time-weighted mean intensity over [s, s + seconds) for each start s (constant power)."""
    import numpy as np

    v = np.asarray(values, float)
    cum = np.concatenate(([0.0], np.cumsum(v * HALF_HOUR)))
    edges = first_slot + HALF_HOUR * np.arange(v.size + 1)

    def integral(x):
        return np.interp(x, edges, cum)

    starts = np.asarray(starts, float)
    return (integral(starts + seconds) - integral(starts)) / seconds


def greenest(first_slot: int, values: np.ndarray, earliest: float, window_s: float, seconds: float
             ) -> tuple[float, float, float]:
    """(best start, its mean intensity, mean intensity starting at `earliest`); candidates are
    `earliest` and every half-hour boundary up to `earliest + window_s`."""
    import numpy as np

    first = math.ceil(earliest / HALF_HOUR) * HALF_HOUR
    cands = np.concatenate(([earliest], np.arange(first, earliest + window_s + 1e-9, HALF_HOUR)))
    cands = cands[cands + seconds <= first_slot + HALF_HOUR * len(values) + 1e-9]  # known to the end
    if not cands.size:
        raise JobInputError("no intensity known for the whole run from any start in the window")
    means = mean_intensity(first_slot, values, cands, seconds)
    i = int(np.nanargmin(means))
    return float(cands[i]), float(means[i]), float(means[0])


# ---- inputs ------------------------------------------------------------------------------------


def size_bin(units):
    """Job size class: floor(log2(CPUs + GPUs)), so 1, 2-3, 4-7, ... 64-127 are apart."""
    import numpy as np

    return np.floor(np.log2(np.maximum(np.asarray(units, float), 1.0))).astype(int)


def similar(cpus: np.ndarray, gpus: np.ndarray, want_units: float) -> np.ndarray:
    """Jobs of the requested size class (a whole-node job draws more per CPU than a shared one)."""
    import numpy as np

    return size_bin(np.asarray(cpus) + np.asarray(gpus)) == size_bin([want_units])[0]


def learned_model(db: sqlite3.Connection | None, cluster: str, node_class: str | None, partition: str | None,
                  units: float | None = None) -> tuple[PowerModel | None, int]:
    """The model fitted to the measured jobs of the class (or partition), of the requested size
    (CPUs + GPUs) when there are MIN_JOBS of them; None if too few in all.

    A job's mean power is its energy over the seconds it was charged for (`charged_s`: every run,
    without suspended time); a row recorded before that column has only end - start (its last
    run, suspended seconds included), and the model says how many such rows it used."""
    import numpy as np

    if db is None:
        return None, 0
    cols = columns_of(db)
    if not {"start_time", "cpus", "gpus", "coverage", "method"} <= cols:
        return None, 0
    charged = "charged_s" if "charged_s" in cols else "NULL"
    where = "node_class=?" if node_class else "partition=?"
    q = (f"SELECT cpus, COALESCE(gpus, 0), COALESCE({charged}, end_time - start_time), energy_j, "
         f"{charged} IS NULL FROM jobs WHERE cluster=? AND {where} "
         f"AND state IN ({', '.join('?' * len(COUNTED))}) AND method = 'measured' AND coverage >= 0.999 "
         f"AND cpus > 0 AND COALESCE({charged}, end_time - start_time) > 0 AND energy_j > 0")
    rows = np.array(db.execute(q, (cluster, node_class or partition, *COUNTED)).fetchall(), dtype=float)
    if len(rows) < MIN_JOBS:
        return None, len(rows)
    which = f"node class {node_class}" if node_class else f"partition {partition}"
    if units is not None:
        near = similar(rows[:, 0], rows[:, 1], units)
        if near.sum() >= MIN_JOBS and (rows[near, 1].any() or not rows[:, 1].any()):
            rows = rows[near]
            which += f" of a similar size ({2 ** int(size_bin([units])[0])}+ CPUs+GPUs)"
    a, b = learn_power(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3])
    old = int(rows[:, 4].sum())
    if old:
        which += (f" ({old} recorded without their run seconds: end - start used, the last run only and "
                  "suspended time included)")
    return PowerModel(a, b, f"learned from {len(rows)} measured jobs of {which}", len(rows)), len(rows)


def fallback_model(cls, gpus: int, which: str = "this node class") -> PowerModel:
    """max_watts per CPU and the TRES weight per GPU of the class (idle_watts if no max)."""
    if cls is None or not cls.cpus or (cls.max_watts is None and cls.idle_watts is None):
        raise JobInputError(f"no measured history for {which} and no cpus/max_watts for its node class under "
                            "`nodes` in the config: cannot estimate power")
    watts = cls.max_watts if cls.max_watts is not None else cls.idle_watts
    w_gpu = cls.weights.gpu if cls.weights else 0.0
    if gpus and not w_gpu:
        raise JobInputError(f"no measured GPU history for node class {cls.label} and no weights.gpu in the config")
    which = "max_watts" if cls.max_watts is not None else "idle_watts"
    return PowerModel(watts / cls.cpus, w_gpu, f"fallback: {which}/cpus of node class {cls.label}"
                      + (" and its weights.gpu" if gpus else ""))


def nodes_needed(cpus: int, gpus: int, node_cpus: int | None, node_gpus: int | None) -> int:
    """Fewest nodes that hold `cpus` CPUs and `gpus` GPUs (1 when a node's size is unknown)."""
    n = math.ceil(cpus / node_cpus) if node_cpus else 1
    if gpus and node_gpus:
        n = max(n, math.ceil(gpus / node_gpus))
    return max(1, n)


def capped(power: float, max_watts: float | None, nodes: int) -> tuple[float, str]:
    """The power at most max_watts per node the job needs, and what was done, in words."""
    if max_watts is None:
        return power, "no cap: the node class has no max_watts"
    cap = max_watts * nodes
    if power > cap:
        return cap, f"capped at max_watts {max_watts:g} W x {nodes} node(s) = {cap:g} W (the model gave {power:.4g} W)"
    return power, f"within max_watts {max_watts:g} W x {nodes} node(s) = {cap:g} W"


@dataclass(frozen=True)
class Target:
    """Where a planned job would run: its node class (None: none configured), a node's CPUs, and how
    they were found."""

    cls: NodeClass | None
    node_cpus: int | None
    how: str


def _classes(cfg) -> str:
    labels = [c.label for c in cfg.nodes]
    return f"the config's node classes are {', '.join(labels)}" if labels else "the config has no `nodes` classes"


def target(cfg, node_class: str | None, partition: str | None, db: sqlite3.Connection | None,
           partitions: Callable[[], dict[str, dict[str, int]] | None]) -> Target:
    """The node class of `--nodes-class`, or of `--partition`'s nodes: from Slurm (`sinfo`, through
    the config's `nodes`), else the node class the ledger recorded for the partition's jobs.
    An unknown class or partition is an error naming the known ones."""
    if node_class is not None:
        cls = _find_class(cfg, node_class)
        if cls is None:
            raise JobInputError(f"unknown node class {node_class!r}: {_classes(cfg)}")
        return Target(cls, cls.cpus, f"node class {cls.label}")
    assert partition is not None
    slurm = partitions()
    if slurm and partition in slurm:
        return _from_sinfo(cfg, partition, slurm[partition])
    recorded = _ledger_classes(db, cfg.cluster, partition)
    cls = next((c for c in map(partial(_find_class, cfg), recorded or ()) if c is not None), None)
    if cls is not None:
        return Target(cls, cls.cpus, f"partition {partition}: node class {cls.label}, recorded for its jobs "
                      "in the ledger" + (" (Slurm not reachable)" if slurm is None else ""))
    if recorded is not None:
        raise JobInputError(f"partition {partition!r}: its jobs in the ledger have no node class of the config "
                            f"({_classes(cfg)}), and " + ("Slurm (sinfo) cannot be asked" if slurm is None
                                                           else "Slurm does not list it"))
    if slurm:
        raise JobInputError(f"unknown partition {partition!r}: Slurm's partitions are {', '.join(sorted(slurm))}")
    known = _ledger_partitions(db, cfg.cluster)
    raise JobInputError(f"unknown partition {partition!r}: " + ("Slurm (sinfo) cannot be asked" if slurm is None
                                                                else "Slurm lists no partition")
                        + (f"; partitions in the ledger: {', '.join(known)}" if known else ", nor is it in the ledger"))


def _from_sinfo(cfg, partition: str, nodes: dict[str, int]) -> Target:
    """The class of most of the partition's nodes; a node's CPUs from the class, else from Slurm."""
    found = Counter(c.label for c in (cfg.node_class(n) for n in nodes) if c is not None)
    label = found.most_common(1)[0][0] if found else None
    cls = _find_class(cfg, label)
    cpus = cls.cpus if cls is not None and cls.cpus else (Counter(nodes.values()).most_common(1)[0][0] or None)
    how = f"partition {partition}: nodes {compress(sorted(nodes))} (sinfo)"
    how += f", node class {label}" if label else ", in no node class of the config"
    if len(found) > 1:
        how += f" (the most of its nodes; also {', '.join(sorted(set(found) - {label}))})"
    return Target(cls, cpus, how + (f", {cpus} CPUs per node" if cpus else ""))


def _ledger_classes(db: sqlite3.Connection | None, cluster: str, partition: str) -> list[str] | None:
    """Node classes recorded for the partition's jobs, the most frequent first; None: no jobs of it."""
    if db is None or not {"partition", "node_class"} <= columns_of(db):
        return None
    rows = db.execute("SELECT COALESCE(node_class, ''), COUNT(*) FROM jobs WHERE cluster=? AND partition=? "
                      "GROUP BY 1 ORDER BY 2 DESC", (cluster, partition)).fetchall()
    return [c for c, _ in rows if c] if rows else None


def _ledger_partitions(db: sqlite3.Connection | None, cluster: str) -> list[str]:
    if db is None or "partition" not in columns_of(db):
        return []
    return [p for (p,) in db.execute("SELECT DISTINCT partition FROM jobs WHERE cluster=? AND partition != '' "
                                     "ORDER BY 1", (cluster,))]


def slurm_partitions(cfg, runner=subprocess.run) -> dict[str, dict[str, int]] | None:
    """Partition -> {node: CPUs} from one `sinfo -N` beside the configured sacct; None when Slurm
    cannot be asked (no sinfo, no controller, a timeout)."""
    sinfo = os.path.join(os.path.dirname(cfg.slurm.sacct), "sinfo")
    cmd = [sinfo, "-h", "-N", *(["-M", cfg.cluster] if cfg.cluster else []), "-o", "%R|%N|%c"]
    try:
        res = runner(cmd, capture_output=True, text=True, timeout=cfg.slurm.timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    return parse_sinfo(res.stdout or "")


def parse_sinfo(text: str) -> dict[str, dict[str, int]]:
    """`sinfo -h -N -o %R|%N|%c` (a `CLUSTER:` line under -M is skipped); CPUs 0 when not a number."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        part, node, cpus = (line.strip().split("|") + ["", ""])[:3]
        if part and node:
            out.setdefault(part, {})[node] = int(cpus) if cpus.isdigit() else 0
    return out


# ---- the command -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    carbon_footprint_g: float
    energy_consumption_kwh: float
    carbon_intensity_g_per_kwh: float
    operational_g: float
    embodied_g: float
    power_w: float
    start: str
    end: str
    hours: float
    cpus: int
    gpus: int
    node_class: str | None
    partition: str | None
    pue: float
    how: dict
    window: dict | None = None


def estimate(cfg, *, cpus: int, gpus: int, seconds: float, node_class: str | None = None,
             partition: str | None = None, start: float | None = None, window_s: float | None = None,
             db: sqlite3.Connection | None = None, provider=None, now: float | None = None,
             partitions: Callable[[], dict[str, dict[str, int]] | None] | None = None) -> Estimate:
    """`partitions`: Slurm's partition -> {node: CPUs} (default: `slurm_partitions(cfg)`)."""
    import numpy as np

    from .times import iso

    if (node_class is None) == (partition is None):
        raise JobInputError("give exactly one of --partition or --nodes-class")
    if cpus <= 0 or gpus < 0 or seconds <= 0:
        raise JobInputError("--cpus must be positive, --gpus not negative, --time positive")
    now = time.time() if now is None else now
    t0 = now if start is None else start
    where = target(cfg, node_class, partition, db, partitions or (lambda: slurm_partitions(cfg)))
    cls = where.cls
    model, n = learned_model(db, cfg.cluster, node_class, partition, cpus + gpus)
    if model is None:
        model = fallback_model(cls, gpus, f"node class {node_class}" if node_class else f"partition {partition}")
        if n:
            model = PowerModel(model.w_per_cpu, model.w_per_gpu,
                               model.source + f" (only {n} measured jobs, {MIN_JOBS} needed)")
    if gpus and model.w_per_gpu == 0 and cls is not None and cls.weights and cls.weights.gpu:
        model = PowerModel(model.w_per_cpu, cls.weights.gpu, model.source + "; GPUs: weights.gpu (no GPU history)")
    nodes = nodes_needed(cpus, gpus, where.node_cpus, cls.gpus if cls else None)
    power, cap = capped(model.w_per_cpu * cpus + model.w_per_gpu * gpus, cls.max_watts if cls else None, nodes)
    span = seconds + (window_s or 0.0)
    first, values, kind, filled = _intensity(cfg, provider, t0, t0 + span)
    how = {"power": model.source, "w_per_cpu": model.w_per_cpu, "w_per_gpu": model.w_per_gpu, "max_power": cap,
           "node_class": where.how, "energy": "power x run time", "intensity": kind, "pue": f"config pue {cfg.pue}"}
    if filled:
        how["intensity"] += f"; {filled} half-hour(s) beyond the forecast take the mean of the known ones"
    win = None
    begin = t0
    if window_s:
        best, best_i, now_i = greenest(first, values, t0, window_s, seconds)
        kwh = power * seconds / J_PER_KWH
        win = {"best_start": iso(best), "sbatch_begin": f"--begin={time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(best))}",
               "begin_timezone": time.strftime("%Z"), "intensity_now_g_per_kwh": now_i,
               "intensity_best_g_per_kwh": best_i, "saving_g": kwh * (now_i - best_i) * cfg.pue,
               "saving_pct": 100.0 * (now_i - best_i) / now_i if now_i else 0.0}
        begin = best
    mean_i = float(mean_intensity(first, values, np.array([begin]), seconds)[0])
    kwh = power * seconds / J_PER_KWH
    op = kwh * mean_i * cfg.pue
    emb, how["embodied"] = embodied(cfg.embodied.g_per_node_hour, cpus, where.node_cpus, seconds)
    return Estimate(op + emb, kwh, mean_i, op, emb, power, iso(begin), iso(begin + seconds), seconds / 3600, cpus,
                    gpus, node_class or (cls.label if cls else None), partition, cfg.pue, how, win)


def embodied(g_per_node_hour: float, cpus: int, node_cpus: int | None, seconds: float) -> tuple[float, str]:
    """Embodied grams by the job's share of node-hours (CPUs held / a node's CPUs), and how, in words."""
    if not g_per_node_hour:
        return 0.0, "none: embodied.g_per_node_hour is 0"
    if not node_cpus:
        raise JobInputError("the node class has no `cpus` in the config (nor from Slurm): cannot share "
                            "embodied.g_per_node_hour by the job's CPUs")
    share = cpus / node_cpus
    return (g_per_node_hour * share * seconds / 3600,
            f"embodied.g_per_node_hour x {cpus}/{node_cpus} CPUs = {share:.4g} node(s) x hours")


def _find_class(cfg, name: str | None):
    if name is None:
        return None
    for c in cfg.nodes:
        if name in (c.name, c.match):
            return c
    return None


def _intensity(cfg, provider, a: float, b: float) -> tuple[int, np.ndarray, str, int]:
    """Slot-aligned intensity over [a, b): (first slot, values, how, slots filled by the mean).

    A provider without a forecast (Electricity Maps without a forecast token, Prometheus, a CSV that
    ends) gets a persistence forecast: each missing half-hour takes its value a day earlier."""
    import numpy as np

    from .errors import IntensityUnavailable
    from .intensity import make_provider

    provider = provider or make_provider(cfg)
    first = int(a // HALF_HOUR) * HALF_HOUR
    last = int(math.ceil(b / HALF_HOUR)) * HALF_HOUR
    values, kinds = _readings(provider.fetch(first, last), first, (last - first) // HALF_HOUR)
    how = f"{provider.name} ({', '.join(sorted(kinds))})"
    if not np.isfinite(values).all():
        try:
            earlier, _ = _readings(provider.fetch(first - DAY, last - DAY), first - DAY, values.size)
        except IntensityUnavailable:
            earlier = np.full(values.size, np.nan)
        take = ~np.isfinite(values) & np.isfinite(earlier)
        if take.any():
            values[take] = earlier[take]
            how += f"; {int(take.sum())} half-hour(s) without a forecast take the value a day earlier"
    known = np.isfinite(values)
    if not known.any():
        raise JobInputError(f"{provider.name}: no intensity for any half-hour from the start on, nor a day earlier")
    filled = int((~known).sum())
    values[~known] = values[known].mean()
    return first, values, how, filled


DAY = 86400


def _readings(readings, first: int, n: int):
    import numpy as np

    values = np.full(n, np.nan)
    kinds = set()
    for r in readings:
        i = (r.slot - first) // HALF_HOUR
        if 0 <= i < n:
            values[i] = r.g_per_kwh
            kinds.add(r.kind)
    return values, kinds


def run(args, cfg, out=None) -> int:
    from .ledger_columns import connect
    from .times import parse_time

    out = out or sys.stdout
    try:
        db = connect(cfg.state_dir, readonly=True)
    except Exception:  # noqa: BLE001 - no ledger: the fallback model says so
        db = None
    try:
        e = estimate(cfg, cpus=args.cpus, gpus=args.gpus, seconds=parse_duration(args.time),
                     node_class=args.node_class, partition=args.partition,
                     start=parse_time(args.start)[0] if args.start else None,
                     window_s=parse_duration(args.window) if args.window else None, db=db)
    finally:
        if db is not None:
            db.close()
    if args.json:
        out.write(json.dumps(asdict(e)) + "\n")
        return 0
    out.write(_text(e))
    return 0


def _text(e: Estimate) -> str:
    lines = [
        f"Planned job: {e.cpus} CPU(s), {e.gpus} GPU(s), {e.hours:.3g} h on "
        f"{'node class ' + e.node_class if e.node_class else 'partition ' + str(e.partition)}",
        f"Start: {e.start}",
        f"Power: {e.power_w:.4g} W ({e.how['power']}"
        + (f"; {e.how['max_power']})" if e.how["max_power"].startswith("capped") else ")"),
        f"Energy: {e.energy_consumption_kwh:.4g} kWh",
        f"Grid intensity: {e.carbon_intensity_g_per_kwh:.4g} gCO2e/kWh ({e.how['intensity']})",
        f"Carbon footprint: {e.carbon_footprint_g:.4g} g CO2e (Scope 2 {e.operational_g:.4g} g, "
        f"Scope 3 {e.embodied_g:.4g} g, PUE {e.pue})",
    ]
    if e.window:
        w = e.window
        lines.append(f"Greenest start: {w['best_start']} ({w['intensity_best_g_per_kwh']:.4g} g/kWh against "
                     f"{w['intensity_now_g_per_kwh']:.4g} now): saves {w['saving_g']:.4g} g "
                     f"({w['saving_pct']:.1f} %)")
        lines.append(f"Submit with: sbatch {w['sbatch_begin']} ...  (local time, {w['begin_timezone']})")
    return "\n".join(lines) + "\n"


__all__: Sequence[str] = ("Estimate", "PowerModel", "estimate", "greenest", "learn_power", "mean_intensity",
                          "parse_duration")
