"""`carbond backfill`: account, in bulk, every job that ended in a range and has no carbond token.

The range is read from sacct a window at a time (a day by default) and each window is accounted
as the daemon accounts a job (carbond.accounting: every run, without suspended time, with the
GPU indices captured while it ran), so a year of a large cluster runs in the memory of a window
and history gets the daemon's numbers. With --write
each window's footprints go into the ledger (the dedup: a job is counted once, whichever path
saw it first) and their tokens into Slurm before the next window, with the writer's bounded
concurrency; an interrupted run is simply run again (a job whose token reached Slurm but whose
sacctmgr answer was lost is then marked written). Without --write nothing is changed: it
prints what it would write and a summary. --rewrite re-publishes the tokens the ledger holds
as `unwritable` (the field was left alone then) through Ledger.mark_pending.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TextIO

from .accounting import account, histories
from .config import Config
from .engine import WINDOW, Engine, one_malloc_arena
from .footprint import JobFootprint
from .ledger import PENDING_WRITE, UNWRITABLE, Ledger
from .ledger_columns import after_record
from .publish import Outcome, Publisher, Skipped, Written
from .report import write_json, write_table
from .services import build as build_services
from .slurm import JobFacts, SlurmIO
from .times import iso, parse_time
from .token import format_token, parse

RETRY_STATES = (None, "dead", PENDING_WRITE)
"""Ledger states a backfill accounts (again): unknown, given up by the daemon, or token not yet written."""


@dataclass
class Tally:
    ended: int = 0
    todo: int = 0
    ok: int = 0
    written: int = 0
    skipped: int = 0
    failed: int = 0
    rewritten: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """jobs done, jobs/s and ETA (by the share of the time range done) on a terminal; silent otherwise."""

    lo: float
    hi: float
    out: TextIO = sys.stderr
    every: float = 0.5
    started: float = field(default_factory=time.monotonic)
    _last: float = 0.0
    _shown: bool = False

    def __post_init__(self) -> None:
        self.enabled = bool(getattr(self.out, "isatty", lambda: False)())

    def update(self, jobs: int, upto: float, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.every):
            return
        self._last = now
        secs = max(now - self.started, 1e-9)
        frac = min(1.0, max(0.0, (upto - self.lo) / (self.hi - self.lo))) if self.hi > self.lo else 1.0
        eta = secs * (1 - frac) / frac if frac > 0 else float("nan")
        width = 24
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        eta_text = "--:--" if eta != eta else time.strftime("%H:%M:%S", time.gmtime(eta))
        self.out.write(f"\r[{bar}] {frac:4.0%} up to {iso(upto)[:16]}  {jobs:,} jobs  {jobs / secs:,.0f} jobs/s  "
                       f"ETA {eta_text} ")
        self.out.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.out.write("\n")
            self.out.flush()


def backfill(cfg: Config, start: str, end: str, write: bool = False, as_json: bool = False, out=None,
             rewrite: bool = False, window: float | None = WINDOW, progress_out: TextIO | None = None,
             slurm: SlurmIO | None = None, engine: Engine | None = None) -> int:
    """Returns the exit status; `slurm` and `engine` are injectable (tests)."""
    out = out or sys.stdout
    lo, _ = parse_time(start)
    hi, _ = parse_time(end)
    window = window or max(hi - lo, 1.0)
    services = None if slurm is not None and engine is not None else build_services(cfg)
    slurm = slurm or services.slurm  # type: ignore[union-attr]
    if engine is None:
        one_malloc_arena()
    tally = Tally()
    progress = Progress(lo, hi, progress_out or sys.stderr)
    with Ledger(cfg.state_dir, cfg.cluster) as ledger:
        engine = engine or services.engine  # type: ignore[union-attr]
        publisher = Publisher(ledger, slurm, None, cfg.slurm.comment_field, slurm.lowercases()) if write else None
        windows = _windows(slurm, ledger, cfg, lo, hi, window, tally, publisher if rewrite else None, write)
        accounted = ((facts, account(engine, histories(slurm, ledger, [f.job for f in facts]))) for facts in windows)
        fps = _accounted(accounted, publisher, tally, progress, details=partial(after_record, cfg.state_dir, cfg))
        try:
            (write_json if as_json else write_table)(fps, out)
        finally:
            progress.close()
    summary = f"backfill: {tally.ended} job(s) ended in the range, {tally.todo} without a carbond token"
    if not write:
        for line in tally.examples:
            print(line, file=sys.stderr)
        print(f"{summary}; {tally.ok} would be written (dry run: add --write)", file=sys.stderr)
        return 0
    again = f", re-published {tally.rewritten}" if rewrite else ""
    print(f"{summary}; written {tally.written}, left unchanged {tally.skipped}, failed {tally.failed}{again}",
          file=sys.stderr)
    return 1 if tally.failed else 0


def _windows(slurm: SlurmIO, ledger: Ledger, cfg: Config, lo: float, hi: float, window: float,
             tally: Tally, rewriter: Publisher | None, write: bool = False) -> Iterator[list[JobFacts]]:
    """The jobs to account, one sacct call per window of end times."""
    w0 = lo
    while w0 < hi:
        w1 = min(hi, w0 + window)
        facts = slurm.jobs_ended_between(w0, w1)
        tally.ended += len(facts)
        todo = {k: f for k, f in facts.items() if parse(f.field(cfg.slurm.comment_field)) is None}
        if write:
            _acknowledge(ledger, cfg.slurm.comment_field, {k: f for k, f in facts.items() if k not in todo})
        known = ledger.known(todo)
        if rewriter is not None:
            _republish(ledger, rewriter, [f for k, f in todo.items() if known.get(k) == UNWRITABLE], tally)
        todo = {k: f for k, f in todo.items() if known.get(k) in RETRY_STATES}
        tally.todo += len(todo)
        yield list(todo.values())
        w0 = w1


def _acknowledge(ledger: Ledger, field: str, tokened: dict[str, JobFacts]) -> None:
    """Jobs whose token is in Slurm but pending-write in the ledger: a run killed after sacctmgr wrote
    and before its answer was read. Marked written when it is the ledger's token (else left for a rewrite)."""
    for job_id, state in ledger.known(tokened).items():
        entry = ledger.get(job_id) if state == PENDING_WRITE else None
        if entry is not None and entry.token and parse(entry.token) == parse(tokened[job_id].field(field)):
            ledger.mark_written(job_id)


