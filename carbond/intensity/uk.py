"""Great Britain's Carbon Intensity API (api.carbonintensity.org.uk), national or regional.

National: `/intensity/{from}/{to}` lists half-hours with `forecast` and `actual` (null until
published, then revised for about a day). Regional: `/regional/intensity/{from}/{to}/regionid/{id}`
or `.../postcode/{outward}` answer `data` as one object holding the region and its half-hours,
forecast only. A request covers at most 14 days; times are written "YYYY-MM-DDTHH:MMZ".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..times import parse_time
from . import HALF_HOUR, MAX_G_PER_KWH, MAX_RESPONSE_BYTES, Reading, bad_shape, check_readings, chunks, get_json, number

if TYPE_CHECKING:
    import requests

    from ..config import IntensityConfig

BASE_URL = "https://api.carbonintensity.org.uk"
MAX_SPAN = 14 * 86400
SHIFT = 60
"""The API returns every half-hour *touching* a bound (asking from 12:00Z also yields 11:30-12:00),
so both bounds move one minute in; the extra half-hour at the end is filtered out."""


@dataclass
class UKCarbonIntensity:
    session: requests.Session = field(repr=False)
    base_url: str = BASE_URL
    region: str | None = None
    """None for national; a region id "1".."17"; or a postcode outward code such as "RG10"."""
    timeout: float = 30.0
    max_bytes: int = MAX_RESPONSE_BYTES
    max_value: float = MAX_G_PER_KWH
    name: str = "uk-carbon-intensity"
    cacheable: bool = True
    requests_made: int = 0

    @classmethod
    def from_config(cls, ic: IntensityConfig, session: requests.Session) -> UKCarbonIntensity:
        region = ic.region.strip().upper() if ic.region else None
        return cls(session, (ic.url or BASE_URL).rstrip("/"), region, ic.timeout, ic.max_response_bytes,
                   ic.max_g_per_kwh)

    @property
    def cache_key(self) -> str:
        if self.region is None:
            return f"{self.name}:national"
        kind = "region" if self.region.isdigit() else "postcode"
        return f"{self.name}:{kind}={self.region}"

    def fetch(self, start: int, end: int) -> list[Reading]:
        out: list[Reading] = []
        for a, b in chunks(start, end, MAX_SPAN):
            url = self._url(a, b)
            self.requests_made += 1
            body = get_json(self.session, url, timeout=self.timeout, max_bytes=self.max_bytes)
            out += [r for r in self._parse(url, body) if a <= r.slot < b]
        check_readings(self.name, out, self.max_value)
        return out

    def _url(self, start: int, end: int) -> str:
        span = f"{_fmt(start + SHIFT)}/{_fmt(end + SHIFT)}"
        if self.region is None:
            return f"{self.base_url}/intensity/{span}"
        kind = "regionid" if self.region.isdigit() else "postcode"
        return f"{self.base_url}/regional/intensity/{span}/{kind}/{self.region}"

    def _parse(self, url: str, body: Any) -> list[Reading]:
        data = body.get("data") if isinstance(body, dict) else None
        if self.region is not None:
            # documented as one object; the current-period endpoints wrap it in a list
            region = data[0] if isinstance(data, list) and len(data) == 1 else data
            data = region.get("data") if isinstance(region, dict) else None
        if not isinstance(data, list):
            raise bad_shape(url, "no list of half-hours under 'data'")
        return [r for item in data if (r := _reading(url, item)) is not None]


def _reading(url: str, item: Any) -> Reading | None:
    try:
        slot = int(parse_time(item["from"])[0])
        intensity = item["intensity"]
        actual, forecast = intensity.get("actual"), intensity.get("forecast")
        if actual is not None:
            return _on_half_hour(url, item, Reading(slot, number(actual, "actual"), "actual"))
        if forecast is not None:
            return _on_half_hour(url, item, Reading(slot, number(forecast, "forecast"), "forecast"))
    except Exception as exc:  # noqa: BLE001 - any malformed entry is the same problem
        raise bad_shape(url, f"half-hour entry {str(item)[:120]} ({type(exc).__name__}: {str(exc)[:80]})") from None
    return None


def _on_half_hour(url: str, item: dict, r: Reading) -> Reading:
    if r.slot % HALF_HOUR:
        raise ValueError(f"'from' {str(item['from'])[:40]} is not on a half-hour")
    return r


def _fmt(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(t))
