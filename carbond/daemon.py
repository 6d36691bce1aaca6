"""`carbond run`: turn every spool record into a footprint in Slurm, once, whatever happens.

One pass of the loop:
    spool records (those in backoff skipped by name, unread) --ledger says done--> acknowledged
    the rest, one record per job --one sacct call--> job facts --not in slurmdbd yet, or power not
    yet past the end--> retry later (per record)
    ready jobs --sacct -D: every run; suspend intervals--> pieces --engine--> footprints
    --ledger (counted once)--> tokens --sacctmgr, concurrent, each marked as it returns-->
    written (or skipped, with the reason) --> spool record acknowledged.

The pass is one error boundary. Whatever it raises is contained and counted in
carbond_loop_errors_total{kind}: an outage (sacct failing, VictoriaMetrics or intensity down,
the ledger's disk full) backs every record of the batch off without ageing it; anything else
is a suspected poison record, so the batch is bisected until the record is alone, and a record
that still fails alone POISON_TRIES times goes to the dead-letter folder with the exception.
A record is dead-lettered for a reason of its own only after `slurm.retry_seconds` from the
first time carbond tried it. The watchdog is fed from progress stamps (every Slurm call that
returns, every pass), not from the loop, so a slow sacctmgr never gets the daemon killed while
it progresses, and a hung one (bounded by slurm.timeout) never blocks READY or /metrics.

Beside the records, each inside the same boundary (a failure is counted and retried, never
fatal): the breakdown of newly counted jobs into the ledger (`ledger_columns.after_record`, for
`carbond report`), each UTC half-hour closed once settle_seconds after it ends (`idle.Closer`:
node energy = jobs + unattributed), the running jobs' emissions gauge (`running.RunningGauge`),
and, with `slurm.write_energy_tres` on Slurm 25.11+, each measured job's energy in its TRES
after its token is written.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import sdnotify
from prometheus_client import CollectorRegistry

from .accounting import account, histories
from .config import WATCHDOG_SECONDS, Config
from .engine import Engine
from .errors import (
    CarbondError,
    ConfigError,
    IntensityUnavailable,
    SlurmError,
    SlurmStopping,
    SpoolUnavailable,
    VictoriaError,
)
from .footprint import JobFootprint
from .gpu_capture import GpuCapture
from .idle import Closer
from .instance_lock import InstanceLock
from .jobs import Job
from .ledger import COUNTED, PENDING_WRITE, RECOVERED, UNWRITABLE, Entry, Ledger, LedgerError
from .ledger_columns import after_record
from .metrics import Metrics, serve
from .publish import TOO_LONG, Publisher, Skipped, Written
from .reconcile import Reconciler
from .running import RunningGauge
from .services import build as build_services
from .slurm import JobFacts, JobNotInDatabase, SlurmCommandError, SlurmIO, SlurmUnsupported
from .spool import Spool, SpoolRecord
from .suspend import SuspendWatch
from .token import parse
from .victoria import VictoriaClient

log = logging.getLogger("carbond.daemon")

BATCH = 1000
POLL_SECONDS = 0.25
INTENSITY_EVERY = 300.0
HEALTH_EVERY = 2.0
MAX_DELAY = 60.0
MAX_OUTAGE_DELAY = 10.0
"""Records waiting out an outage are tried at least this often, so work resumes soon after it ends."""
POISON_TRIES = 3
"""Failures of a record alone (after bisection) before it is dead-lettered as poison."""
FINAL_STATES = frozenset(COUNTED) - {PENDING_WRITE, UNWRITABLE} | {"not-started", "zero-length"}
"""Ledger states after which a record is only acknowledged. UNWRITABLE is not final: a record
for such a job (its dead letter re-queued) publishes the token again."""


class Progress:
    """When the daemon last made progress: fed by the loop and by every Slurm call that returns."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.at = clock()

    def touch(self) -> None:
        self.at = self.clock()

    def fresh(self, within: float) -> bool:
        return self.clock() - self.at < within


