"""The GPU indices each job holds, caught while it runs (slurmctld forgets them at its end).

EpilogSlurmctld gets no SLURM_JOB_GPUS, and once a job is COMPLETED `scontrol -d show job`
shows `GRES=` without `IDX` (seen on 22.05). So the daemon looks while the job runs: every
`slurm.suspend_poll_seconds`, one `squeue` lists the running jobs with their allocated TRES, and
for each GPU job not yet recorded one `scontrol -d -o show job` gives, per node, the indices
(`Nodes=n3 CPU_IDs=0 Mem=0 GRES=gpu:1(IDX:0)`). They go to the ledger, and carbond.accounting
hands them to the engine (docs/accounting.md R5). A job that starts and ends between two polls
is not caught: its GPUs are then found by the series' job label, else by its GPU count (flagged).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .hostlist import expand

log = logging.getLogger("carbond.gpu_capture")

_NODE_GRES = re.compile(r"(?:^|\s)Nodes=(\S+)\s+CPU_IDs=\S*\s+Mem=\S*\s+GRES=(\S*)")
_IDX = re.compile(r"IDX:([0-9,\-]+)")
_JOB_ID = re.compile(r"(?:^|\s)JobId=(\d+)(?:\s|$)")


def parse_running_gpu_jobs(text: str) -> set[str]:
    """Job ids of `squeue -h -t RUNNING -O JobID:30,tres-alloc:2000` whose allocation holds a GPU."""
    out = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "gres/gpu" in parts[1] and re.fullmatch(r"[0-9_+]+", parts[0]):
            out.add(parts[0])
    return out


def parse_indices(text: str) -> tuple[str, dict[str, str]]:
    """(JobIdRaw, node -> "0,2", "" where it holds none) from `scontrol -d -o show job`; no node
    when it shows no index at all."""
    m = _JOB_ID.search(text)
    per_node: dict[str, str] = {}
    for nodes, gres in _NODE_GRES.findall(text):
        idx = ",".join(_IDX.findall(gres))
        for node in expand(nodes):
            per_node[node] = idx  # "": the job holds no GPU on this node
    if not any(per_node.values()):
        per_node = {}  # no index at all (a finished job shows GRES= everywhere): nothing to record
    return (m.group(1) if m else ""), per_node


@dataclass
class GpuCapture:
    slurm: object
    ledger: object
    clock: Callable[[], float]
    _seen: set[str] = field(default_factory=set)
    """Jobs already recorded (or shown without indices): asked once each."""

    def poll(self) -> int:
        """Record the indices of the running GPU jobs not seen yet; returns how many were recorded."""
        running = self.slurm.running_gpu_jobs()
        self._seen &= running  # forget jobs that ended: the set stays as small as what runs
        new = running - self._seen
        if new:
            new -= self.ledger.gpu_jobs_captured(new)
        done = 0
        for job in sorted(new):
            raw, per_node = parse_indices(self.slurm.job_details(job))
            self._seen.add(job)
            if raw and per_node:
                self.ledger.record_gpu_indices(raw, per_node)
                self._seen.add(raw)
                log.debug("job %s: GPU indices %s", raw, per_node)
                done += 1
        return done
