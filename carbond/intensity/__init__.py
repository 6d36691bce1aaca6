"""Grid carbon intensity per UTC half-hour: providers behind one small interface, and a cached source.

A provider knows one data source (an HTTP API, VictoriaMetrics, a CSV file, a constant) and
answers "readings for the half-hours in [start, end)". `IntensitySource` puts the persistent
cache in front of the remote ones so each half-hour is fetched once, provisional values are
refreshed, and an outage degrades to cached values flagged as stale instead of failing.
Every time in here is UTC epoch seconds; a slot is the start of a half-hour (multiple of 1800).

No answer is trusted: an API answer is read with a size limit and a total deadline, and a batch
holding any value that is not a number within 0..max_g_per_kwh is refused whole, as an outage of
the provider (IntensityUnavailable: retried, served from the cache meanwhile), never a value.
"""

from __future__ import annotations

import functools
import json
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
from ..httpconn import Deadline
from ..times import iso
from ..units import HALF_HOUR
from .cache import CacheError, Entry, IntensityCache

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

MAX_G_PER_KWH = 2000.0
"""Default upper bound of a plausible intensity (intensity.max_g_per_kwh); the dirtiest grids are ~1,100."""
MAX_RESPONSE_BYTES = 16 << 20
"""Default size limit of an API answer (intensity.max_response_bytes); real ones are < 100 kB."""

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
                 refresh_seconds: float = 1800, max_value: float = MAX_G_PER_KWH) -> None:
        self.provider = provider
        self.clock = clock
        self.refresh_seconds = refresh_seconds
        self.max_value = max_value
        self._cache = _open_cache(cache_path) if provider.cacheable else None
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
        if not slots or self._cache is None:
            return
        try:
            got = self._cache.get(self.provider.cache_key, min(slots), max(slots) + HALF_HOUR)
        except CacheError as exc:
            log.warning("%s; fetching without it", exc)
            return
        # a value cached before the bounds existed (or by hand) is fetched again, never used
        self._mem.update({s: e for s, e in got.items() if e.value is None or _plausible(e.value, self.max_value)})

    def _fetch(self, start: int, end: int) -> list[Reading]:
        if end <= start:
            return []
        readings = self.provider.fetch(start, end)
        check_readings(self.provider.name, readings, self.max_value)
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
        self._mem.update(fresh)
        try:
            self._cache.put(self.provider.cache_key, fresh)
        except CacheError as exc:
            log.warning("%s; the values are kept in memory only", exc)


def _open_cache(path: str | None) -> IntensityCache:
    """The persistent cache; one that cannot be opened (corrupt, unwritable) is bypassed with a warning."""
    try:
        return IntensityCache(path)
    except CacheError as exc:
        if path is None:
            raise
        log.warning("%s; intensity cached in memory only", exc)
        return IntensityCache(None)


def _plausible(value: object, max_value: float) -> bool:
    if type(value) not in (int, float) and not isinstance(value, (np.floating, np.integer)):
        return False
    try:
        v = float(value)  # type: ignore[arg-type]
    except OverflowError:
        return False
    return math.isfinite(v) and 0 <= v <= max_value


def check_readings(provider: str, readings: object, max_value: float = MAX_G_PER_KWH) -> None:
    """Raise IntensityUnavailable (an outage of the provider) unless every reading is plausible:
    a half-hour slot and a finite number in 0..max_value. One bad value refuses the whole batch,
    since an answer that holds one is not to be trusted for the others."""
    if not isinstance(readings, list):
        raise IntensityUnavailable(f"intensity provider {provider}: no list of readings")
    for r in readings:
        if not isinstance(r, Reading) or type(r.slot) is not int or r.slot % HALF_HOUR:
            raise IntensityUnavailable(f"intensity provider {provider}: malformed reading {str(r)[:120]}")
        if not _plausible(r.g_per_kwh, max_value):
            raise IntensityUnavailable(
                f"intensity provider {provider}: implausible intensity {str(r.g_per_kwh)[:40]} g/kWh for "
                f"{iso(r.slot) if 0 <= r.slot < 253402300800 else r.slot} (allowed 0..{max_value:g}, "
                "intensity.max_g_per_kwh): the answer is refused")


