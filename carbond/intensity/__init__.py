"""Grid carbon intensity per UTC half-hour: providers behind one small interface, and a cached source.

A provider knows one data source (an HTTP API, VictoriaMetrics, a CSV file, a constant) and
answers "readings for the half-hours in [start, end)". `IntensitySource` puts the persistent
cache in front of the remote ones so each half-hour is fetched once, provisional values are
refreshed, and an outage degrades to cached values flagged as stale instead of failing.
Every time in here is UTC epoch seconds; a slot is the start of a half-hour (multiple of 1800).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

import numpy as np

from ..errors import ConfigError, IntensityUnavailable
from ..times import HALF_HOUR, iso
from .cache import Entry, IntensityCache

if TYPE_CHECKING:
    import requests

    from ..config import Config
    from ..victoria import VictoriaClient

__all__ = [
    "HALF_HOUR",
    "PROVISIONAL_SECONDS",
    "REGISTRY",
    "IntensitySource",
    "IntensityTable",
    "Provider",
    "Reading",
    "get_json",
    "make_provider",
    "merge_ranges",
]

log = logging.getLogger("carbond.intensity")

PROVISIONAL_SECONDS = 86400
"""A value fetched less than this long after its half-hour ended may still be revised (UK `actual`)."""

MISSING = "missing"
"""Kind of a slot with no value (the provider had none, or it was never fetched)."""


@dataclass(frozen=True)
class Reading:
    slot: int
    """UTC half-hour start, epoch seconds, a multiple of 1800."""
    g_per_kwh: float
    kind: str
    """"actual", "forecast", "constant", "csv" or "series"."""


class Provider(Protocol):
    name: str
    cache_key: str
    """Identifies the data (provider and region) in the persistent cache, e.g. "electricitymaps:DE"."""
    cacheable: bool
    """False for local sources (csv, constant) that are cheaper to read than the cache."""

    def fetch(self, start: int, end: int) -> list[Reading]:
        """Readings for slots in [start, end) (both slot-aligned); raises IntensityUnavailable naming the URL."""
        ...


@dataclass(frozen=True)
class IntensityTable:
    first_slot: int
    values: np.ndarray
    """float64 gCO2e/kWh per slot from first_slot on; NaN where unknown."""
    kinds: np.ndarray
    """Kind per slot (object array of str); "missing" where unknown."""
    stale: np.ndarray
    """True where a cached value was used because refreshing it failed."""

    def at(self, t: float) -> float:
        """The value for the half-hour containing `t` (NaN outside the table)."""
        i = (slot_floor(t) - self.first_slot) // HALF_HOUR
        return float(self.values[i]) if 0 <= i < self.values.size else math.nan


def slot_floor(t: float) -> int:
    return int(math.floor(t / HALF_HOUR)) * HALF_HOUR


def slot_ceil(t: float) -> int:
    return int(math.ceil(t / HALF_HOUR)) * HALF_HOUR


def merge_ranges(slots: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, disjoint [start, end) ranges covering exactly `slots`, adjacent slots joined.

    One range becomes one fetch, so a month with a hole of two days costs one request for the
    hole, not one per half-hour.
    """
    ranges: list[tuple[int, int]] = []
    for s in sorted(set(slots)):
        if ranges and ranges[-1][1] == s:
            ranges[-1] = (ranges[-1][0], s + HALF_HOUR)
        else:
            ranges.append((s, s + HALF_HOUR))
    return ranges


def chunks(start: int, end: int, span: int) -> list[tuple[int, int]]:
    """[start, end) cut into consecutive pieces of at most `span` seconds (an API's range limit)."""
    return [(a, min(a + span, end)) for a in range(start, end, span)]


def is_provisional(slot: int, fetched_at: float) -> bool:
    """Young values (UK `actual` is revised for a day, Electricity Maps estimates too) get re-fetched."""
    return slot + HALF_HOUR + PROVISIONAL_SECONDS > fetched_at


