"""Prometheus metrics of the daemon: the site's running totals and carbond's own health.

Everything lives in a CollectorRegistry passed in (no global state), so tests and the daemon
each have their own. Once a ledger is attached, the energy, emissions, jobs, skipped-write and
recovered counters, GPU and unattributed energy are read from it at scrape time (a custom collector, cached for a second), so
they always equal the ledger, whoever wrote it: the daemon, `backfill --write`, a re-queued dead
letter. Without a ledger (tests, one-shot tools) they count in memory.

Every `_total` only ever grows (Prometheus' rate() reads a decrease as a reset): the job and
skipped-write counters count events the ledger appends (a re-queued dead letter that is then
accounted adds to `accounted`, never takes from `dead`); the current states are gauges
(`carbond_ledger_jobs{state}`, `carbond_writes_unwritable{reason}`). Each exported counter is also held
at the highest value it has shown (a row an operator deletes never makes one go down). Label
values are capped per label (`metrics.max_label_values`): the rest are summed under `_other`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import config
from .errors import ConfigError
from .ledger import ACCOUNTED, COUNTED, DEAD, NOT_STARTED, SKIP_REASONS, STATES, ZERO_LENGTH, Entry, Ledger
from .ledger_columns import metric_totals

log = logging.getLogger("carbond.metrics")

OUTCOMES = (ACCOUNTED, NOT_STARTED, ZERO_LENGTH, DEAD)
LOOP_ERROR_KINDS = ("slurm", "victoriametrics", "intensity", "ledger", "spool", "poison", "internal")
"""carbond_loop_errors_total{kind}: what a pass of the loop ran into (and contained)."""
SNAPSHOT_TTL = 1.0
TARGETS = ("victoriametrics", "intensity", "slurmdbd")
OTHER = "_other"
"""The label value of everything past metrics.max_label_values distinct values of a label."""
CAPPED_LABELS = ("partition", "account", "user")
LATENCY_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
"""Seconds from job end to token written: seconds normally, hours when VictoriaMetrics was down."""


class Metrics:
    """carbond's metrics in `registry`; `per_user` adds a user label to the totals."""

    def __init__(self, registry: CollectorRegistry, cluster: str, per_user: bool = False,
                 max_label_values: int = 500) -> None:
        self.registry = registry
        self.cluster = cluster
        self.per_user = per_user
        self.totals = _Totals(cluster, per_user, LabelCap(max_label_values))
        registry.register(self.totals)
        self.loop_errors = Counter("carbond_loop_errors", "Errors a pass of the daemon loop ran into and contained.",
                                   ["kind"], registry=registry)
        for kind in LOOP_ERROR_KINDS:
            self.loop_errors.labels(kind=kind)
        self.dropped = Counter("carbond_power_samples_dropped",
                               "Power samples refused at the boundary (not finite, negative, above the node's bound).",
                               ["meter"], registry=registry)
        self._dropped_seen: dict[str, int] = {}
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
        # issue 8: running jobs (a gauge, set by the daemon); GPU and unattributed energy are totals (_Totals)
        self.running_emissions = Gauge("carbond_running_jobs_emissions_grams",
                                       "CO2e so far of the jobs running now.", ["cluster"], registry=registry)
        self.running_emissions.labels(cluster=cluster).set(0.0)
        for target in TARGETS:
            self.last_success.labels(target=target)
        self.intensity.set(float("nan"))

    def resume(self, ledger: Ledger) -> None:
        """Read the totals from `ledger` from now on (at every scrape): they then always equal it."""
        self.totals.ledger = ledger

    attach = resume

    def recorded(self, entries: Iterable[Entry], new: Iterable[bool] | None = None) -> None:
        """Count new ledger entries in memory; with a ledger attached the ledger is read instead."""
        if self.totals.ledger is not None:
            self.totals.invalidate()
            return
        entries = list(entries)
        flags = list(new) if new is not None else [True] * len(entries)
        for entry, is_new in zip(entries, flags, strict=True):
            if not is_new:
                continue
            self.totals.mem_jobs[entry.outcome] = self.totals.mem_jobs.get(entry.outcome, 0) + 1
            if entry.counted:
                self.add(entry.partition, entry.account, entry.user, entry.energy_j, entry.co2e_g)

    def add(self, partition: str, account: str, user: str, joules: float, grams: float) -> None:
        """In-memory totals (no ledger attached)."""
        key = (partition, account, user if self.per_user else "")
        j, g = self.totals.mem_sums.get(key, (0.0, 0.0))
        self.totals.mem_sums[key] = (j + joules, g + grams)

    def add_gpu(self, partition: str, account: str, user: str, joules: float) -> None:
        """Measured GPU energy of a recorded job (in memory; with a ledger attached the ledger is read)."""
        if self.totals.ledger is not None:
            self.totals.invalidate()
            return
        key = (partition, account, user if self.per_user else "")
        self.totals.mem_gpu[key] = self.totals.mem_gpu.get(key, 0.0) + joules

    def add_unattributed(self, partition: str, joules: float) -> None:
        """A closed half-hour's unattributed energy (in memory; with a ledger attached the ledger is read,
        so idle.resume_metrics and a re-closed range never count twice)."""
        if self.totals.ledger is not None:
            self.totals.invalidate()
            return
        self.totals.mem_unattributed[partition] = self.totals.mem_unattributed.get(partition, 0.0) + max(0.0, joules)

    def set_running_emissions(self, grams: float) -> None:
        self.running_emissions.labels(cluster=self.cluster).set(grams)

    def write_skipped(self, reason: str) -> None:
        """Count a field left alone (in memory; with a ledger attached its UNWRITABLE rows count)."""
        if self.totals.ledger is not None:
            self.totals.invalidate()
            return
        self.totals.mem_skipped[reason] = self.totals.mem_skipped.get(reason, 0) + 1

    def samples_dropped(self, meter: str, total: int) -> None:
        """The client's running count of dropped samples (node or gpu meters) into the counter."""
        delta = total - self._dropped_seen.get(meter, 0)
        if delta > 0:
            self.dropped.labels(meter=meter).inc(delta)
            self._dropped_seen[meter] = total

    def loop_error(self, kind: str) -> None:
        self.loop_errors.labels(kind=kind if kind in LOOP_ERROR_KINDS else "internal").inc()

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

    def accounted(self, max_age: float = 30.0) -> tuple[float, float]:
        """(jobs accounted, grams CO2e) so far, from a ledger snapshot at most `max_age` seconds old."""
        snap = self.totals.snapshot(max_age)
        jobs = sum(n for s, n in snap.states.items() if s in COUNTED) if snap.states else snap.jobs.get(ACCOUNTED, 0)
        return float(jobs), sum(g for _, g in snap.sums.values())

    def set_backlog(self, jobs: int, oldest_seconds: float) -> None:
        self.backlog.set(jobs)
        self.backlog_oldest.set(max(0.0, oldest_seconds) if jobs else 0.0)

    def set_dead_letters(self, n: int) -> None:
        self.dead_letters.set(n)

    def set_intensity(self, g_per_kwh: float | None) -> None:
        self.intensity.set(float("nan") if g_per_kwh is None else g_per_kwh)