@dataclass
class Backoff:
    """When a record may be tried again, and why it is waiting (times on Daemon.monotonic)."""

    first: float
    """carbond's first attempt: the retry window starts here, never at the job's end."""
    next_at: float = 0.0
    delay: float = 0.5
    reason: str = ""
    aging_from: float | None = None
    """First failure for a reason of the record's own; outages do not age a record."""
    poison: int = 0


@dataclass
class Daemon:
    cfg: Config
    spool: Spool
    ledger: Ledger
    slurm: SlurmIO
    engine: Engine
    victoria: VictoriaClient
    publisher: Publisher
    metrics: Metrics
    notify: Callable[[str], None] = lambda msg: None
    clock: Callable[[], float] = time.time
    """Wall-clock time: job times (a job's end, settle_seconds after it)."""
    monotonic: Callable[[], float] = time.monotonic
    """Waiting and polling (backoff deadlines, the retry window, the suspend poll): a wall clock
    stepped back an hour (NTP, a VM restore) must not stall every record in backoff for that hour."""
    waiting: dict[str, Backoff] = field(default_factory=dict)
    """Per spool record (its file name), never per job: two records of one job never mix."""
    stop: threading.Event = field(default_factory=threading.Event)
    progress: Progress = field(default_factory=Progress)
    reconciler: Reconciler | None = None
    suspends: SuspendWatch | None = None
    gpu_capture: GpuCapture | None = None
    watchdog: float | None = None
    """systemd's WatchdogSec for this process (from WATCHDOG_USEC); None: the unit's shipped value."""
    recovered: dict[str, SpoolRecord] = field(default_factory=dict)
    """Jobs reconciliation found without a spool record, waiting to be accounted."""
    details: Callable[[list[tuple[Job, JobFootprint]], list[bool]], Any] | None = None
    """After the ledger records footprints: (pairs, new flags) -> ledger_columns.after_record."""
    closer: Closer | None = None
    running: RunningGauge | None = None
    lock: InstanceLock | None = None
    """Re-checked every pass: a spool or state_dir recreated under us is locked again, or we stop."""
    _energy_tres: bool | None = None
    """slurm.write_energy_tres: None until sacctmgr's version is known, then whether it can."""
    _intensity_at: float = float("-inf")
    _notified_at: float = 0.0
    _suspend_at: float = float("-inf")
    _outage: str = ""

    # ---- the loop ---------------------------------------------------------------------------

    def serve_forever(self) -> None:
        self.notify("READY=1")
        beat = threading.Thread(target=self._heartbeat, name="watchdog", daemon=True)
        beat.start()
        while not self.stop.is_set():
            self.progress.touch()
            if self.lock is not None:
                self.lock.check()  # AlreadyRunning ends the daemon: never two on one spool
            busy = self.step()
            self._guard("spool", self._health)
            if not busy:
                self.stop.wait(POLL_SECONDS)
        self.notify("STOPPING=1")

    def step(self) -> int:
        """One pass over the spool; returns how many records made progress. Never raises."""
        done = self._guard("internal", self._step)
        if self.suspends is not None and self.monotonic() - self._suspend_at >= self.cfg.slurm.suspend_poll_seconds:
            self._suspend_at = self.monotonic()
            self._guard("slurm", self.suspends.poll)
            if self.gpu_capture is not None:
                self._guard("slurm", self.gpu_capture.poll)
        if self.reconciler is not None and self.reconciler.due():
            self._guard("slurm", self._reconcile)
        if self.closer is not None and not self.stop.is_set():
            self._guard("internal", self.closer.run)
        if self.running is not None and not self.stop.is_set():
            self._guard("internal", self.running.run)
        return done or 0

    def _step(self) -> int:
        records, dead = self.spool.pending(limit=BATCH, skip=self._not_due)
        for d in dead:
            log.error("spool file %s dead-lettered: %s", d.path, d.reason)
        self._forget_gone()
        now = self.monotonic()
        records += [r for r in self.recovered.values() if self._due_at(r, now)]
        known = self.ledger.known(r.job_id_key for r in records)
        done = 0
        due: list[SpoolRecord] = []
        taken: set[str] = set()
        for rec in records:
            state = known.get(rec.job_id_key)
            if state in FINAL_STATES:
                self._ack(rec)  # a repeated record, or a crash between write and acknowledgement
                done += 1
            elif rec.job_id_key in taken:
                continue  # another record of the same job goes first; this one is acknowledged after it
            else:
                if state == UNWRITABLE and self.ledger.republish(rec.job_id_key):
                    log.info("job %s: token published again (its record was re-queued)", rec.display_id)
                    known[rec.job_id_key] = PENDING_WRITE
                taken.add(rec.job_id_key)
                due.append(rec)
        if due:
            done += self._attempt(due, known)
        return done

    def _attempt(self, batch: list[SpoolRecord], known: dict[str, str]) -> int:
        """Process a batch inside the error boundary; bisect it when something in it is poison."""
        if self.stop.is_set():
            return 0
        try:
            n = self._process(batch, known)
            self._outage_over()
            return n
        except Exception as exc:  # noqa: BLE001 - the error boundary: nothing may stop the loop
            kind = error_kind(exc)
            self.metrics.loop_error(kind)
            if kind != "poison":
                self._outage_seen(kind, exc)
                for rec in batch:
                    self._retry(rec, f"{kind} unavailable", ages=False, outage=True)
                return 0
            if len(batch) == 1:
                self._poisoned(batch[0], exc)
                return 0
            log.warning("a batch of %d record(s) failed (%s); bisecting to find the record", len(batch),
                        short(exc))
            mid = len(batch) // 2
            return self._attempt(batch[:mid], known) + self._attempt(batch[mid:], known)

    def _process(self, due: list[SpoolRecord], known: dict[str, str]) -> int:
        facts = self.slurm.read_jobs([r.job_id_key for r in due])
        self.metrics.success("slurmdbd")
        ready: list[tuple[SpoolRecord, JobFacts]] = []
        for rec in due:
            f = facts.get(rec.job_id_key)
            if f is None:
                self._retry(rec, "slurmdbd does not know the job yet")
            elif not f.ended:
                self._retry(rec, f"job is {f.state.lower() or 'not finished'} in slurmdbd", quick=True, ages=False)
            elif not complete(f.job, rec) and self.clock() < (f.job.end or 0) + self.cfg.settle_seconds:
                self._retry(rec, "slurmdbd's record of the job is not complete yet", quick=True, ages=False)
            else:
                try:
                    ready.append((rec, replace(f, job=with_record(f.job, rec))))
                except RecordContradicts as exc:
                    reason = f"the spool record contradicts slurmdbd: {exc}"
                    log.error("job %s (%s): dead-lettered, never written: %s", rec.job_id, rec.name, reason)
                    self._give_up(rec, reason, poison=True)  # poison=True: logged here already
        fresh = [(r, f) for r, f in ready if known.get(r.job_id_key) != PENDING_WRITE]
        writes = [(r, f) for r, f in ready if known.get(r.job_id_key) == PENDING_WRITE]
        writes += self._account(fresh)
        return self._write(writes)

    def _account(self, ready: list[tuple[SpoolRecord, JobFacts]]) -> list[tuple[SpoolRecord, JobFacts]]:
        """Footprints into the ledger; returns the pairs whose token is now due."""
        ready = [(r, f) for r, f in ready if not self._power_pending(r, f)]
        if not ready:
            return []
        fps = account(self.engine, histories(self.slurm, self.ledger, [f.job for _, f in ready]))
        self.metrics.success("victoriametrics")
        self.metrics.success("intensity")
        final: list[tuple[SpoolRecord, JobFacts, JobFootprint]] = []
        for (rec, f), fp in zip(ready, fps, strict=True):
            if fp.status == "error":
                self._retry(rec, f"cannot account: {fp.error or 'error'}",
                            bury_as=Entry.dead(rec.job_id_key, fp.error or "", f.job.end))
            else:
                final.append((rec, f, fp))
                for note in fp.warnings:
                    if "suspended" in note:
                        log.info("job %s: %s", rec.display_id, note)
        by_origin: dict[str, list[tuple[SpoolRecord, JobFacts, JobFootprint]]] = {}
        for item in final:
            by_origin.setdefault(RECOVERED if _recovered(item[0]) else "", []).append(item)
        out = []
        for origin, items in by_origin.items():
            pairs = [(f.job, fp) for _, f, fp in items]
            entries = self.publisher.record(pairs, origin=origin, on_recorded=self._recorded)
            for (rec, f, _), entry in zip(items, entries, strict=True):
                if entry.state == PENDING_WRITE:
                    out.append((rec, f))
                else:
                    self._ack(rec)
        return out

    def _recorded(self, pairs: list[tuple[Job, JobFootprint]], new: list[bool]) -> None:
        """The counted jobs' breakdown (GPU energy, method, ...) into the ledger: contained, so a failure
        here never holds back the token (the report then sums those jobs without their breakdown)."""
        if self.details is not None and any(new):
            self._guard("ledger", lambda: self.details(pairs, new))  # type: ignore[misc]

    def _power_pending(self, rec: SpoolRecord, f: JobFacts) -> bool:
        """Wait (up to settle_seconds after the end) until every node, and every GPU series on it,
        has a sample past the end: history (backfill, footprint) then sees the same samples."""
        end, nodes = f.job.end, f.job.nodes
        if end is None or not nodes or self.clock() > end + self.cfg.settle_seconds:
            return False
        latest = self.victoria.latest_sample(nodes, end)
        gpu = getattr(self.engine, "gpu_power", None)
        # GPU series of the job's nodes seen lately must have reached the end too (CPU-only nodes have none)
        lagging = gpu is not None and any(t < end for t in gpu.latest_sample(nodes, end - self.cfg.max_gap).values())
        if all(latest.get(n, 0) >= end for n in nodes) and not lagging:
            return False
        self._retry(rec, "waiting for power samples past the job's end", quick=True, ages=False, quiet=True)
        return True

    def _write(self, pairs: list[tuple[SpoolRecord, JobFacts]]) -> int:
        if not pairs:
            return 0
        entries = {e.job_id: e for e in (self.ledger.get(r.job_id_key) for r, _ in pairs) if e}
        items = [(entries[r.job_id_key], f) for r, f in pairs if r.job_id_key in entries]
        results = self.publisher.write(items, cancel=self.stop.is_set)
        done = 0
        for rec, facts in pairs:
            res = results.get(rec.job_id_key)
            if isinstance(res, (Written, Skipped)):
                self._ack(rec)
                done += 1
                if isinstance(res, Written) and self.cfg.slurm.write_energy_tres and not self.stop.is_set():
                    self._guard("slurm", partial(self._write_energy, entries.get(rec.job_id_key), facts))
            elif too_long(res):
                self._give_up(rec, f"the field with the token is too long for sacctmgr: {short(res)}",
                              unwritable=TOO_LONG)
            elif isinstance(res, SlurmError) and not res.retryable:
                self._give_up(rec, f"sacctmgr refused the write: {short(res)}", unwritable="refused")
            else:
                self._retry(rec, f"token not written: {short(res) if res is not None else 'no result'}",
                            unwritable="gave-up", ages=not _outage_error(res))
        return done

    def _write_energy(self, entry: Entry | None, facts: JobFacts) -> None:
        """slurm.write_energy_tres: the job's measured IT energy (joules, no PUE) into its energy TRES.

        Best effort after the token: only fully measured jobs; Slurm before 25.11 is found out once
        (sacctmgr's version, asked at the first such write) and warned about once."""
        if entry is None or not entry.counted or (parse(entry.token or "") or {}).get("cov") is not None:
            return
        if self._energy_tres is None:
            self._energy_tres = self.slurm.supports_energy_tres()
            if not self._energy_tres:
                log.warning("slurm.write_energy_tres: this Slurm cannot set a job's TRES (25.11+ can); "
                            "energy stays in the token and the ledger only")
        if not self._energy_tres:
            return
        try:
            self.slurm.write_energy_tres(facts, entry.energy_j)
        except SlurmUnsupported as exc:
            self._energy_tres = False
            log.warning("slurm.write_energy_tres: refused by sacctmgr (%s); not tried again", short(exc))

    def _reconcile(self) -> None:
        assert self.reconciler is not None
        for f in self.reconciler.find(self.spool.job_ids() | set(self.recovered)):
            rec = recovered_record(f)
            self.recovered[rec.job_id_key] = rec

    # ---- bookkeeping ------------------------------------------------------------------------

    def _not_due(self, name: str) -> bool:
        b = self.waiting.get(name)
        return b is not None and self.monotonic() < b.next_at

    def _due_at(self, rec: SpoolRecord, now: float) -> bool:
        b = self.waiting.get(_key(rec))
        return b is None or now >= b.next_at

    def _forget_gone(self) -> None:
        """Drop backoff state of spool files that are gone (acknowledged elsewhere, moved by hand)."""
        if len(self.waiting) > 2 * max(len(self.spool.names), 1) + len(self.recovered):
            keep = self.spool.names | {_key(r) for r in self.recovered.values()}
            self.waiting = {k: b for k, b in self.waiting.items() if k in keep}

    def _retry(self, rec: SpoolRecord, reason: str, quick: bool = False, ages: bool = True, quiet: bool = False,
               bury_as: Entry | None = None, unwritable: str = "", outage: bool = False) -> None:
        now = self.monotonic()
        b = self.waiting.setdefault(_key(rec), Backoff(first=now))
        if ages:
            b.aging_from = now if b.aging_from is None else b.aging_from
            if now - b.aging_from > self.cfg.slurm.retry_seconds:
                self._give_up(rec, reason, bury_as=bury_as, unwritable=unwritable)
                return
        if reason != b.reason and not quiet:
            log.info("job %s (%s): waiting: %s", rec.display_id, rec.name or "recovered", reason)
        b.reason = reason
        b.delay = 1.0 if quick else min(b.delay * 2, MAX_OUTAGE_DELAY if outage else MAX_DELAY)
        b.next_at = now + b.delay

    def _poisoned(self, rec: SpoolRecord, exc: BaseException) -> None:
        b = self.waiting.setdefault(_key(rec), Backoff(first=self.monotonic()))
        b.poison += 1
        reason = f"fails on its own: {type(exc).__name__}: {short(exc)}"
        if b.poison >= POISON_TRIES:
            log.error("job %s (%s): dead-lettered after %d failures on its own: %s", rec.display_id, rec.name,
                      b.poison, reason, exc_info=exc)
            self._give_up(rec, reason, poison=True)
        else:
            self._retry(rec, reason)

    def _give_up(self, rec: SpoolRecord, reason: str, bury_as: Entry | None = None, unwritable: str = "",
                 poison: bool = False) -> None:
        if not poison:
            log.error("job %s (%s): giving up after retries: %s", rec.display_id, rec.name or "recovered", reason)
        if unwritable and self.ledger.mark_unwritable(rec.job_id_key, unwritable):
            self.metrics.write_skipped(unwritable)
        elif not unwritable and (bury_as is not None or self.ledger.get(rec.job_id_key) is None):
            entry = bury_as or Entry.dead(rec.job_id_key, reason[:500])
            self.metrics.recorded([entry], self.ledger.record_many([entry]))
        if not _recovered(rec):
            self.spool.dead_letter(rec, reason)
        self._forget(rec)

    def _ack(self, rec: SpoolRecord) -> None:
        if not _recovered(rec):
            self.spool.ack(rec)
        self._forget(rec)

    def _forget(self, rec: SpoolRecord) -> None:
        self.waiting.pop(_key(rec), None)
        if _recovered(rec):
            self.recovered.pop(rec.job_id_key, None)

    def _outage_seen(self, kind: str, exc: BaseException) -> None:
        """One log line when an outage starts or changes, none while it lasts."""
        text = f"{kind}: {short(exc)}"
        if kind != self._outage:
            log.warning("outage: %s; records wait without ageing until it is over", text)
        self._outage = kind

    def _outage_over(self) -> None:
        if self._outage:
            log.warning("outage over (%s)", self._outage)
            self._outage = ""
            for b in self.waiting.values():  # what waited only for the outage goes again now
                if b.reason.endswith(" unavailable"):
                    b.next_at = 0.0

    def _guard(self, kind: str, fn: Callable[[], Any]) -> Any:
        """Run `fn` inside the error boundary: log once per change, count, never raise."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - the error boundary
            k = error_kind(exc)
            if k == "poison":  # not a record's fault here: a bug or an unexpected state of the host
                k = kind
                if self._outage != k:
                    log.error("unexpected error in the loop (contained, retried): %s", short(exc), exc_info=exc)
            self.metrics.loop_error(k)
            self._outage_seen(k, exc)
            return None

    def _health(self) -> None:
        """Gauges every pass; the current intensity every INTENSITY_EVERY seconds."""
        self.metrics.samples_dropped("node", getattr(self.victoria, "dropped_samples", 0))
        gpu = getattr(self.engine, "gpu_power", None)
        if gpu is not None:
            self.metrics.samples_dropped("gpu", gpu.dropped_samples)
        count, oldest = self.spool.backlog()
        self.metrics.set_backlog(count + len(self.recovered), oldest)
        self.metrics.set_dead_letters(self.spool.dead_count())
        now = self.monotonic()
        if now - self._intensity_at >= INTENSITY_EVERY:
            self._intensity_at = now
            try:
                self.metrics.set_intensity(self.engine.intensity.current())
            except CarbondError as exc:
                log.warning("current grid intensity unavailable: %s", exc)

    def _heartbeat(self) -> None:
        """WATCHDOG=1 while the daemon progresses (a pass, or any Slurm call returning), and STATUS."""
        period = self.watchdog or WATCHDOG_SECONDS
        while not self.stop.wait(min(HEALTH_EVERY, period / 4)):
            if self.progress.fresh(period / 2):
                self.notify("WATCHDOG=1")
            try:
                jobs, grams = self.metrics.accounted()
                count = int(self.metrics.backlog._value.get())
                self.notify(f"STATUS=backlog {count} job(s); {jobs:.0f} accounted, {grams / 1000:.3f} kg CO2e")
            except Exception as exc:  # noqa: BLE001 - STATUS is best effort
                log.debug("no STATUS: %s", exc)


def _key(rec: SpoolRecord) -> str:
    return rec.name if rec.path else f"recovered:{rec.job_id_key}"


def _recovered(rec: SpoolRecord) -> bool:
    return not rec.path


def recovered_record(f: JobFacts) -> SpoolRecord:
    """A stand-in spool record for a job found by reconciliation (no file: path "")."""
    display = f.job.display_id or f.job.job_id
    array_job, _, task = display.partition("_") if "_" in display else ("", "", "")
    return SpoolRecord(job_id=f.job.job_id, array_job_id=array_job, array_task_id=task, nodes="", cpus_per_node="",
                       partition="", account="", user="", uid=None, exit_code="", cluster=f.cluster,
                       epilog_time=int(f.job.end or 0), path="")


def error_kind(exc: BaseException) -> str:
    """The carbond_loop_errors_total label; every kind but "poison" is an outage (of a service, the
    disk, or the configuration) that backs records off without ageing them."""
    if isinstance(exc, (LedgerError, sqlite3.Error)):
        return "ledger"
    if isinstance(exc, VictoriaError):
        return "victoriametrics"
    if isinstance(exc, IntensityUnavailable):
        return "intensity"
    if isinstance(exc, ConfigError):
        return "internal"  # a setting that fails only at run time: no record's fault, wait for the fix
    if isinstance(exc, (OSError, SpoolUnavailable)):
        return "spool"
    if isinstance(exc, SlurmError) and _outage_error(exc):
        return "slurm"
    return "poison"


def _outage_error(exc: object) -> bool:
    """A Slurm command that failed to run or answer (not one that answered with something unusable).

    "Not in the database" is an answer about this job, not an outage: it ages the record, so a job
    slurmdbd never learns of is given up on (and can be re-queued) instead of retried for ever.
    """
    if isinstance(exc, JobNotInDatabase) or too_long(exc):
        return False
    if isinstance(exc, SlurmCommandError):
        return exc.returncode != 0  # None: timed out or could not run
    return isinstance(exc, SlurmStopping)


def too_long(exc: object) -> bool:
    """A Slurm command that could not start because an argument is too long (E2BIG): a fact about
    this record's data (e.g. a comment over 128 KiB), never an outage to retry for ever."""
    return (isinstance(exc, SlurmCommandError) and exc.returncode is None
            and os.strerror(errno.E2BIG) in exc.stderr)


