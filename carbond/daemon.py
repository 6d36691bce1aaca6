"""`carbond run`: turn every spool record into a footprint in Slurm, once, without ever blocking Slurm.

One step of the loop:
    spool records --ledger says done--> acknowledged (a repeated record, or a crash after the write)
    the rest --one sacct call--> job facts --not in slurmdbd yet, or power not yet past the end--> retry later
    ready jobs --engine--> footprints --ledger (counted once) + metrics--> tokens --sacctmgr, concurrent-->
    written (or skipped, with the reason) --> spool record acknowledged.
A record that keeps failing for `slurm.retry_seconds` goes to the dead-letter folder with its reason.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import sdnotify
from prometheus_client import CollectorRegistry

from .config import Config
from .engine import Engine, build_engine
from .errors import CarbondError, IntensityUnavailable, SlurmError, VictoriaError
from .jobs import Job
from .ledger import COUNTED, PENDING_WRITE, Entry, Ledger
from .metrics import Metrics, serve
from .publish import WRITTEN, Publisher
from .slurm import JobFacts, SlurmIO, node_cpu_lookup
from .spool import Spool, SpoolRecord
from .victoria import VictoriaClient

log = logging.getLogger("carbond.daemon")

BATCH = 1000
POLL_SECONDS = 0.25
INTENSITY_EVERY = 300.0
HEALTH_EVERY = 2.0
FINAL_STATES = frozenset(COUNTED) - {PENDING_WRITE} | {"not-started", "zero-length"}


@dataclass
class Backoff:
    """When a record may be tried again, and why it is waiting."""

    first: float
    next_at: float = 0.0
    delay: float = 0.5
    reason: str = ""


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
    waiting: dict[str, Backoff] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    _intensity_at: float = 0.0
    _notified_at: float = 0.0

    # ---- the loop ---------------------------------------------------------------------------

    def serve_forever(self) -> None:
        self.notify("READY=1")
        while not self.stop.is_set():
            busy = self.step()
            self._health()
            if not busy:
                self.stop.wait(POLL_SECONDS)
        self.notify("STOPPING=1")

    def step(self) -> int:
        """One pass over the spool; returns how many records made progress."""
        records, dead = self.spool.pending(limit=BATCH)
        for d in dead:
            log.error("spool file %s dead-lettered: %s", d.path, d.reason)
        now = self.clock()
        known = self.ledger.known(r.job_id_key for r in records)
        done = 0
        due: list[SpoolRecord] = []
        for rec in records:
            state = known.get(rec.job_id_key)
            if state in FINAL_STATES:
                self._ack(rec)  # a repeated record, or a crash between write and acknowledgement
                done += 1
            elif self._due(rec, now):
                due.append(rec)
        if due:
            done += self._process(due, known)
        return done

    def _process(self, due: list[SpoolRecord], known: dict[str, str]) -> int:
        try:
            facts = self.slurm.read_jobs([r.job_id_key for r in due])
            self.metrics.success("slurmdbd")
        except SlurmError as exc:
            for rec in due:
                self._retry(rec, f"sacct failed: {exc}")
            return 0
        ready: list[tuple[SpoolRecord, JobFacts]] = []
        for rec in due:
            f = facts.get(rec.job_id_key)
            if f is None:
                self._retry(rec, "slurmdbd does not know the job yet")
            elif not f.ended:
                self._retry(rec, f"job is {f.state or 'not finished'} in slurmdbd", quick=True)
            else:
                ready.append((rec, replace(f, job=_with_record(f.job, rec))))
        fresh = [(r, f) for r, f in ready if known.get(r.job_id_key) != PENDING_WRITE]
        writes = [(r, f) for r, f in ready if known.get(r.job_id_key) == PENDING_WRITE]
        writes += self._account(fresh)
        return self._write(writes)

    def _account(self, ready: list[tuple[SpoolRecord, JobFacts]]) -> list[tuple[SpoolRecord, JobFacts]]:
        """Footprints into the ledger; returns the pairs whose token is now due."""
        ready = [(r, f) for r, f in ready if not self._power_pending(r, f)]
        if not ready:
            return []
        try:
            fps = list(self.engine.account([f.job for _, f in ready]))
        except (VictoriaError, IntensityUnavailable) as exc:
            for rec, _ in ready:
                self._retry(rec, str(exc))
            return []
        self.metrics.success("victoriametrics")
        self.metrics.success("intensity")
        final, out = [], []
        for (rec, f), fp in zip(ready, fps, strict=True):
            if fp.status == "error":
                self._retry(rec, fp.error or "error", bury_as=Entry.dead(rec.job_id_key, fp.error or "", f.job.end))
            else:
                final.append((rec, f, fp))
        entries = self.publisher.record([(f.job, fp) for _, f, fp in final])
        for (rec, f, _), entry in zip(final, entries, strict=True):
            if entry.state == PENDING_WRITE:
                out.append((rec, f))
            else:
                self._ack(rec)
        return out

    def _power_pending(self, rec: SpoolRecord, f: JobFacts) -> bool:
        """Wait (up to settle_seconds after the end) until every node has a sample past the end."""
        end, nodes = f.job.end, f.job.nodes
        if end is None or not nodes or self.clock() > end + self.cfg.settle_seconds:
            return False
        try:
            latest = self.victoria.latest_sample(nodes, end)
        except VictoriaError as exc:
            self._retry(rec, str(exc))
            return True
        if all(latest.get(n, 0) >= end for n in nodes):
            return False
        self._retry(rec, "waiting for power samples past the job's end", quick=True, count=False)
        return True

    def _write(self, pairs: list[tuple[SpoolRecord, JobFacts]]) -> int:
        if not pairs:
            return 0
        entries = {e.job_id: e for e in (self.ledger.get(r.job_id_key) for r, _ in pairs) if e}
        items = [(entries[r.job_id_key], f) for r, f in pairs if r.job_id_key in entries]
        results = self.publisher.write(items)
        done = 0
        for rec, _ in pairs:
            res = results.get(rec.job_id_key)
            if res == WRITTEN or (isinstance(res, str) and res.startswith("skipped:")):
                self._ack(rec)
                done += 1
            elif isinstance(res, SlurmError) and not getattr(res, "retryable", True):
                self._give_up(rec, f"sacctmgr refused: {res}", unwritable=True)
            else:
                self._retry(rec, f"sacctmgr: {res}", unwritable=True)
        return done

    # ---- bookkeeping ------------------------------------------------------------------------

    def _due(self, rec: SpoolRecord, now: float) -> bool:
        b = self.waiting.get(rec.job_id_key)
        return b is None or now >= b.next_at

    def _retry(self, rec: SpoolRecord, reason: str, quick: bool = False, count: bool = True,
               bury_as: Entry | None = None, unwritable: bool = False) -> None:
        now = self.clock()
        b = self.waiting.setdefault(rec.job_id_key, Backoff(first=now))
        if count and now - min(b.first, rec.epilog_time or now) > self.cfg.slurm.retry_seconds:
            self._give_up(rec, reason, bury_as=bury_as, unwritable=unwritable)
            return
        if reason != b.reason:
            log.info("job %s: retrying: %s", rec.display_id, reason)
        b.reason = reason
        b.delay = 1.0 if quick else min(b.delay * 2, 60.0)
        b.next_at = now + b.delay

    def _give_up(self, rec: SpoolRecord, reason: str, bury_as: Entry | None = None, unwritable: bool = False) -> None:
        log.error("job %s: giving up after retries: %s", rec.display_id, reason)
        if unwritable:
            self.ledger.mark_unwritable(rec.job_id_key, reason[:500])
        elif bury_as is not None or self.ledger.get(rec.job_id_key) is None:
            entry = bury_as or Entry.dead(rec.job_id_key, reason[:500])
            self.metrics.recorded([entry], self.ledger.record_many([entry]))
        self.spool.dead_letter(rec, reason)
        self.waiting.pop(rec.job_id_key, None)

    def _ack(self, rec: SpoolRecord) -> None:
        self.spool.ack(rec)
        self.waiting.pop(rec.job_id_key, None)

    def _health(self) -> None:
        """Gauges every pass; the watchdog and STATUS at most every HEALTH_EVERY seconds."""
        count, oldest = self.spool.backlog()
        self.metrics.set_backlog(count, oldest)
        self.metrics.set_dead_letters(self.spool.dead_count())
        now = self.clock()
        if now - self._notified_at < HEALTH_EVERY:
            return
        self._notified_at = now
        self.notify("WATCHDOG=1")
        if now - self._intensity_at >= INTENSITY_EVERY:
            self._intensity_at = now
            try:
                self.metrics.set_intensity(self.engine.intensity.current())
            except CarbondError as exc:
                log.warning("current grid intensity unavailable: %s", exc)
        jobs, grams = self.metrics.accounted()
        self.notify(f"STATUS=backlog {count} job(s); {jobs:.0f} accounted, {grams / 1000:.3f} kg CO2e")


def _with_record(job: Job, rec: SpoolRecord) -> Job:
    """The job as slurmctld handed it to the epilog, where sacct may not know better yet.

    For about a second after a job ends, slurmdbd's record can be incomplete: NodeList only the
    batch host, no partition, no array ids. The array ids matter most: `sacctmgr ... where
    jobid=<raw id of task 1>` would rewrite every task of the array, while `1234_1` hits one.
    The epilog also has the exact CPUs per node, where sacct only has a total.
    """
    try:
        hosts, cpus = rec.hosts(), rec.cpus()
    except CarbondError:
        hosts, cpus = (), []
    changes: dict[str, object] = {}
    if hosts:
        per_node = tuple(float(c) for c in cpus) if len(cpus) == len(hosts) else ()
        if not per_node and job.cpus:
            per_node = (sum(job.cpus) / len(hosts),) * len(hosts)
        changes.update(nodes=tuple(hosts), cpus=per_node)
    for key in ("partition", "account", "user"):
        if getattr(rec, key):
            changes[key] = getattr(rec, key)
    if rec.array_job_id:
        changes["display_id"] = rec.display_id
    return replace(job, **changes)


def build(cfg: Config, registry: CollectorRegistry | None = None) -> Daemon:
    """The daemon and everything it talks to, from the config."""
    registry = registry or CollectorRegistry()
    slurm = SlurmIO(cfg.slurm, cluster=cfg.cluster or None)
    engine, victoria = build_engine(cfg, node_cpus=node_cpu_lookup(slurm))
    ledger = Ledger(cfg.state_dir, cfg.cluster)
    metrics = Metrics(registry, cfg.cluster, cfg.metrics.per_user)
    metrics.resume(ledger)
    lowercases = _lowercases(slurm)
    publisher = Publisher(ledger, slurm, metrics, cfg.slurm.comment_field, lowercases)
    return Daemon(cfg, Spool(cfg.spool_dir), ledger, slurm, engine, victoria, publisher, metrics)


def _lowercases(slurm: SlurmIO) -> bool:
    try:
        return slurm.lowercases()
    except SlurmError as exc:
        log.warning("cannot read the Slurm version (%s); assuming sacctmgr lowercases values", exc)
        return True


def _notifier() -> Callable[[str], None]:
    """sd_notify that can never block the loop: a full or absent socket only drops the message."""
    notifier = sdnotify.SystemdNotifier()
    if notifier.socket is not None:
        notifier.socket.setblocking(False)
    return notifier.notify


def run(cfg: Config) -> int:
    """Entry point of `carbond run` (systemd Type=notify)."""
    registry = CollectorRegistry()
    daemon = build(cfg, registry)
    daemon.notify = _notifier()
    server = serve(cfg.metrics.listen, registry)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stop.set())
    log.info("carbond running: spool %s, state %s, metrics on %s", cfg.spool_dir, cfg.state_dir, cfg.metrics.listen)
    try:
        daemon.serve_forever()
    finally:
        server.shutdown()
        server.server_close()
        daemon.ledger.close()
    log.info("carbond stopped")
    return 0