parse_listen = config.parse_listen
"""The one rule for metrics.listen, shared with check-config (carbond.config.parse_listen)."""


def serve(listen: str, registry: CollectorRegistry):  # -> wsgiref WSGIServer
    """Serve `registry` on `listen` in a daemon thread; returns the server.

    Stop it with `server.shutdown(); server.server_close()`; `server.server_port` is the
    port actually bound (useful with port 0). A listen address that cannot be bound (in use,
    not this host's, a name that does not resolve) is a ConfigError naming metrics.listen.
    """
    host, port = parse_listen(listen)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except (OSError, UnicodeError) as exc:  # UnicodeError: the idna codec on a name it cannot encode
        why = getattr(exc, "strerror", None) or exc
        raise ConfigError([f"metrics.listen: cannot listen on {listen!r}: {why}"]) from None
    return server


class LabelCap:
    """At most `limit` distinct values per label (partition, account, user); the rest map to OTHER.

    The values that keep their own series are the first seen (by the ledger's first recorded_at,
    so a restart picks the same ones), and a value never moves in or out of OTHER while the
    daemon runs: every series stays monotonic. Users cannot inflate /metrics where associations
    are not enforced (any account or partition string then reaches slurmdbd and the ledger).
    """

    def __init__(self, limit: int = 500) -> None:
        self.limit = max(1, int(limit))
        self.admitted: dict[str, set[str]] = {k: set() for k in CAPPED_LABELS}
        self.other: dict[str, set[str]] = {k: set() for k in CAPPED_LABELS}

    def admit(self, label: str, values: Iterable[str], first_seen: Callable[[str], dict[str, float]] | None = None
              ) -> None:
        admitted, other = self.admitted[label], self.other[label]
        new = {v for v in values if v not in admitted and v not in other}
        if not new:
            return
        room = self.limit - len(admitted)
        if len(new) <= room:
            admitted |= new
            return
        first = first_seen(label) if first_seen is not None and room > 0 else {}  # a scan: only to choose
        order = sorted(new, key=lambda v: (first.get(v, float("inf")), v))
        admitted.update(order[: max(room, 0)])
        if not other:
            log.warning("metrics: more than %d distinct %s label values; the rest are summed under %s=%r "
                        "(metrics.max_label_values)", self.limit, label, label, OTHER)
        other.update(order[max(room, 0):])

    def map(self, label: str, value: str) -> str:
        return value if value in self.admitted[label] else OTHER

    def key(self, p: str, a: str, u: str, per_user: bool) -> tuple[str, str, str]:
        return self.map("partition", p), self.map("account", a), self.map("user", u) if per_user else ""


