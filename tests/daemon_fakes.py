"""Fakes for in-process Daemon tests: Slurm, the engine and VictoriaMetrics; the spool, ledger,
metrics and publisher are the real ones, in a temporary directory, driven by a fake clock."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from test_spool import GOOD, record_text

from carbond.config import Config, SlurmConfig
from carbond.daemon import Daemon, Progress
from carbond.errors import SlurmError
from carbond.footprint import JobFootprint
from carbond.jobs import Job
from carbond.ledger import Ledger
from carbond.metrics import Metrics
from carbond.publish import Publisher
from carbond.slurm import JobFacts, JobNotInDatabase, Run, SlurmCommandError
from carbond.spool import Spool

T0 = 1_800_000_000.0
WATTS = 100.0
"""Every node draws this much for the fake engine: energy = watts x seconds x nodes x scale."""


class Killed(BaseException):
    """The process dies (SIGKILL): nothing in the daemon may catch it."""


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def job(job_id: str, start: float = T0 - 100, end: float = T0 - 10, nodes=("n1",), cpus=(2.0,), **kw) -> Job:
    kw.setdefault("partition", "debug")
    kw.setdefault("display_id", job_id)
    return Job(job_id, start, end, tuple(nodes), tuple(cpus), **kw)


@dataclass
class FakeSlurm:
    jobs: dict[str, JobFacts] = field(default_factory=dict)
    runs: dict[str, list[Run]] = field(default_factory=dict)
    poison: set[str] = field(default_factory=set)
    """Job ids whose presence in a batch makes read_jobs raise (an unparsable record)."""
    down: bool = False
    refuse: set[str] = field(default_factory=set)
    fail_writes: set[str] = field(default_factory=set)
    not_in_db: set[str] = field(default_factory=set)
    """Job ids whose write sacctmgr answers with "not in the database" (read fine, write misses)."""
    crash_after: int | None = None
    """Raise after this many writes (a kill mid-batch), after on_done for each that returned."""
    suspended: set[str] = field(default_factory=set)
    suspend_times: dict[str, float] = field(default_factory=dict)
    ended_window: dict[str, JobFacts] = field(default_factory=dict)
    written: list[tuple[str, str]] = field(default_factory=list)
    reads: list[list[str]] = field(default_factory=list)
    version_calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, j: Job, state: str = "COMPLETED", admin: str = "") -> None:
        self.jobs[j.job_id] = JobFacts(j, state, admin_comment=admin)

    def _outage(self, what: str) -> None:
        if self.down:
            raise SlurmCommandError([what, "-j", "1,2,3"], 1, "slurmdbd unreachable")

    def read_jobs(self, ids):
        ids = list(ids)
        self.reads.append(ids)
        self._outage("sacct")
        if self.poison & set(ids):
            raise AttributeError("'list' object has no attribute 'get'")
        return {i: self.jobs[i] for i in ids if i in self.jobs}

    def read_runs(self, ids):
        self._outage("sacct")
        return {i: self.runs[i] for i in ids if i in self.runs}

    def write_many(self, items, concurrency=None, on_done=None, cancel=None):
        out: dict[str, Any] = {}
        for n, (facts, _field, value) in enumerate(items):
            raw = facts.job.job_id
            if self.crash_after is not None and n >= self.crash_after:
                raise Killed("killed mid-batch")
            if cancel is not None and cancel():
                out[raw] = SlurmError("not written: carbond is stopping")
                continue
            if self.down:
                err: Any = SlurmCommandError(["sacctmgr"], 1, "slurmdbd unreachable")
            elif raw in self.refuse:
                err = SlurmCommandError(["sacctmgr", "-i", "modify", "job", f"where jobid={raw}"], 1,
                                        "Access/permission denied", retryable=False)
            elif raw in self.fail_writes:
                err = SlurmCommandError(["sacctmgr"], 1, "Nothing modified")
            elif raw in self.not_in_db:
                err = JobNotInDatabase(["sacctmgr"], 1, "Request didn't affect anything", "not in slurmdbd")
            else:
                err = None
                with self.lock:
                    self.written.append((raw, value))
                f = self.jobs[raw]
                self.jobs[raw] = JobFacts(f.job, f.state, admin_comment=value)
            out[raw] = err
            if on_done is not None:
                on_done(raw, err)
        return out

    def lowercases(self) -> bool:
        self.version_calls += 1
        return True

    def suspended_jobs(self):
        self._outage("squeue")
        return set(self.suspended)

    def suspend_time(self, job_id):
        return self.suspend_times.get(job_id)

    def jobs_ended_between(self, lo, hi):
        self._outage("sacct")
        return {k: f for k, f in self.ended_window.items() if lo <= (f.job.end or 0) < hi}


class FakeIntensity:
    def current(self) -> float:
        return 200.0


@dataclass
class FakeEngine:
    pue: float = 1.5
    fail: set[str] = field(default_factory=set)
    seen: list[Job] = field(default_factory=list)
    intensity: FakeIntensity = field(default_factory=FakeIntensity)

    def account(self, jobs):
        for j in jobs:
            self.seen.append(j)
            if j.job_id.split("#")[0] in self.fail:
                yield JobFootprint(j.job_id, "error", error="no power", pue=self.pue)
                continue
            secs = (j.end or 0) - (j.start or 0)
            kwh = WATTS * secs * len(j.nodes) / 3.6e6
            yield JobFootprint(j.job_id, "ok", energy_kwh=kwh, co2e_g=kwh * 200 * self.pue, operational_g=kwh * 200,
                               intensity_g_per_kwh=200.0, pue=self.pue, start=j.start, end=j.end,
                               partition=j.partition, account=j.account, user=j.user)


class FakeVictoria:
    def latest_sample(self, nodes, since):
        return {n: since + 1 for n in nodes}


@dataclass
class Rig:
    daemon: Daemon
    slurm: FakeSlurm
    engine: FakeEngine
    clock: Clock
    spool: Path
    registry: CollectorRegistry

    def record(self, job_id: str, name: str | None = None, **values: str) -> Path:
        v = dict(GOOD, job_id=job_id, array_job_id="", array_task_id="", nodes="n1", cpus_per_node="2")
        v.update(values)
        path = self.spool / (name or f"{job_id}.job")
        path.write_text(record_text(v))
        return path

    def run(self, passes: int = 1, advance: float = 61.0) -> None:
        for _ in range(passes):
            self.daemon.step()
            self.clock.advance(advance)

    def value(self, name: str, **labels: str) -> float:
        self.daemon.metrics.totals.invalidate()
        return self.registry.get_sample_value(name, labels) or 0.0

    @property
    def ledger(self) -> Ledger:
        return self.daemon.ledger

    def dead(self) -> list[str]:
        d = self.spool / "dead"
        return sorted(p.name for p in d.iterdir() if p.name.endswith(".job")) if d.exists() else []


def rig(tmp_path: Path, slurm: FakeSlurm | None = None, engine: FakeEngine | None = None, retry: int = 600,
        **slurm_cfg: Any) -> Rig:
    clock = Clock()
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    cfg = Config(cluster="c1", state_dir=str(tmp_path / "state"), spool_dir=str(spool), settle_seconds=0.0,
                 pue=1.5, slurm=SlurmConfig(retry_seconds=retry, **slurm_cfg))
    slurm = slurm or FakeSlurm()
    engine = engine or FakeEngine()
    registry = CollectorRegistry()
    ledger = Ledger(cfg.state_dir, "c1", clock=clock)
    metrics = Metrics(registry, "c1")
    metrics.resume(ledger)
    publisher = Publisher(ledger, slurm, metrics, "admin_comment", None)  # type: ignore[arg-type]
    d = Daemon(cfg, Spool(spool, clock=clock), ledger, slurm, engine, FakeVictoria(), publisher,  # type: ignore[arg-type]
               metrics, clock=clock, monotonic=clock, progress=Progress(clock))
    return Rig(d, slurm, engine, clock, spool, registry)
