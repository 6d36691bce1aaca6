"""`carbond show JOBID...`: what a user wants to know about a job's footprint, like `seff`.

It reads the token back from Slurm (not from the ledger), so it shows what `sacct` shows
and works on any host with the Slurm client, for any user allowed to see the job. It needs no
carbond secret. The PUE shown is the one the job was accounted with: the token's, else the
ledger's when this host has a readable one; never today's config value.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from .config import Config
from .ledger import FILENAME, LedgerError, check_file
from .report import equivalent
from .services import slurm_io
from .slurm import ACTIVE_STATES, FIELD_OPTIONS, JobFacts, SlurmIO
from .token import method_of, parse

JOB_ID = re.compile(r"\d+(?:_\d+|\+\d+)?")
"""What a user types: 1234, an array task 1234_7, a het job component 1234+1."""
USER_EDITABLE = frozenset({"comment"})
"""Fields the job's owner can change (`scontrol update jobid=N comment=...`): a footprint read from
one is shown as such, never as carbond's word. AdminComment and SystemComment are not."""
NUMBERS = ("co2e_g", "energy_kwh", "gkwh", "cov", "pue", "gpu_kwh")
"""Token values that must be finite numbers for the token to be shown at all."""


def show(cfg: Config, job_ids: list[str], as_json: bool = False, out=None, any_field: bool = False,
         slurm: SlurmIO | None = None, full_config: Callable[[], Config] | None = None) -> int:
    """Prints each job's footprint; exit 1 if any id is invalid, unknown or not accounted yet.

    An array's (or het job's) id shows every task (component). `any_field`: the token is looked
    for in every comment field (the site's config, which names the field, was not readable).
    A running job's footprint so far needs VictoriaMetrics and the intensity source: `full_config`
    loads the whole config only then (`cfg` itself when not given).
    """
    out = out or sys.stdout
    valid = [j for j in dict.fromkeys(job_ids) if JOB_ID.fullmatch(j)]
    io = slurm or slurm_io(cfg)
    facts = list(io.read_jobs(valid, groups=True).values()) if valid else []
    fields = tuple(FIELD_OPTIONS) if any_field else (cfg.slurm.comment_field,)
    rows = [(jid, f) for jid in job_ids for f in ((_matches(jid, facts) if jid in valid else []) or [None])]
    pues = _ledger_pues(cfg, [f.job.job_id for _, f in rows if f is not None])
    bad = 0
    for jid, f in rows:
        values, source, malformed = _token(f, fields) if f else (None, None, None)
        label = f.job.label if f else jid
        pue = _pue(values, pues.get(f.job.job_id) if f else None)
        if jid not in valid:
            final, why = False, "not a valid job id (expected 1234, an array task 1234_7 or a het component 1234+1)."
        elif values is not None:
            final, why = True, ""
        elif f is None:
            final, why = False, "not found in Slurm's accounting."
        elif malformed:
            final, why = False, (f"its {FIELD_OPTIONS[malformed]} holds a malformed carbond token "
                                 f"(not carbond's: not shown).")
        else:
            final, why = _why_none(f)
        bad += not final
        if values is None and f is not None and f.job.start is not None and f.job.end is None:
            _running(_whole(cfg, full_config), label, f, out, as_json)
        elif as_json:
            out.write(json.dumps({"job_id": label, "raw_id": f.job.job_id if f else None,
                                  "state": f.state if f else None, "footprint": values, "pue": pue,
                                  "source": FIELD_OPTIONS[source] if source else None,
                                  "user_editable": source in USER_EDITABLE if source else None,
                                  "error": why or None}) + "\n")
        elif values is not None:
            out.write(_text(label, f, values, pue, source))
        else:
            out.write(f"Job {label}: {why}\n")
    return 1 if bad else 0


def _matches(jid: str, facts: list[JobFacts]) -> list[JobFacts]:
    """The jobs an id means: every task of an array or component of a het job, else the one job."""
    group = [f for f in facts if _group(f.job.label) == jid and f.job.label != jid]
    if group:
        return sorted(group, key=lambda f: _order(f.job.label))
    return [f for f in facts if jid in (f.job.job_id, f.job.label)][:1]


def _group(display_id: str) -> str:
    return re.split(r"[_+]", display_id, maxsplit=1)[0]


def _order(display_id: str) -> tuple[int, str]:
    tail = re.split(r"[_+]", display_id, maxsplit=1)[-1]
    return (int(tail), "") if tail.isdigit() else (1 << 62, tail)  # pending ranges like 7_[5-9] last


def _token(f: JobFacts, fields: Iterable[str]) -> tuple[dict | None, str | None, str | None]:
    """(values, the field they came from, the first field holding a malformed token): fields in
    order, so an admin-only field wins over the user-editable Comment."""
    malformed = None
    for name in fields:
        values = parse(f.field(name))
        if values is None:
            continue
        if _well_formed(values):
            return values, name, malformed
        malformed = malformed or name
    return None, None, malformed