@dataclass
class _Snapshot:
    sums: dict[tuple[str, str, str], tuple[float, float]] = field(default_factory=dict)
    """(partition, account, user or "") -> (joules, grams)"""
    jobs: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    recovered: int = 0
    gpu: dict[tuple[str, str, str], float] = field(default_factory=dict)
    """(partition, account, user or "") -> measured GPU joules"""
    unattributed: dict[str, float] = field(default_factory=dict)
    """partition -> joules no job carries"""
    states: dict[str, int] = field(default_factory=dict)
    """Jobs in each ledger state now (a gauge)."""
    unwritable: dict[str, int] = field(default_factory=dict)
    """UNWRITABLE jobs now, by reason (a gauge)."""


class _Totals:
    """The ledger-backed counters: one consistent snapshot of the ledger per scrape."""

    def __init__(self, cluster: str, per_user: bool, cap: LabelCap | None = None) -> None:
        self.cluster = cluster
        self.per_user = per_user
        self.cap = cap or LabelCap()
        self._high: dict[tuple[str, tuple[str, ...]], float] = {}
        """The highest value each counter sample has shown: a counter never goes down."""
        self.ledger: Ledger | None = None
        self.mem_sums: dict[tuple[str, str, str], tuple[float, float]] = {}
        self.mem_jobs: dict[str, int] = {}
        self.mem_skipped: dict[str, int] = {}
        self.mem_gpu: dict[tuple[str, str, str], float] = {}
        self.mem_unattributed: dict[str, float] = {}
        self._snap: _Snapshot | None = None
        self._at = 0.0
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        self._at = 0.0

    def snapshot(self, max_age: float = SNAPSHOT_TTL) -> _Snapshot:
        if self.ledger is None:
            return self._capped(_Snapshot(dict(self.mem_sums), dict(self.mem_jobs), dict(self.mem_skipped), 0,
                                          dict(self.mem_gpu), dict(self.mem_unattributed), {},
                                          dict(self.mem_skipped)), None)
        with self._lock:
            now = time.monotonic()
            if self._snap is None or now - self._at > max_age:
                try:
                    self._snap = self._read(self.ledger)
                    self._at = now
                except Exception as exc:  # noqa: BLE001 - a scrape must never fail on a busy or full disk
                    log.warning("cannot read the ledger for the metrics (serving the last totals): %s", exc)
                    if self._snap is None:
                        self._snap = _Snapshot()
            return self._snap

    def _read(self, ledger: Ledger) -> _Snapshot:
        """From the ledger's running totals (kept by triggers): O(groups), not a scan of every job."""
        summary = ledger.summary()
        sums: dict[tuple[str, str, str], tuple[float, float]] = {}
        for (p, a, u), t in summary.totals.items():
            key = (p, a, u if self.per_user else "")
            j, g = sums.get(key, (0.0, 0.0))
            sums[key] = (j + t.joules, g + t.grams)
        gpu: dict[tuple[str, str, str], float] = {}
        got_gpu, unattributed = metric_totals(ledger.read, ledger.cluster)
        for (p, a, u), j in got_gpu.items():
            key = (p, a, u if self.per_user else "")
            gpu[key] = gpu.get(key, 0.0) + j
        snap = _Snapshot(sums, summary.outcome_events, summary.skip_events, summary.recovered, gpu, unattributed,
                         summary.states, summary.skipped)
        return self._capped(snap, ledger)

    def _capped(self, snap: _Snapshot, ledger: Ledger | None) -> _Snapshot:
        """The snapshot with label values past the cap summed under OTHER."""
        def first_seen(label: str) -> dict[str, float]:
            if ledger is None:
                return {}
            column = {"partition": "partition", "account": "account", "user": '"user"'}[label]
            rows = ledger.read(f"SELECT {column}, MIN(recorded_at) FROM jobs WHERE cluster=? "  # noqa: S608
                               f"GROUP BY {column}", (ledger.cluster,))
            return {str(v): float(t) for v, t in rows}

        keys = list(snap.sums) + list(snap.gpu)
        for i, label in enumerate(CAPPED_LABELS):
            if label != "user" or self.per_user:
                values = {k[i] for k in keys} | (set(snap.unattributed) if label == "partition" else set())
                self.cap.admit(label, values, first_seen)
        sums: dict[tuple[str, str, str], tuple[float, float]] = {}
        for key, (j, g) in snap.sums.items():
            k = self.cap.key(*key, self.per_user)
            j0, g0 = sums.get(k, (0.0, 0.0))
            sums[k] = (j0 + j, g0 + g)
        gpu: dict[tuple[str, str, str], float] = {}
        for key, j in snap.gpu.items():
            k = self.cap.key(*key, self.per_user)
            gpu[k] = gpu.get(k, 0.0) + j
        idle: dict[str, float] = {}
        for p, j in snap.unattributed.items():
            k = self.cap.map("partition", p)
            idle[k] = idle.get(k, 0.0) + j
        snap.sums, snap.gpu, snap.unattributed = sums, gpu, idle
        return snap

    def _counter(self, family: CounterMetricFamily, labels: list[str], value: float) -> None:
        """Add a counter sample, held at the highest value it has shown."""
        key = (family.name, tuple(labels))
        high = max(self._high.get(key, 0.0), value)
        self._high[key] = high
        family.add_metric(labels, high)

    def describe(self) -> list:
        return []  # collected at scrape time only; nothing to check at registration

    def collect(self) -> Iterator[CounterMetricFamily]:
        snap = self.snapshot()
        labels = ["cluster", "partition", "account"] + (["user"] if self.per_user else [])
        energy = CounterMetricFamily("carbond_energy_joules", "Energy of accounted jobs (PUE included).",
                                     labels=labels)
        grams = CounterMetricFamily("carbond_emissions_grams", "CO2e of accounted jobs, operational plus embodied.",
                                    labels=labels)
        for (p, a, u), (j, g) in sorted(snap.sums.items()):
            values = [self.cluster, p, a] + ([u] if self.per_user else [])
            self._counter(energy, values, j)
            self._counter(grams, values, g)
        jobs = CounterMetricFamily("carbond_jobs", "Jobs that reached each outcome (events: never decreases).",
                                   labels=["outcome"])
        for outcome in OUTCOMES:
            self._counter(jobs, [outcome], snap.jobs.get(outcome, 0))
        states = GaugeMetricFamily("carbond_ledger_jobs", "Jobs in the ledger now, by state.", labels=["state"])
        for state in STATES:
            states.add_metric([state], snap.states.get(state, 0))
        skipped = CounterMetricFamily("carbond_writes_skipped",
                                      "Token writes skipped, by reason (events: never decreases).", labels=["reason"])
        for reason in SKIP_REASONS:
            self._counter(skipped, [reason], snap.skipped.get(reason, 0))
        unwritable = GaugeMetricFamily("carbond_writes_unwritable",
                                       "Counted footprints whose token is not in Slurm now, by reason.",
                                       labels=["reason"])
        for reason in SKIP_REASONS:
            unwritable.add_metric([reason], snap.unwritable.get(reason, 0))
        recovered = CounterMetricFamily("carbond_jobs_recovered",
                                        "Jobs found in slurmdbd without a spool record, then accounted.")
        self._counter(recovered, [], snap.recovered)
        gpu = CounterMetricFamily("carbond_gpu_energy_joules", "Measured GPU energy of accounted jobs (no PUE).",
                                  labels=labels)
        for (p, a, u), j in sorted(snap.gpu.items()):
            self._counter(gpu, [self.cluster, p, a] + ([u] if self.per_user else []), j)
        unattributed = CounterMetricFamily("carbond_unattributed_energy_joules",
                                           "Node energy no job carries (idle, unallocated), per closed half-hour.",
                                           labels=["cluster", "partition"])
        for p, j in sorted(snap.unattributed.items()):
            self._counter(unattributed, [self.cluster, p], j)
        yield from (energy, grams, jobs, states, skipped, unwritable, recovered, gpu, unattributed)