class IntensitySource:
    """Intensity per half-hour from a provider, through the persistent cache when it is remote.

    `cache_path` is the sqlite file (in state_dir); None keeps the cache in memory only.
    A provisional entry is re-fetched on a later lookup at most every `refresh_seconds`; after a
    failed fetch, entries that have a value are served stale for `retry_seconds` without asking
    again, so a daemon does not wait on a dead API at every batch.
    """

    retry_seconds: float = 60

    def __init__(self, provider: Provider, cache_path: str | None, clock: Callable[[], float] = time.time,
                 refresh_seconds: float = 1800) -> None:
        self.provider = provider
        self.clock = clock
        self.refresh_seconds = refresh_seconds
        self._cache = IntensityCache(cache_path) if provider.cacheable else None
        self._mem: dict[int, Entry] = {}
        self._lock = threading.Lock()
        self._retry_after = -math.inf

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()

    def lookup(self, start: float, end: float) -> IntensityTable:
        """Every slot overlapping [start, end).

        When a fetch fails, slots with a cached value come back flagged stale; if any needed slot
        has no value at all, IntensityUnavailable (naming the URL) is raised so the caller retries.
        """
        first = slot_floor(start)
        stop = max(slot_ceil(end), first) if end > start else first
        if self._cache is None:
            return _table(first, stop, {r.slot: Entry(r.g_per_kwh, r.kind, 0.0) for r in self._fetch(first, stop)})
        with self._lock:
            return self._cached_lookup(first, stop)

    def current(self) -> float | None:
        """The current half-hour's intensity (for the metrics gauge); None when unknown or unreachable."""
        now = self.clock()
        try:
            value = self.lookup(now, now + 1).at(now)
        except IntensityUnavailable as exc:
            log.warning("current intensity unavailable: %s", exc)
            return None
        return None if math.isnan(value) else value

    # -- cached path ----------------------------------------------------------------------------
    def _cached_lookup(self, first: int, stop: int) -> IntensityTable:
        slots = range(first, stop, HALF_HOUR)
        now = self.clock()
        self._load([s for s in slots if s not in self._mem])
        due = self._due(slots, now)
        if due:
            self._load(due)  # another process (daemon or CLI) may have fetched them meanwhile
            due = self._due(due, now)
        stale: set[int] = set()
        if due and now < self._retry_after:
            stale = {s for s in due if self._has_value(s)}
            due = [s for s in due if s not in stale]
        error: IntensityUnavailable | None = None
        for a, b in merge_ranges(due):
            if error is None:
                try:
                    self._store(a, b, self._fetch(a, b), now)
                    continue
                except IntensityUnavailable as exc:
                    error = exc  # the API is down: do not wait for it once per range
                    self._retry_after = now + self.retry_seconds
            unknown = [s for s in range(a, b, HALF_HOUR) if not self._has_value(s)]
            if unknown:
                raise IntensityUnavailable(f"{error} (no cached intensity from {iso(unknown[0])})")
            stale.update(range(a, b, HALF_HOUR))
        return _table(first, stop, self._mem, stale)

    def _has_value(self, slot: int) -> bool:
        e = self._mem.get(slot)
        return e is not None and e.value is not None

    def _due(self, slots: Iterable[int], now: float) -> list[int]:
        out = []
        for s in slots:
            e = self._mem.get(s)
            if e is None or (is_provisional(s, e.fetched_at) and now - e.fetched_at >= self.refresh_seconds):
                out.append(s)
        return out

    def _load(self, slots: Sequence[int]) -> None:
        if slots and self._cache is not None:
            self._mem.update(self._cache.get(self.provider.cache_key, min(slots), max(slots) + HALF_HOUR))

    def _fetch(self, start: int, end: int) -> list[Reading]:
        if end <= start:
            return []
        readings = self.provider.fetch(start, end)
        log.debug("%s: %d readings for %s..%s", self.provider.name, len(readings), iso(start), iso(end))
        return readings

    def _store(self, start: int, end: int, readings: list[Reading], now: float) -> None:
        """Record what came back; a slot the provider had nothing for keeps its old value, or a marker."""
        fresh = {r.slot: Entry(float(r.g_per_kwh), r.kind, now) for r in readings if start <= r.slot < end}
        for s in range(start, end, HALF_HOUR):
            if s not in fresh:
                old = self._mem.get(s)
                fresh[s] = Entry(old.value, old.kind, now) if old and old.value is not None else Entry(None, MISSING, now)
        assert self._cache is not None
        self._cache.put(self.provider.cache_key, fresh)
        self._mem.update(fresh)


def _table(first: int, stop: int, entries: dict[int, Entry], stale: set[int] | None = None) -> IntensityTable:
    stale = stale or set()
    n = (stop - first) // HALF_HOUR
    values = np.full(n, np.nan)
    kinds = np.full(n, MISSING, dtype=object)
    flags = np.zeros(n, dtype=bool)
    for i in range(n):
        e = entries.get(first + i * HALF_HOUR)
        if e is not None and e.value is not None:
            values[i], kinds[i] = e.value, e.kind
            flags[i] = (first + i * HALF_HOUR) in stale
    return IntensityTable(first, values, kinds, flags)


