"""Suspend intervals, which slurmdbd does not give out (sacct has only the total `Suspended`).

slurmdbd does keep them (its `<cluster>_suspend_table`, used for usage rollups), but no client
command prints them, so carbond records them: every `slurm.suspend_poll_seconds` one
`squeue -t SUSPENDED` call; on each change (a job newly suspended, or no longer) one
`scontrol show job` for that job gives `SuspendTime`, the exact time of its last suspend or
resume. The intervals go to the ledger; carbond/runs.py uses them only when their sum matches
sacct's total, so a missed transition can make a job "estimated", never wrongly exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from .ledger import Ledger
from .slurm import SlurmIO

log = logging.getLogger("carbond.suspend")


@dataclass
class SuspendWatch:
    slurm: SlurmIO
    ledger: Ledger
    clock: Callable[[], float]
    _open: set[str] | None = field(default=None, repr=False)

    def poll(self) -> int:
        """Record the changes since the last poll; returns how many jobs changed."""
        if self._open is None:
            self._open = self.ledger.open_suspends()
        now_suspended = self.slurm.suspended_jobs()
        started = now_suspended - self._open
        resumed = self._open - now_suspended
        for job_id in sorted(started):
            at = self.slurm.suspend_time(job_id) or self.clock()
            self.ledger.suspend_started(job_id, at)
            self._open.add(job_id)
            log.info("job %s: suspended at %.0f", job_id, at)
        for job_id in sorted(resumed):
            at = self.slurm.suspend_time(job_id)
            if at is None or at < min((s for s, e in self.ledger.suspended(job_id) if e is None), default=0.0):
                at = self.clock()  # gone from slurmctld (ended while suspended): the poll time bounds it
            self.ledger.suspend_ended(job_id, at)
            self._open.discard(job_id)
            log.info("job %s: resumed (or ended) at %.0f", job_id, at)
        return len(started) + len(resumed)