def short(exc: object, limit: int = 200) -> str:
    """An error for a log line: never a whole command line or its job id list."""
    if isinstance(exc, SlurmCommandError):
        status = f"exit {exc.returncode}" if exc.returncode is not None else "no answer"
        text = f"{os.path.basename(exc.cmd[0]) if exc.cmd else 'slurm'} {status}: {exc.stderr or '(no stderr)'}"
    else:
        text = str(exc)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RecordContradicts(CarbondError):
    """A spool record that contradicts slurmdbd's record of the job: it is dead-lettered, never written."""


def complete(job: Job, rec: SpoolRecord) -> bool:
    """Does slurmdbd's record look final next to the spool record?

    For about a second after a job ends slurmdbd's record can be incomplete: NodeList only the
    batch host, no partition, the raw id where the epilog saw an array task. The daemon waits
    that out (at most settle_seconds after the end) instead of taking the record's word for it.
    """
    try:
        hosts = rec.hosts()
    except CarbondError:
        hosts = ()
    narrows = rec.display_id != rec.job_id
    return (bool(job.partition) and bool(job.nodes) and (not hosts or len(hosts) == len(job.nodes))
            and (not narrows or _narrowed(job)))


def with_record(job: Job, rec: SpoolRecord) -> Job:
    """slurmdbd's facts of the job, narrowed (never replaced) by its spool record.

    slurmdbd is the truth for nodes, CPUs, user, account and partition: a requeued job's record
    names the nodes of the run that just ended, slurmdbd the last run's, and a forged or stale
    record must never move a footprint to other nodes, users or accounts. The record only
    narrows: exact CPUs per node when it names slurmdbd's nodes and their total, and labels
    slurmdbd left empty. Array and het ids must agree with sacct's JobID (`sacctmgr ... where
    jobid=1234_7` then hits that one task, never another job's). Raises RecordContradicts
    when the record names another task or component, or another user, than slurmdbd.
    """
    _check_ids(job, rec)
    if rec.user and job.user and rec.user != job.user:
        raise RecordContradicts(f"the record's user {rec.user!r} is not slurmdbd's {job.user!r}")
    try:
        hosts, cpus = rec.hosts(), rec.cpus()
    except CarbondError:
        hosts, cpus = (), []
    changes: dict[str, object] = {}
    if (hosts and len(cpus) == len(hosts) and len(set(hosts)) == len(hosts) == len(job.nodes)
            and set(hosts) == set(job.nodes) and abs(sum(cpus) - sum(job.cpus)) < 1e-6):
        held = dict(zip(hosts, cpus, strict=True))
        changes["cpus"] = tuple(float(held[n]) for n in job.nodes)
    for key in ("partition", "account", "user"):
        if not getattr(job, key) and getattr(rec, key):
            changes[key] = getattr(rec, key)
    if not _narrowed(job):
        changes["display_id"] = job.job_id  # plain job: sacctmgr addresses its raw id
    # v2 records (Slurm 23.02+) carry the epilog's start/end: hints only where sacct has none
    if job.start is None and rec.start_time is not None:
        changes["start"] = float(rec.start_time)
    if job.end is None and rec.end_time is not None and (job.start is not None or "start" in changes):
        changes["end"] = float(rec.end_time)
    return replace(job, **changes)