# -- HTTP, shared by the API providers ----------------------------------------------------------
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_USERINFO = re.compile(r"(?<=//)[^/@]+(?=@)")


def get_json(session: requests.Session, url: str, *, params: dict[str, str] | None = None,
             headers: dict[str, str] | None = None, timeout: float = 30.0, secrets: Sequence[str] = ()) -> Any:
    """GET and decode JSON; every failure is IntensityUnavailable naming the URL, secrets blanked."""
    import requests

    full = f"{url}?{urlencode(params)}" if params else url
    secrets = [*secrets, *_USERINFO.findall(full)]  # user:password@ in a configured URL
    try:
        resp = session.get(full, headers=headers, timeout=timeout)
    except requests.Timeout:
        raise IntensityUnavailable(_redact(f"{full}: no answer within {timeout:g} s", secrets)) from None
    except requests.RequestException as exc:
        m = _ERRNO.search(str(exc))
        reason = m.group(1).strip() if m else type(exc).__name__
        raise IntensityUnavailable(_redact(f"cannot reach {full}: {reason}", secrets)) from None
    if resp.status_code != 200:
        body = " ".join(resp.text.split())[:200]
        raise IntensityUnavailable(_redact(f"{full} answered HTTP {resp.status_code}: {body}", secrets))
    try:
        return resp.json()
    except ValueError:
        raise IntensityUnavailable(_redact(f"{full} did not answer JSON", secrets)) from None


def _redact(text: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def bad_shape(url: str, what: str) -> IntensityUnavailable:
    from ..config import mask_url

    return IntensityUnavailable(f"{mask_url(url)}: unexpected response: {what}")


# -- registry -----------------------------------------------------------------------------------
Constructor = Callable[["Config", "requests.Session | None", "VictoriaClient | None", Callable[[], float]], Provider]


def _uk(cfg: Config, session: requests.Session | None, victoria: VictoriaClient | None, clock: Callable[[], float]) -> Provider:
    from .uk import UKCarbonIntensity

    return UKCarbonIntensity.from_config(cfg.intensity, session or _session())


def _electricitymaps(cfg: Config, session: requests.Session | None, victoria: VictoriaClient | None,
                     clock: Callable[[], float]) -> Provider:
    from .electricitymaps import ElectricityMaps

    return ElectricityMaps.from_config(cfg.intensity, session or _session(), clock)


def _prometheus(cfg: Config, session: requests.Session | None, victoria: VictoriaClient | None,
                clock: Callable[[], float]) -> Provider:
    from .promql import PrometheusIntensity

    if victoria is None:
        from ..victoria import VictoriaClient

        victoria = VictoriaClient(cfg.victoriametrics)
    return PrometheusIntensity.from_config(cfg, victoria)


def _csv(cfg: Config, session: requests.Session | None, victoria: VictoriaClient | None, clock: Callable[[], float]) -> Provider:
    from .csvfile import CsvIntensity

    return CsvIntensity.from_config(cfg.intensity)


def _constant(cfg: Config, session: requests.Session | None, victoria: VictoriaClient | None,
              clock: Callable[[], float]) -> Provider:
    from .constant import ConstantIntensity

    return ConstantIntensity.from_config(cfg.intensity)


REGISTRY: dict[str, Constructor] = {
    "uk-carbon-intensity": _uk,
    "electricitymaps": _electricitymaps,
    "prometheus": _prometheus,
    "csv": _csv,
    "constant": _constant,
}
"""Config name (`intensity.provider`) -> constructor. Each module is imported only when chosen."""


def make_provider(cfg: Config, session: requests.Session | None = None, victoria: VictoriaClient | None = None,
                  clock: Callable[[], float] = time.time) -> Provider:
    """The provider `cfg.intensity.provider` names; an unknown name lists the valid ones."""
    name = cfg.intensity.provider
    build = REGISTRY.get(name)
    if build is None:
        raise ConfigError([f"intensity.provider: unknown provider {name!r} (valid: {', '.join(REGISTRY)})"], cfg.source)
    return build(cfg, session, victoria, clock)


def _session() -> requests.Session:
    """Only the HTTP API providers load requests (~150 ms of start-up that CSV users never need)."""
    import requests

    return requests.Session()
