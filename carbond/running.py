"""A running job: its footprint so far (measured up to the newest power sample) and where it is heading.

The job is accounted like a finished one whose end is the newest sample on its nodes; its current
power is its energy over the last `RECENT` seconds; the projection runs that power to the time
limit at the latest half-hour's grid intensity, plus the embodied CO2 of its node share for the
remaining hours (the rate it was charged over the last `RECENT` seconds). Nothing is written anywhere: the job's token
comes when it ends.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

from .errors import CarbondError
from .units import J_PER_KWH

RECENT = 600.0
"""Seconds of the newest power over which the current power is averaged."""


@dataclass(frozen=True)
class Projection:
    job_id: str
    elapsed_s: float
    measured_until: float
    energy_kwh: float
    co2e_g: float
    power_w: float
    intensity_g_per_kwh: float | None
    time_limit_s: float | None
    projected_energy_kwh: float | None
    projected_co2e_g: float | None
    method: str
    projected_embodied_g: float | None = None
    """Embodied CO2 of the remaining hours (in projected_co2e_g)."""
    warnings: tuple[str, ...] = ()


def project(so_far_kwh: float, so_far_g: float, power_w: float, elapsed_s: float, limit_s: float | None,
            intensity: float | None, pue: float, embodied_g_per_s: float
            ) -> tuple[float | None, float | None, float | None]:
    """(kWh, g, embodied g of the remaining time) at the time limit if the job keeps drawing `power_w`
    at `intensity` and holding its nodes' share (`embodied_g_per_s`: g/node-hour x share / 3600) (pure)."""
    if limit_s is None:
        return None, None, None
    left_s = max(0.0, limit_s - elapsed_s)
    left_kwh = power_w * left_s / J_PER_KWH
    left_emb = embodied_g_per_s * left_s
    g = None if intensity is None else so_far_g + left_kwh * intensity * pue + left_emb
    return so_far_kwh + left_kwh, g, left_emb


def so_far(engine, job, now: float, limit_s: float | None, newest: Callable[[Sequence[str], float], dict]) -> Projection:
    """Account `job` (end None) up to the newest sample of all its nodes, and project it."""
    if job.start is None or not job.nodes:
        raise CarbondError(f"job {job.job_id} has not started: nothing to show yet")
    seen = newest(job.nodes, job.start)
    warnings = []
    if len(seen) < len(job.nodes):
        warnings.append(f"no power sample yet on {', '.join(n for n in job.nodes if n not in seen)}")
    until = min(seen.values()) if len(seen) == len(job.nodes) else now
    until = min(until, now)
    if until <= job.start:
        raise CarbondError(f"job {job.job_id}: no power sample since it started")
    fp_all, fp_recent = engine.account([replace(job, end=until),
                                        replace(job, job_id=job.job_id + "#recent", start=max(job.start, until - RECENT),
                                                end=until)])
    for fp in (fp_all, fp_recent):
        if fp.status != "ok":
            raise CarbondError(f"job {job.job_id}: {fp.error or fp.status}")
    recent_s = until - max(job.start, until - RECENT)
    power = fp_recent.energy_kwh * J_PER_KWH / recent_s
    current_i = fp_all.periods[-1].intensity_g_per_kwh if fp_all.periods else None
    elapsed = until - job.start
    kwh, g, emb = project(fp_all.energy_kwh, fp_all.co2e_g, power, elapsed, limit_s, current_i, engine.cfg.pue,
                          fp_recent.embodied_g / recent_s)
    return Projection(job.job_id, elapsed, until, fp_all.energy_kwh, fp_all.co2e_g, power, current_i, limit_s, kwh, g,
                      fp_all.method, emb, tuple(warnings) + tuple(fp_all.warnings))


def time_limit(sacct: str, job_id: str, runner=subprocess.run) -> float | None:
    """SlurmIO.time_limit with a given sacct (None: UNLIMITED or unknown)."""
    from .config import SlurmConfig
    from .slurm import SlurmIO

    return SlurmIO(SlurmConfig(sacct=sacct), runner=runner, timeout=60).time_limit(job_id)


def show_running(cfg, facts, out, as_json: bool = False, engine=None, now: float | None = None) -> None:
    """The `carbond show` hook for a job that has started and not ended."""
    from .services import build, slurm_io

    if engine is None:
        services = build(cfg)
        engine, slurm = services.engine, services.slurm
    else:
        slurm = slurm_io(cfg)
    newest = engine.power.latest_sample  # type: ignore[attr-defined]
    limit = slurm.time_limit(facts.job.job_id)
    p = so_far(engine, facts.job, time.time() if now is None else now, limit, newest)
    if as_json:
        out.write(json.dumps({"job_id": facts.job.label, "state": facts.state, "running": asdict(p)}) + "\n")
        return
    out.write(text(facts.job.label, facts.state, p))


def text(label: str, state: str, p: Projection) -> str:
    from .times import iso

    lines = [
        f"Job ID: {label}",
        f"State: {state} (running: footprint so far, measured up to {iso(p.measured_until)})",
        f"Elapsed: {p.elapsed_s / 3600:.2f} h",
        f"Energy so far: {p.energy_kwh:.4g} kWh",
        f"Carbon footprint so far: {p.co2e_g:.4g} g CO2e",
        f"Current power: {p.power_w:.4g} W (last {RECENT / 60:.0f} min)",
    ]
    if p.projected_energy_kwh is not None:
        g = "-" if p.projected_co2e_g is None else f"{p.projected_co2e_g:.4g}"
        lines.append(f"At its time limit ({p.time_limit_s / 3600:.2f} h), at this power: "
                     f"{p.projected_energy_kwh:.4g} kWh, {g} g CO2e"
                     + (f" ({p.projected_embodied_g:.4g} g embodied for the remaining hours)"
                        if p.projected_embodied_g else ""))
    else:
        lines.append("Time limit: none known (no projection)")
    lines += [f"Note: {w}" for w in p.warnings]
    return "\n".join(lines) + "\n\n"


def running_emissions(engine, jobs: Sequence, now: float, newest) -> float:
    """CO2e so far of the jobs running now, in one engine pass (the carbond_running_jobs_emissions_grams
    gauge); `newest` is VictoriaClient.latest_sample."""
    started = [j for j in jobs if j.start is not None and j.nodes and j.end is None]
    if not started:
        return 0.0
    seen = newest(sorted({n for j in started for n in j.nodes}), min(j.start for j in started))
    ready = [replace(j, end=min([now] + [seen.get(n, now) for n in j.nodes])) for j in started]
    ready = [j for j in ready if j.end > j.start]
    return sum(fp.co2e_g for fp in engine.account(ready) if fp.status == "ok" and fp.co2e_g)


@dataclass
class RunningGauge:
    """The daemon's carbond_running_jobs_emissions_grams: every EVERY seconds, the jobs running now
    (one `squeue`-free sacct call for RUNNING jobs) accounted so far in one engine pass."""

    engine: object
    slurm: object
    metrics: object
    clock: Callable[[], float]
    every: float = 300.0
    at: float = float("-inf")

    def run(self) -> float | None:
        now = self.clock()
        if now - self.at < self.every:
            return None
        self.at = now  # a failure waits for the next turn too
        facts = self.slurm._read(["-a", "-s", "RUNNING"])
        jobs = [f.job for f in facts.values() if f.job.start is not None and f.job.end is None]
        grams = running_emissions(self.engine, jobs, now, self.engine.power.latest_sample)
        self.metrics.set_running_emissions(grams)
        return grams
