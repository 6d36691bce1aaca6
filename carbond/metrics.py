"""Prometheus metrics of the daemon: the site's running totals and carbond's own health.

Everything lives in a CollectorRegistry passed in (no global state), so tests and the daemon
each have their own. The energy, emissions, jobs and skipped-write counters resume from the
ledger at start: they are then always the sum over the accounted jobs, across restarts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .errors import ConfigError
from .ledger import ACCOUNTED, DEAD, NOT_STARTED, ZERO_LENGTH, Entry, Ledger

OUTCOMES = (ACCOUNTED, NOT_STARTED, ZERO_LENGTH, DEAD)
SKIP_REASONS = ("would-mangle", "foreign-payload")
TARGETS = ("victoriametrics", "intensity", "slurmdbd")
LATENCY_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
"""Seconds from job end to token written: seconds normally, hours when VictoriaMetrics was down."""


class Metrics:
    """carbond's metrics in `registry`; `per_user` adds a user label to the totals."""

    def __init__(self, registry: CollectorRegistry, cluster: str, per_user: bool = False) -> None:
        self.registry = registry
        self.cluster = cluster
        self.per_user = per_user
        labels = ["cluster", "partition", "account"] + (["user"] if per_user else [])
        self.energy = Counter("carbond_energy_joules", "Energy of accounted jobs (PUE included).",
                              labels, registry=registry)
        self.emissions = Counter("carbond_emissions_grams", "CO2e of accounted jobs, operational plus embodied.",
                                 labels, registry=registry)
        self.jobs = Counter("carbond_jobs", "Jobs carbond is done with, by outcome.", ["outcome"], registry=registry)
        self.writes_skipped = Counter("carbond_writes_skipped",
                                      "Footprints kept out of the comment field because a rewrite would damage it.",
                                      ["reason"], registry=registry)
        self.backlog = Gauge("carbond_backlog_jobs", "Jobs waiting to be accounted or written.", registry=registry)
        self.backlog_oldest = Gauge("carbond_backlog_oldest_seconds", "Age of the oldest job in the backlog.",
                                    registry=registry)
        self.dead_letters = Gauge("carbond_dead_letters", "Records in the dead-letter folder.", registry=registry)
        self.last_success = Gauge("carbond_last_success_timestamp_seconds",
                                  "Unix time of the last successful contact, by target (0: never).",
                                  ["target"], registry=registry)
        self.intensity = Gauge("carbond_grid_intensity_grams_per_kwh",
                               "Grid carbon intensity of the current half-hour.", registry=registry)
        self.latency = Histogram("carbond_processing_latency_seconds", "From job end to its token written.",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        # issue 8: GPUs, energy no job carries, running jobs (fed as carbond.idle/running say)
        self.gpu_energy = Counter("carbond_gpu_energy_joules", "Measured GPU energy of accounted jobs.",
                                  labels, registry=registry)
        self.unattributed = Counter("carbond_unattributed_energy_joules",
                                    "Node energy no job carries (idle, unallocated), per closed half-hour.",
                                    ["cluster", "partition"], registry=registry)
        self.running_emissions = Gauge("carbond_running_jobs_emissions_grams",
                                       "CO2e so far of the jobs running now.", ["cluster"], registry=registry)
        self.running_emissions.labels(cluster=cluster).set(0.0)
        for outcome in OUTCOMES:
            self.jobs.labels(outcome=outcome)
        for reason in SKIP_REASONS:
            self.writes_skipped.labels(reason=reason)
        for target in TARGETS:
            self.last_success.labels(target=target)
        self.intensity.set(float("nan"))

    def resume(self, ledger: Ledger) -> None:
        """Start every counter at the ledger's totals; call once, before any add()."""
        for (partition, account, user), t in ledger.totals().items():
            self.add(partition, account, user, t.joules, t.grams)
        for outcome, n in ledger.outcome_counts().items():
            self.jobs.labels(outcome=outcome).inc(n)
        for reason, n in ledger.skipped_counts().items():
            self.writes_skipped.labels(reason=reason).inc(n)

    def recorded(self, entries: Iterable[Entry], new: Iterable[bool] | None = None) -> None:
        """Count ledger entries that record()/record_many() reported as new (all if `new` is None)."""
        entries = list(entries)
        flags = list(new) if new is not None else [True] * len(entries)
        for entry, is_new in zip(entries, flags, strict=True):
            if not is_new:
                continue
            self.jobs.labels(outcome=entry.outcome).inc()
            if entry.counted:
                self.add(entry.partition, entry.account, entry.user, entry.energy_j, entry.co2e_g)

    def add(self, partition: str, account: str, user: str, joules: float, grams: float) -> None:
        labels = {"cluster": self.cluster, "partition": partition, "account": account}
        if self.per_user:
            labels["user"] = user
        self.energy.labels(**labels).inc(joules)
        self.emissions.labels(**labels).inc(grams)

    def add_gpu(self, partition: str, account: str, user: str, joules: float) -> None:
        labels = {"cluster": self.cluster, "partition": partition, "account": account}
        if self.per_user:
            labels["user"] = user
        self.gpu_energy.labels(**labels).inc(joules)

    def add_unattributed(self, partition: str, joules: float) -> None:
        """Count a closed half-hour's unattributed energy (once: resume() does not replay it)."""
        self.unattributed.labels(cluster=self.cluster, partition=partition).inc(max(0.0, joules))

    def set_running_emissions(self, grams: float) -> None:
        self.running_emissions.labels(cluster=self.cluster).set(grams)

    def write_skipped(self, reason: str) -> None:
        """Count a field left alone; call when Ledger.mark_unwritable() returned True."""
        self.writes_skipped.labels(reason=reason).inc()

    def written(self, end_time: float | None, now: float | None = None) -> None:
        """A token reached slurmdbd: observe the job-end-to-written latency."""
        now = time.time() if now is None else now
        self.last_success.labels(target="slurmdbd").set(now)
        if end_time is not None:
            self.latency.observe(max(0.0, now - end_time))

    def success(self, target: str, when: float | None = None) -> None:
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
        self.last_success.labels(target=target).set(time.time() if when is None else when)

    def accounted(self) -> tuple[float, float]:
        """(jobs accounted, grams CO2e) so far: the running totals, from memory, not the ledger."""
        jobs = self.registry.get_sample_value("carbond_jobs_total", {"outcome": "accounted"}) or 0.0
        grams = sum(s.value for m in self.emissions.collect() for s in m.samples if s.name.endswith("_total"))
        return jobs, grams

    def set_backlog(self, jobs: int, oldest_seconds: float) -> None:
        self.backlog.set(jobs)
        self.backlog_oldest.set(max(0.0, oldest_seconds) if jobs else 0.0)

    def set_dead_letters(self, n: int) -> None:
        self.dead_letters.set(n)

    def set_intensity(self, g_per_kwh: float | None) -> None:
        self.intensity.set(float("nan") if g_per_kwh is None else g_per_kwh)


def parse_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:9847`, `[::1]:9847`, `:9847` (all interfaces) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError([f"metrics.listen: expected HOST:PORT, got {listen!r}"])
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(listen: str, registry: CollectorRegistry):  # -> wsgiref WSGIServer
    """Serve `registry` on `listen` in a daemon thread; returns the server.

    Stop it with `server.shutdown(); server.server_close()`; `server.server_port` is the
    port actually bound (useful with port 0).
    """
    host, port = parse_listen(listen)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