def _narrowed(job: Job) -> bool:
    """sacct's JobID names one array task (`1234_7`) or het component (`1234+1`)."""
    return re.fullmatch(r"\d+[_+]\d+", job.display_id or "") is not None


def _check_ids(job: Job, rec: SpoolRecord) -> None:
    if rec.job_id != job.job_id:
        raise RecordContradicts(f"the record is of job {rec.job_id}, slurmdbd's row of job {job.job_id}")
    claimed = rec.display_id if rec.display_id != rec.job_id else ""
    if claimed and claimed != job.display_id:
        raise RecordContradicts(f"the record names {claimed} but slurmdbd's JobID of {job.job_id} is "
                                f"{job.display_id or job.job_id}")


_with_record = with_record  # the name earlier tests use


def build(cfg: Config, registry: CollectorRegistry | None = None, progress: Progress | None = None) -> Daemon:
    """The daemon and everything it talks to, from the config. Runs no Slurm command."""
    registry = registry or CollectorRegistry()
    progress = progress or Progress()

    def runner(*args: Any, **kwargs: Any) -> Any:
        try:
            return subprocess.run(*args, **kwargs)  # noqa: S603 - argument lists only, see SlurmIO
        finally:
            progress.touch()

    services = build_services(cfg, runner)
    slurm, engine, victoria = services.slurm, services.engine, services.victoria
    # Every VictoriaMetrics response is progress too (a long fetch is many bounded requests).
    victoria.on_response = progress.touch
    ledger = Ledger(cfg.state_dir, cfg.cluster)
    metrics = Metrics(registry, cfg.cluster, cfg.metrics.per_user, cfg.metrics.max_label_values)
    metrics.resume(ledger)
    publisher = Publisher(ledger, slurm, metrics, cfg.slurm.comment_field, None)
    clock = time.time
    daemon = Daemon(cfg, Spool(cfg.spool_dir), ledger, slurm, engine, victoria, publisher, metrics,
                    clock=clock, progress=progress)
    if cfg.slurm.reconcile_seconds > 0:
        daemon.reconciler = Reconciler(slurm, ledger, clock, cfg.slurm.reconcile_seconds,
                                       cfg.slurm.reconcile_lag_seconds, monotonic=daemon.monotonic)
    if cfg.slurm.suspend_poll_seconds > 0:
        daemon.suspends = SuspendWatch(slurm, ledger, clock)
        if cfg.gpu is not None:
            daemon.gpu_capture = GpuCapture(slurm, ledger, clock)
    daemon.details = lambda pairs, new: after_record(cfg.state_dir, cfg, pairs, new, metrics)
    daemon.closer = Closer(cfg, engine, slurm, metrics, clock, ledger=ledger)
    daemon.running = RunningGauge(engine, slurm, metrics, clock)
    return daemon


