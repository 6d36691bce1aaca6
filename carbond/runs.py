"""What a job really ran: every run of a requeued job, without its suspended intervals. Pure.

slurmdbd keeps one row per run of a requeued job (`sacct -D`), each with its own start, end
and nodes, and only the *total* suspended seconds of a run. carbond records suspend intervals
itself (carbond/suspend.py polls squeue); they are used when their sum matches sacct's total
(exact), else the run is charged pro rata to its unsuspended share and flagged as estimated.
The engine accounts each piece as its own job; `combine` adds the pieces back into one footprint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from .footprint import JobFootprint
from .gpus import least_exact
from .jobs import Job, even_split
from .slurm import Run

SUSPEND_TOLERANCE = 2.0
"""Seconds by which recorded intervals may differ from sacct's total (whole-second times) per interval."""


def base_id(piece_id: str) -> str:
    """The job id of a piece's id (`1234#1.0`: run 1, its first stretch between suspends)."""
    return piece_id.split("#", 1)[0]


@dataclass(frozen=True)
class Piece:
    """A stretch of one run the job was really running, and the share of it that is charged."""

    job: Job
    scale: float = 1.0
    """1 for an exact piece; the unsuspended share for a run whose intervals are unknown."""
    note: str = ""


def pieces(job: Job, runs: Sequence[Run], suspends: Sequence[tuple[float, float | None]] = ()) -> list[Piece]:
    """The pieces of `job` (slurmdbd's final record, spool hints applied) over all its runs."""
    ran = [r for r in runs if r.start is not None and r.end is not None and r.nodes and r.end > r.start]
    if not ran:
        ran_final = [Run(job.job_id, "", job.start, job.end, job.nodes, int(sum(job.cpus)), 0.0)]
        if job.start is None or job.end is None:
            return [Piece(job)]
        ran = ran_final
    out: list[Piece] = []
    for i, run in enumerate(ran):
        final = run.start == job.start and run.end == job.end
        base = job if final else replace(job, start=run.start, end=run.end, nodes=run.nodes,
                                         cpus=even_split(run.cpus, len(run.nodes)) if run.cpus else ())
        base = replace(base, job_id=f"{job.job_id}#{i}")
        out.extend(_without_suspends(base, run, suspends))
    if len(out) == 1 and out[0].scale == 1.0:
        return [Piece(replace(out[0].job, job_id=job.job_id), 1.0, out[0].note)]
    return out


def _without_suspends(job: Job, run: Run, suspends: Sequence[tuple[float, float | None]]) -> list[Piece]:
    assert job.start is not None and job.end is not None
    if run.suspended <= 0:
        return [Piece(job)]
    inside = [(max(s, job.start), min(e if e is not None else job.end, job.end)) for s, e in suspends]
    inside = [(s, e) for s, e in inside if e > s]
    recorded = sum(e - s for s, e in inside)
    if inside and abs(recorded - run.suspended) <= SUSPEND_TOLERANCE * len(inside):
        out, t = [], job.start
        for s, e in sorted(inside):
            if s > t:
                out.append(Piece(replace(job, start=t, end=s, job_id=f"{job.job_id}.{len(out)}")))
            t = max(t, e)
        if job.end > t:
            out.append(Piece(replace(job, start=t, end=job.end, job_id=f"{job.job_id}.{len(out)}")))
        return out
    elapsed = job.end - job.start
    share = max(0.0, elapsed - run.suspended) / elapsed
    note = (f"suspended {run.suspended:.0f} s but {recorded:.0f} s of intervals recorded: "
            f"charged {share:.3f} of the run (estimated)")
    return [Piece(job, share, note)]


def combine(job_id: str, parts: Sequence[tuple[Piece, JobFootprint]]) -> JobFootprint:
    """One footprint for the job from its pieces' footprints (summed, scaled; means energy-weighted)."""
    if len(parts) == 1 and parts[0][0].scale == 1.0 and not parts[0][0].note:
        return replace(parts[0][1], job_id=job_id)
    errors = [fp for _, fp in parts if fp.status == "error"]
    if errors:
        return replace(errors[0], job_id=job_id)
    ok = [(p, fp) for p, fp in parts if fp.status == "ok"]
    if not ok:
        return replace(parts[0][1], job_id=job_id)
    energy = sum(fp.energy_kwh * p.scale for p, fp in ok)
    co2e = sum((fp.co2e_g or 0.0) * p.scale for p, fp in ok)
    oper = sum((fp.operational_g or 0.0) * p.scale for p, fp in ok)
    embodied = sum(fp.embodied_g * p.scale for p, fp in ok)
    gpu = [fp.gpu_energy_kwh * p.scale for p, fp in ok if fp.gpu_energy_kwh is not None]
    spans = [((fp.end or 0.0) - (fp.start or 0.0)) * max(1, len(p.job.nodes)) * p.scale for p, fp in ok]
    weights = [fp.energy_kwh * p.scale for p, fp in ok]
    if not sum(weights) > 0:  # a job that used no energy: its mean intensity is time-weighted (R8)
        weights = spans
    known = [(w, fp.intensity_g_per_kwh) for w, (_, fp) in zip(weights, ok, strict=True)
             if fp.intensity_g_per_kwh is not None]
    wsum = sum(w for w, _ in known)
    intensity = sum(w * i for w, i in known) / wsum if wsum > 0 else (known[0][1] if known else None)
    total = sum(spans)
    coverage = sum(s * fp.coverage for s, (_, fp) in zip(spans, ok, strict=True)) / total if total > 0 else 1.0
    estimated = any(p.scale != 1.0 for p, _ in ok)
    methods = {fp.method for _, fp in ok}
    method = methods.pop() if len(methods) == 1 and not estimated else ("estimated" if methods == {"estimated"}
                                                                        else "mixed")
    notes = tuple(p.note for p, _ in ok if p.note)
    first = ok[0][1]
    return replace(
        first, job_id=job_id, energy_kwh=energy, co2e_g=co2e, operational_g=oper, embodied_g=embodied,
        intensity_g_per_kwh=intensity, method=method, coverage=min(coverage, 0.999) if estimated else coverage,
        start=min(fp.start for _, fp in ok if fp.start is not None),
        end=max(fp.end for _, fp in ok if fp.end is not None),
        nodes=tuple(n for _, fp in ok for n in fp.nodes), periods=tuple(x for _, fp in ok for x in fp.periods),
        warnings=tuple(dict.fromkeys(w for _, fp in ok for w in fp.warnings)) + notes,
        gpu_energy_kwh=sum(gpu) if gpu else None,
        gpu_found=least_exact(*(fp.gpu_found or "" for _, fp in ok)) or None,
    )