def _republish(ledger: Ledger, publisher: Publisher, facts: list[JobFacts], tally: Tally) -> None:
    """Unwritable jobs: their recorded token back to pending, then written like any other."""
    items = []
    for f in facts:
        entry = ledger.get(f.job.job_id)
        if entry is not None and entry.token and ledger.mark_pending(entry.job_id, entry.token):
            items.append((ledger.get(entry.job_id) or entry, f))
    if items:
        results = publisher.write(items)
        tally.rewritten += sum(1 for r in results.values() if isinstance(r, Written))
        _count(results, tally)


def _accounted(windows: Iterator[tuple[list[JobFacts], list[JobFootprint]]], publisher: Publisher | None,
               tally: Tally, progress: Progress, details=None) -> Iterator[JobFootprint]:
    """Footprints in window order; with a publisher, each window is recorded and written before the next."""
    done = 0
    for facts, fps in windows:
        ok = [(f, fp) for f, fp in zip(facts, fps, strict=True) if fp.status == "ok"]
        tally.ok += len(ok)
        if publisher is None:
            room = 5 - len(tally.examples)
            tally.examples += [f"would write to {f.job.label}: {format_token(fp)}" for f, fp in ok[:max(room, 0)]]
        elif ok:
            # details: the breakdown `carbond report` reads (GPU energy, method...), as the daemon records it
            entries = publisher.record([(f.job, fp) for f, fp in ok], on_recorded=details)
            due = [(publisher.ledger.get(e.job_id) or e, f) for e, (f, _) in zip(entries, ok, strict=True) if e.token]
            _count(publisher.write(due), tally)
        yield from fps
        done += len(fps)
        upto = max((f.job.end or 0.0) for f in facts) if facts else progress.lo
        progress.update(done, upto)
    progress.update(done, progress.hi, force=True)


def _count(results: dict[str, Outcome], tally: Tally) -> None:
    tally.written += sum(1 for r in results.values() if isinstance(r, Written))
    tally.skipped += sum(1 for r in results.values() if isinstance(r, Skipped))
    tally.failed += sum(1 for r in results.values() if not isinstance(r, (Written, Skipped)))
