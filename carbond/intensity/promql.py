"""The `prometheus` provider: a site's own intensity series, read from VictoriaMetrics.

The value of a half-hour [s, s+1800) is the mean of the query over it, computed by
VictoriaMetrics at the slot's end, one request for many half-hours:
- a plain selector `name{...}`: `avg_over_time((Q)[1800s] offset 1ms)`, the mean of the raw
  samples, so a half-hour without samples stays unknown;
- anything else (`avg(...)`, arithmetic): `avg_over_time((Q)[1800s:60s] offset 1ms)`, a subquery
  sampled every minute, because a bare `[1800s]` on an expression yields only its last value.
  VictoriaMetrics' staleness rules then carry the last value over gaps between samples.
The 1 ms offset moves the window from (s, s+1800] to [s, s+1800), so a sample stamped at a
half-hour's start (as grid APIs publish them) counts for that half-hour.
Measured against victoria-metrics 1.79 (tests/test_intensity_prometheus.py).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import IntensityUnavailable, VictoriaError
from . import HALF_HOUR, MAX_G_PER_KWH, Reading, check_readings, chunks

if TYPE_CHECKING:
    from ..config import Config
    from ..victoria import VictoriaClient

SUBSTEP = 60
MAX_POINTS = 10_000
"""Half-hours per query_range call, well under VictoriaMetrics' 30,000 points per series."""


_SELECTOR = re.compile(r"\s*(?:[a-zA-Z_:][a-zA-Z0-9_:]*\s*)?(?:\{[^{}]*\})?\s*")


def window_query(query: str) -> str:
    """The rollup whose value at a slot's end is the mean over that slot."""
    window = f"{HALF_HOUR}s" if _SELECTOR.fullmatch(query) and query.strip() else f"{HALF_HOUR}s:{SUBSTEP}s"
    return f"avg_over_time(({query})[{window}] offset 1ms)"


@dataclass
class PrometheusIntensity:
    victoria: VictoriaClient = field(repr=False)
    query: str
    source: str = ""
    """Where the series lives (the VictoriaMetrics URL), part of the cache key."""
    max_value: float = MAX_G_PER_KWH
    name: str = "prometheus"
    cacheable: bool = True

    @classmethod
    def from_config(cls, cfg: Config, victoria: VictoriaClient) -> PrometheusIntensity:
        if not cfg.intensity.query:
            from ..errors import ConfigError

            raise ConfigError(["intensity.query: required by provider prometheus"])
        vm = cfg.victoriametrics
        return cls(victoria, cfg.intensity.query, f"{vm.url}|{vm.tenant or ''}", cfg.intensity.max_g_per_kwh)

    @property
    def cache_key(self) -> str:
        digest = hashlib.sha256(f"{self.source}\n{self.query}".encode()).hexdigest()[:16]
        return f"{self.name}:{digest}"

    def fetch(self, start: int, end: int) -> list[Reading]:
        out: list[Reading] = []
        for a, b in chunks(start, end, MAX_POINTS * HALF_HOUR):
            try:
                series = self.victoria.query_range(window_query(self.query), a + HALF_HOUR, b, HALF_HOUR)
            except VictoriaError as exc:
                raise IntensityUnavailable(f"intensity query {self.query!r}: {exc}") from None
            out += slot_means(series, a, b)
        check_readings(self.name, out, self.max_value)
        return out


def slot_means(series: list[tuple[dict[str, str], np.ndarray, np.ndarray]], start: int, end: int) -> list[Reading]:
    """One reading per slot: the point at the slot's end, averaged over series when several answer.

    Several series happen when a label changes over time (a restarted exporter); averaging
    them keeps one value per half-hour instead of failing.
    """
    if not series:
        return []
    t = np.concatenate([np.asarray(s[1], dtype=np.float64) for s in series])
    v = np.concatenate([np.asarray(s[2], dtype=np.float64) for s in series])
    slot = np.rint(t).astype(np.int64) - HALF_HOUR
    keep = np.isfinite(v) & (slot >= start) & (slot < end) & (slot % HALF_HOUR == 0)
    slots, inverse = np.unique(slot[keep], return_inverse=True)
    means = np.bincount(inverse, weights=v[keep]) / np.bincount(inverse)
    return [Reading(int(s), float(m), "series") for s, m in zip(slots, means, strict=True)]