def _well_formed(values: dict) -> bool:
    """Every number a footprint shows is a finite number (a user can write anything in Comment)."""
    return all(isinstance(values.get(k, 0.0), float) and math.isfinite(values.get(k, 0.0)) for k in NUMBERS)


def _pue(values: dict | None, from_ledger: float | None) -> float | None:
    """The PUE the job was accounted with: token first (what sacct shows), then the ledger."""
    if values is not None and isinstance(values.get("pue"), float):
        return values["pue"]
    return from_ledger


def _ledger_pues(cfg: Config, raw_ids: list[str]) -> dict[str, float]:
    """job id -> PUE from the ledger, when this host has one we may read and it records PUE.

    Read-only and best effort: an ordinary user on a login node has no ledger, and ledgers
    written before the `pue` column existed have none; then the token alone speaks.
    """
    path = Path(cfg.state_dir) / FILENAME
    if not raw_ids or not os.access(path, os.R_OK):
        return {}
    try:
        check_file(path)  # never a symbolic link, an empty or a foreign file
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
    except (sqlite3.Error, LedgerError):
        return {}
    try:
        marks = ",".join("?" * len(raw_ids))
        rows = db.execute(f"SELECT job_id, pue FROM jobs WHERE cluster = ? AND job_id IN ({marks})",  # noqa: S608
                          [cfg.cluster, *raw_ids]).fetchall()
    except sqlite3.Error:
        return {}
    finally:
        db.close()
    return {str(j): float(p) for j, p in rows if p is not None}


def _whole(cfg: Config, full_config: Callable[[], Config] | None) -> Config | Exception:
    """The whole config for a running job's footprint so far, or why it cannot be read."""
    from .errors import CarbondError

    try:
        return full_config() if full_config else cfg
    except CarbondError as exc:
        return exc


def _running(cfg: Config | Exception, label: str, f: JobFacts, out, as_json: bool) -> None:
    """A running job: its footprint so far and projected to its time limit (carbond.running)."""
    from .errors import CarbondError
    from .running import show_running

    try:
        if isinstance(cfg, Exception):
            raise cfg
        show_running(cfg, f, out, as_json=as_json)
    except CarbondError as exc:
        out.write(json.dumps({"job_id": label, "raw_id": f.job.job_id, "state": f.state, "footprint": None,
                              "error": str(exc)}) + "\n"
                  if as_json else f"Job {label}: running (state {f.state}); footprint so far unavailable: {exc}\n")


def _why_none(f: JobFacts) -> tuple[bool, str]:
    """Why a job has no token, and whether that is final (no footprint will ever come)."""
    if f.state in ACTIVE_STATES:
        return False, f"has not ended (state {f.state}); carbond writes its footprint a few seconds after it ends."
    if f.job.start is None:
        return True, f"never ran (state {f.state}): no footprint."
    if f.ended and f.job.end == f.job.start:
        return True, "ran for less than a second (sacct's resolution): no measurable footprint."
    return False, (f"not accounted yet (state {f.state}); carbond writes its footprint a few seconds "
                   "after the job ends.")


def _text(jid: str, f: JobFacts, v: dict, pue: float | None, source: str | None = None) -> str:
    co2 = float(v.get("co2e_g", 0))
    hours = (f.job.end - f.job.start) / 3600 if f.job.start is not None and f.job.end is not None else 0.0
    raw = f" (JobIDRaw {f.job.job_id})" if f.job.job_id != jid else ""
    lines = [
        f"Job ID: {jid}{raw}",
        f"State: {f.state}",
        f"Nodes: {len(f.job.nodes)} ({', '.join(f.job.nodes[:8])}{', ...' if len(f.job.nodes) > 8 else ''})",
        f"Wall-clock time: {hours:.2f} h",
        f"Energy: {float(v.get('energy_kwh', 0)):.4g} kWh",
        f"Carbon footprint: {co2:.4g} g CO2e ({equivalent(co2)})",
        f"Mean grid intensity: {_g(v.get('gkwh'))} gCO2e/kWh",
        f"PUE: {pue:g}" if pue is not None else "PUE: not recorded (accounted before carbond recorded it)",
        f"Method: {method_of(v)} ({float(v.get('cov', 1)) * 100:.0f}% of node time measured)",
    ]
    if source in USER_EDITABLE:
        lines.append(f"Source: the job's {FIELD_OPTIONS[source]}, which its owner can edit: not verified by carbond")
    return "\n".join(lines) + "\n\n"


def _g(x: object) -> str:
    return f"{x:g}" if isinstance(x, float) else "-"
