"""Visible loss: jobs that ended in slurmdbd but never reached the spool (spool full or missing,
epilog not configured on a controller) are found, accounted and counted.

Every `slurm.reconcile_seconds`, one `sacct` call lists the jobs that ended in a bounded window
ending `reconcile_lag_seconds` ago (their spool record, if any, has had time to arrive); those
with neither a ledger row nor a spool record are handed to the daemon as recovered jobs
(ledger origin "recovered", `carbond_jobs_recovered_total`). The window moves forward from
where the last one ended, so each job is looked at about once; at start it reaches an hour back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .ledger import Ledger
from .slurm import JobFacts, SlurmIO

log = logging.getLogger("carbond.reconcile")

MAX_WINDOW = 3600.0
"""A window spans at most an hour (or 4 periods, if longer): after a long stop, catch up in bounded
steps. The first window after start reaches this far back."""


@dataclass
class Reconciler:
    slurm: SlurmIO
    ledger: Ledger
    clock: Callable[[], float]
    every: float
    lag: float
    cursor: float | None = None
    next_at: float = float("-inf")
    monotonic: Callable[[], float] = time.monotonic
    """When the next window is due: a wall clock stepped back (NTP, a VM restore) must not stall it;
    the windows themselves are wall-clock job end times."""

    def _span(self) -> float:
        return max(MAX_WINDOW, 4 * self.every)

    def due(self) -> bool:
        return self.every > 0 and self.monotonic() >= self.next_at

    def find(self, spooled: Iterable[str]) -> list[JobFacts]:
        """Jobs of the next window with no ledger row and no spool record (`spooled`: job ids)."""
        now = self.clock()
        self.next_at = self.monotonic() + self.every
        hi = now - self.lag
        if self.cursor is None:
            self.cursor = hi - self._span()  # fixed at the first try, so a failed first call loses nothing
        lo = self.cursor
        hi = min(hi, lo + self._span())
        if hi <= lo:
            return []
        facts = self.slurm.jobs_ended_between(lo, hi)
        self.cursor = hi
        if not facts:
            return []
        known = self.ledger.known(facts)
        waiting = set(spooled)
        missing = [f for key, f in facts.items() if key not in known and key not in waiting]
        if missing:
            log.warning("%d job(s) ended between %.0f and %.0f without a spool record: accounting them",
                        len(missing), lo, hi)
        return missing
