"""Publishing footprints: once into the ledger (which feeds the metrics), then the token into Slurm.

The order is what makes crashes harmless: a job is counted when its ledger row is inserted
(the insert is the dedup), and the token write that follows is idempotent (it replaces an
earlier carbond token), so a crash between write and acknowledgement only repeats the write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .footprint import JobFootprint
from .jobs import Job
from .ledger import Entry, Ledger
from .metrics import Metrics
from .slurm import FIELD_OPTIONS, JobFacts, SlurmError, SlurmIO
from .token import format_token, merge, skip_reason

log = logging.getLogger("carbond.publish")

@dataclass(frozen=True)
class Written:
    """The token reached slurmdbd (and the ledger says so)."""


@dataclass(frozen=True)
class Skipped:
    """The field was left alone on purpose (would-mangle, foreign-payload, too-long); the footprint
    stays in the ledger and the metrics."""

    reason: str


WRITTEN = Written()
Outcome = Written | Skipped | SlurmError
"""What a write came to: written, skipped with its reason, or the Slurm error (retry the retryable)."""
TOO_LONG = "too-long"
MAX_ARGUMENT = 128 * 1024 - 1
"""Bytes of one command-line argument (Linux MAX_ARG_STRLEN, 128 KiB with its NUL): sacctmgr's
`set AdminComment=<field>` past it fails to start (E2BIG), for this job only, every time."""


def too_long(field: str, value: str) -> bool:
    """Would `sacctmgr ... set <Field>=<value>` exceed one argument's limit?"""
    return len(f"{FIELD_OPTIONS.get(field, field)}={value}".encode("utf-8", "surrogateescape")) > MAX_ARGUMENT


@dataclass
class Publisher:
    ledger: Ledger
    slurm: SlurmIO
    metrics: Metrics | None
    field: str
    """The configured comment field: admin_comment, system_comment or comment."""
    lowercases: bool | None = True
    """Whether this Slurm's sacctmgr lowercases values (22.05 does); None: ask sacctmgr at the first
    write (never at start-up, so READY=1 and /metrics never wait for Slurm)."""

    def _lowercases(self) -> bool:
        if self.lowercases is None:
            try:
                self.lowercases = self.slurm.lowercases()
            except SlurmError as exc:
                log.warning("cannot read the Slurm version (%s); assuming sacctmgr lowercases values", exc)
                return True  # asked again at the next write
        return self.lowercases

    def record(self, pairs: Sequence[tuple[Job, JobFootprint]], write: bool = True, origin: str = "",
               on_recorded: Callable[[list[tuple[Job, JobFootprint]], list[bool]], None] | None = None
               ) -> list[Entry]:
        """Ledger entries for final footprints; new ones are counted in the metrics.

        `on_recorded(pairs, new)` runs once they are in the ledger (the daemon: their breakdown)."""
        entries = [replace(Entry.from_footprint(job, fp, format_token(fp) if write and fp.status == "ok" else None),
                           origin=origin) for job, fp in pairs]
        new = self.ledger.record_many(entries)
        if self.metrics:
            self.metrics.recorded(entries, new)
        if on_recorded is not None:
            on_recorded(list(pairs), list(new))
        return entries

    def write(self, items: Sequence[tuple[Entry, JobFacts]], cancel: Callable[[], bool] | None = None
              ) -> dict[str, Outcome]:
        """Write pending tokens merged into each job's current field; each is marked written in the
        ledger as its sacctmgr call returns, so a restart never redoes a finished write.

        Returns job id -> its Outcome.
        """
        out: dict[str, Outcome] = {}
        todo: list[tuple[Entry, JobFacts, str]] = []
        lowercases = self._lowercases() if items else True
        for entry, facts in items:
            current = facts.field(self.field)
            reason = skip_reason(current, lowercases)
            value = "" if reason else merge(current, entry.token or "")
            if not reason and too_long(self.field, value):
                reason = TOO_LONG
            if reason:
                if self.ledger.mark_unwritable(entry.job_id, reason) and self.metrics:
                    self.metrics.write_skipped(reason)
                log.warning("job %s: %s left unchanged (%s); footprint kept in the ledger and metrics",
                            entry.job_id, self.field, reason)
                out[entry.job_id] = Skipped(reason)
            else:
                todo.append((entry, facts, value))
        by_raw = {facts.job.job_id: entry for entry, facts, _ in todo}
        marked: dict[str, BaseException | None] = {}

        def done(raw: str, err: object) -> None:
            entry = by_raw.get(raw)
            if err is not None or entry is None:
                return
            try:
                self.ledger.mark_written(entry.job_id)  # as it returns, not after the whole batch
                marked[entry.job_id] = None
            except Exception as exc:  # noqa: BLE001 - reported below, the write is redone later
                marked[entry.job_id] = exc
            if self.metrics:
                self.metrics.written(entry.end_time)

        results = self.slurm.write_many([(facts, self.field, value) for _, facts, value in todo], on_done=done,
                                        cancel=cancel)
        for entry, facts, _ in todo:
            err = results.get(facts.job.job_id, results.get(entry.job_id))
            if err is None and entry.job_id not in marked:
                self.ledger.mark_written(entry.job_id)  # a runner that does not call on_done (fakes)
                marked[entry.job_id] = None
            failure = marked.get(entry.job_id)
            if err is None and failure is not None:
                raise failure  # the ledger could not take the mark: an outage, retried as such
            out[entry.job_id] = WRITTEN if err is None else err
        return out