def _notifier() -> Callable[[str], None]:
    """sd_notify that can never block the loop: a full or absent socket only drops the message."""
    notifier = sdnotify.SystemdNotifier()
    if notifier.socket is not None:
        notifier.socket.setblocking(False)
    return notifier.notify


def watchdog_seconds(env: Mapping[str, str] = os.environ) -> float | None:
    """WatchdogSec as systemd passed it to this process (a drop-in may change the unit's 60 s)."""
    if env.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


def run(cfg: Config) -> int:
    """Entry point of `carbond run` (systemd Type=notify): lock, /metrics, READY=1, then the loop."""
    lock = InstanceLock(cfg.state_dir, cfg.spool_dir).acquire()
    registry = CollectorRegistry()
    daemon = build(cfg, registry)
    daemon.notify = _notifier()
    daemon.lock = lock
    daemon.watchdog = watchdog_seconds()
    if daemon.watchdog is not None and cfg.slurm.timeout >= daemon.watchdog / 2:
        log.warning("slurm.timeout (%g s) is not below half of this unit's WatchdogSec (%g s): one slow Slurm "
                    "call can get the daemon restarted; lower slurm.timeout", cfg.slurm.timeout, daemon.watchdog)
    server = serve(cfg.metrics.listen, registry)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stop.set())
    log.info("carbond running: spool %s, state %s, metrics on %s", cfg.spool_dir, cfg.state_dir, cfg.metrics.listen)
    try:
        daemon.serve_forever()
    finally:
        server.shutdown()
        server.server_close()
        if daemon.closer is not None:
            daemon.closer.close()
        daemon.ledger.close()
        lock.release()
    log.info("carbond stopped")
    return 0
