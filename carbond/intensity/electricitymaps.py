"""Electricity Maps API v3: hourly carbon intensity of a zone, each hour serving its two half-hours.

`/v3/carbon-intensity/past-range?zone=..&start=..&end=..` answers {"zone", "data": [{"datetime",
"carbonIntensity", "isEstimated", ...}]} for at most 10 days (240 hourly points) per request;
`/v3/carbon-intensity/history?zone=..` (also on free tokens) answers the last 24 hours and is
used when the whole range lies inside them. The token travels in the `auth-token` header and is
blanked from every error message.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import read_secret
from ..errors import ConfigError
from ..times import iso, parse_time
from . import HALF_HOUR, MAX_G_PER_KWH, MAX_RESPONSE_BYTES, Reading, bad_shape, check_readings, chunks, get_json, number

if TYPE_CHECKING:
    import requests

    from ..config import IntensityConfig

BASE_URL = "https://api.electricitymaps.com"
TOKEN_ENV = "CARBOND_ELECTRICITYMAPS_TOKEN"
HOUR = 3600
MAX_SPAN = 240 * HOUR
HISTORY_HOURS = 24


@dataclass
class ElectricityMaps:
    session: requests.Session = field(repr=False)
    zone: str
    token: str = field(repr=False)
    base_url: str = BASE_URL
    timeout: float = 30.0
    max_bytes: int = MAX_RESPONSE_BYTES
    max_value: float = MAX_G_PER_KWH
    clock: Callable[[], float] = field(default=time.time, repr=False)
    name: str = "electricitymaps"
    cacheable: bool = True
    requests_made: int = 0

    @classmethod
    def from_config(cls, ic: IntensityConfig, session: requests.Session,
                    clock: Callable[[], float] = time.time) -> ElectricityMaps:
        try:
            token = read_secret(ic.token_file, TOKEN_ENV)
        except OSError as exc:
            raise ConfigError([f"intensity.token_file: cannot read {ic.token_file}: {exc.strerror or exc}"]) from None
        if not token:
            raise ConfigError([f"intensity.token_file: required (or set ${TOKEN_ENV})"])
        if not ic.zone:
            raise ConfigError(["intensity.zone: required by provider electricitymaps"])
        return cls(session, ic.zone, token, (ic.url or BASE_URL).rstrip("/"), ic.timeout,
                   ic.max_response_bytes, ic.max_g_per_kwh, clock)

    @property
    def cache_key(self) -> str:
        return f"{self.name}:{self.zone}"

    def fetch(self, start: int, end: int) -> list[Reading]:
        h0 = start // HOUR * HOUR
        h1 = math.ceil(end / HOUR) * HOUR
        if h0 >= (int(self.clock()) // HOUR - HISTORY_HOURS + 1) * HOUR:
            points = self._get("history", {"zone": self.zone})
        else:
            points = []
            for a, b in chunks(h0, h1, MAX_SPAN):  # `end` may be inclusive: keep [a, b) so chunks never overlap
                got = self._get("past-range", {"zone": self.zone, "start": iso(a), "end": iso(b)})
                points += [(h, v) for h, v in got if a <= h < b]
        out = []
        for hour, value in points:
            out += [Reading(s, value, "actual") for s in (hour, hour + HALF_HOUR) if start <= s < end]
        check_readings(self.name, out, self.max_value)
        return out

    def _get(self, endpoint: str, params: dict[str, str]) -> list[tuple[int, float]]:
        url = f"{self.base_url}/v3/carbon-intensity/{endpoint}"
        self.requests_made += 1
        body = get_json(self.session, url, params=params, headers={"auth-token": self.token},
                        timeout=self.timeout, secrets=[self.token], max_bytes=self.max_bytes)
        items = (body.get("data") if "data" in body else body.get("history")) if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise bad_shape(url, "no list under 'data' or 'history'")
        return [p for item in items if (p := _point(url, item)) is not None]


def _point(url: str, item: Any) -> tuple[int, float] | None:
    """(hour start, gCO2e/kWh); None for an hour without a value."""
    try:
        t = int(parse_time(item["datetime"])[0])
        value = item.get("carbonIntensity")
        return None if value is None else (t // HOUR * HOUR, number(value, "carbonIntensity"))
    except Exception as exc:  # noqa: BLE001 - any malformed entry is the same problem
        raise bad_shape(url, f"entry {str(item)[:120]} ({type(exc).__name__}: {str(exc)[:80]})") from None
