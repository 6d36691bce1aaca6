"""Publishing footprints: once into the ledger (which feeds the metrics), then the token into Slurm.

The order is what makes crashes harmless: a job is counted when its ledger row is inserted
(the insert is the dedup), and the token write that follows is idempotent (it replaces an
earlier carbond token), so a crash between write and acknowledgement only repeats the write.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from .footprint import JobFootprint
from .jobs import Job
from .ledger import Entry, Ledger
from .metrics import Metrics
from .slurm import JobFacts, SlurmIO
from .token import format_token, merge, skip_reason

log = logging.getLogger("carbond.publish")

WRITTEN = "written"


@dataclass
class Publisher:
    ledger: Ledger
    slurm: SlurmIO
    metrics: Metrics | None
    field: str
    """The configured comment field: admin_comment, system_comment or comment."""
    lowercases: bool = True
    """Whether this Slurm's sacctmgr lowercases values (22.05 does)."""

    def record(self, pairs: Sequence[tuple[Job, JobFootprint]], write: bool = True) -> list[Entry]:
        """Ledger entries for final footprints; new ones are counted in the metrics."""
        entries = [Entry.from_footprint(job, fp, format_token(fp) if write and fp.status == "ok" else None)
                   for job, fp in pairs]
        new = self.ledger.record_many(entries)
        if self.metrics:
            self.metrics.recorded(entries, new)
        return entries

    def write(self, items: Sequence[tuple[Entry, JobFacts]]) -> dict[str, object]:
        """Write pending tokens merged into each job's current field.

        Returns job id -> "written", "skipped:<reason>" or the SlurmError (retry the retryable).
        """
        out: dict[str, object] = {}
        todo: list[tuple[Entry, JobFacts, str]] = []
        for entry, facts in items:
            current = facts.field(self.field)
            reason = skip_reason(current, self.lowercases)
            if reason:
                if self.ledger.mark_unwritable(entry.job_id, reason) and self.metrics:
                    self.metrics.write_skipped(reason)
                log.warning("job %s: %s left unchanged (%s); footprint kept in the ledger and metrics",
                            entry.job_id, self.field, reason)
                out[entry.job_id] = f"skipped:{reason}"
            else:
                todo.append((entry, facts, merge(current, entry.token or "")))
        results = self.slurm.write_many([(facts, self.field, value) for _, facts, value in todo])
        written = []
        for entry, facts, _ in todo:
            err = results.get(facts.job.job_id, results.get(entry.job_id))
            out[entry.job_id] = WRITTEN if err is None else err
            if err is None:
                written.append(entry)
        self.ledger.mark_written([e.job_id for e in written])  # one transaction, one fsync
        if self.metrics:
            for entry in written:
                self.metrics.written(entry.end_time)
        return out
