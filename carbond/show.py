"""`carbond show JOBID...`: what a user wants to know about a job's footprint, like `seff`.

It reads the token back from Slurm (not from the ledger), so it shows what `sacct` shows
and works on any host with the Slurm client, for any user allowed to see the job.
"""

from __future__ import annotations

import json
import sys

from .config import Config
from .report import equivalent
from .slurm import SlurmIO
from .token import method_of, parse


def show(cfg: Config, job_ids: list[str], as_json: bool = False, out=None) -> int:
    """Prints each job's footprint; exit 1 if any job is unknown or not accounted yet."""
    out = out or sys.stdout
    facts = SlurmIO(cfg.slurm, cluster=cfg.cluster or None).read_jobs(job_ids)
    by_any = {}
    for raw, f in facts.items():
        by_any[raw] = f
        by_any.setdefault(f.job.display_id, f)
    pending = 0
    for jid in job_ids:
        f = by_any.get(jid)
        values = parse(f.field(cfg.slurm.comment_field)) if f else None
        if values is not None:
            final, why = True, ""
        elif f is None:
            final, why = False, "not found in Slurm's accounting."
        else:
            final, why = _why_none(f)
        pending += not final
        if values is None and f is not None and f.job.start is not None and f.job.end is None:
            _running(cfg, jid, f, out, as_json)
        elif as_json:
            out.write(json.dumps({"job_id": jid, "state": f.state if f else None, "footprint": values}) + "\n")
        elif values is not None:
            out.write(_text(jid, f, values))
        else:
            out.write(f"Job {jid}: {why}\n")
    return 1 if pending else 0


def _running(cfg: Config, jid: str, f, out, as_json: bool) -> None:
    """A running job: its footprint so far and projected to its time limit (carbond.running)."""
    from .errors import CarbondError
    from .running import show_running

    try:
        show_running(cfg, f, out, as_json=as_json)
    except CarbondError as exc:
        out.write(json.dumps({"job_id": jid, "state": f.state, "footprint": None, "error": str(exc)}) + "\n"
                  if as_json else f"Job {jid}: running (state {f.state}); footprint so far unavailable: {exc}\n")


def _why_none(f) -> tuple[bool, str]:
    """Why a job has no token, and whether that is final (no footprint will ever come)."""
    if f.job.start is None:
        return True, f"never ran (state {f.state}): no footprint."
    if f.ended and f.job.end == f.job.start:
        return True, "ran for less than a second (sacct's resolution): no measurable footprint."
    return False, (f"not accounted yet (state {f.state}); carbond writes its footprint a few seconds "
                   "after the job ends.")


def _text(jid: str, f, v: dict) -> str:
    co2 = float(v.get("co2e_g", 0))
    hours = (f.job.end - f.job.start) / 3600 if f.job.start is not None and f.job.end is not None else 0.0
    lines = [
        f"Job ID: {jid}",
        f"State: {f.state}",
        f"Nodes: {len(f.job.nodes)} ({', '.join(f.job.nodes[:8])}{', ...' if len(f.job.nodes) > 8 else ''})",
        f"Wall-clock time: {hours:.2f} h",
        f"Energy: {float(v.get('energy_kwh', 0)):.4g} kWh",
        f"Carbon footprint: {co2:.4g} g CO2e ({equivalent(co2)})",
        f"Mean grid intensity: {v.get('gkwh', '-')} gCO2e/kWh",
        f"PUE: {v.get('pue', 1)}",
        f"Method: {method_of(v)} ({float(v.get('cov', 1)) * 100:.0f}% of node time measured)",
    ]
    return "\n".join(lines) + "\n\n"