def number(value: object, what: str) -> float:
    """A JSON number as float: not a bool, a string or a list; ValueError otherwise (huge ints included)."""
    if type(value) not in (int, float):
        raise ValueError(f"{what} {str(value)[:40]!r} is not a number")
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        raise ValueError(f"{what} {str(value)[:40]} is out of range") from None


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
             headers: dict[str, str] | None = None, timeout: float = 30.0, secrets: Sequence[str] = (),
             max_bytes: int = MAX_RESPONSE_BYTES) -> Any:
    """GET and decode JSON; every failure is IntensityUnavailable naming the URL, secrets blanked.

    `timeout` bounds the whole request (connecting, waiting, reading every byte), `max_bytes` the
    answer. A request that carries a secret header (`secrets`) follows no redirect: requests
    would send a custom header such as `auth-token` on to another host.
    """
    import requests

    full = f"{url}?{urlencode(params)}" if params else url
    secrets = [*secrets, *_USERINFO.findall(full)]  # user:password@ in a configured URL
    _watch_connections(session)
    with Deadline(timeout) as deadline:
        _current.deadline = deadline
        try:
            status, body, location = _get(session, full, headers, timeout, max_bytes, follow=not secrets)
        except requests.RequestException as exc:
            if deadline.expired:
                raise IntensityUnavailable(_redact(f"{full}: no complete answer within {timeout:g} s", secrets)) from None
            if isinstance(exc, requests.Timeout):
                raise IntensityUnavailable(_redact(f"{full}: no answer within {timeout:g} s", secrets)) from None
            m = _ERRNO.search(str(exc))
            reason = m.group(1).strip() if m else type(exc).__name__
            raise IntensityUnavailable(_redact(f"cannot reach {full}: {reason}", secrets)) from None
        except ValueError as exc:  # too large
            raise IntensityUnavailable(_redact(f"{full}: {exc} (intensity.max_response_bytes)", secrets)) from None
        finally:
            _current.deadline = None
        if deadline.expired:
            raise IntensityUnavailable(_redact(f"{full}: no complete answer within {timeout:g} s", secrets))
    if status != 200:
        text = " ".join(body[:600].decode("utf-8", "replace").split())[:200]
        moved = f" (redirect to {location} not followed: the token goes only to the configured URL)" if location else ""
        raise IntensityUnavailable(_redact(f"{full} answered HTTP {status}{moved}: {text}", secrets))
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise IntensityUnavailable(_redact(f"{full} did not answer JSON", secrets)) from None


def _get(session: requests.Session, url: str, headers: dict[str, str] | None, timeout: float, max_bytes: int,
         follow: bool) -> tuple[int, bytes, str]:
    """(status, body, Location of an unfollowed redirect); the body streamed under `max_bytes`."""
    from ..httpconn import read_capped

    with session.get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=follow) as resp:
        chunks = resp.iter_content(1 << 16)
        body = read_capped(lambda _n: next(chunks, b""), max_bytes, "answer")
        location = resp.headers.get("Location", "") if resp.is_redirect else ""
        return resp.status_code, body, location


_current = threading.local()
"""The Deadline of the request this thread is making, for the connection pools to watch."""


def _watch_connections(session: requests.Session) -> None:
    """Mount adapters whose pools hand every connection they give out to the current Deadline."""
    for prefix in ("http://", "https://"):
        if not isinstance(session.get_adapter(prefix + "x"), _adapter_class()):
            session.mount(prefix, _adapter_class()())


@functools.cache
def _adapter_class() -> type:
    from requests.adapters import HTTPAdapter
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def watched(base: type) -> type:
        class Pool(base):  # type: ignore[misc, valid-type]
            def _get_conn(self, timeout=None):  # noqa: ANN001, ANN202 - urllib3's signature
                conn = super()._get_conn(timeout)
                deadline = getattr(_current, "deadline", None)
                if deadline is not None:
                    deadline.watch(conn)
                return conn

        return Pool

    pools = {"http": watched(HTTPConnectionPool), "https": watched(HTTPSConnectionPool)}

    class DeadlineAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy, **kwargs):  # noqa: ANN001, ANN003, ANN202
            manager = super().proxy_manager_for(proxy, **kwargs)
            manager.pool_classes_by_scheme = pools
            return manager

    return DeadlineAdapter


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
"""Config name (`intensity.provider`) -> constructor. Each module is imported only when chosen.
Its names are config.PROVIDERS, the list check-config validates against (tests/test_intensity_local.py
checks that they are the same)."""


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
