"""Carbon Intensity API (GB) provider and the cache in front of it, against a local HTTP server."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest

from carbond.config import IntensityConfig
from carbond.errors import IntensityUnavailable
from carbond.intensity import IntensitySource
from carbond.intensity.uk import UKCarbonIntensity
from carbond.times import parse_time

DATA = Path(__file__).parent / "data" / "intensity"
DAY = 86400


def ts(text: str) -> int:
    return int(parse_time(text)[0])


def fmt(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(t))


def value_of(slot: int) -> float:
    return float(100 + (slot // 1800) % 97)


class FakeUK:
    """The API's behaviour as documented and observed: half-hours touching [from, to] are returned,
    ranges over 14 days are refused, `actual` is null from `published_until` on, regional = forecast."""

    def __init__(self, api, published_until: float = math.inf) -> None:
        self.published_until = published_until
        api.route(r"/intensity/([^/]+)/([^/]+)", self.national)
        api.route(r"/regional/intensity/([^/]+)/([^/]+)/(regionid|postcode)/(\w+)", self.regional)

    def _slots(self, path: str):
        m = re.search(r"intensity/([^/]+)/([^/]+)", path)
        lo, hi = ts(m.group(1)), ts(m.group(2))
        if hi - lo > 14 * DAY:
            return None
        return range(-(-(lo - 1800) // 1800) * 1800, hi + 1, 1800)  # every half-hour touching [lo, hi]

    def national(self, req):
        slots = self._slots(req.path)
        if slots is None:
            return 400, {"error": {"code": "400 Bad Request", "message": "Date range must not exceed 14 days"}}
        return 200, {"data": [{
            "from": fmt(s), "to": fmt(s + 1800),
            "intensity": {"forecast": value_of(s) + 7, "actual": value_of(s) if s < self.published_until else None,
                          "index": "moderate"},
        } for s in slots]}

    def regional(self, req):
        slots = self._slots(req.path)
        if slots is None:
            return 400, {"error": {"code": "400 Bad Request", "message": "Date range must not exceed 14 days"}}
        kind, key = req.path.rsplit("/", 2)[-2:]
        region = {"regionid": int(key) if kind == "regionid" else 12, "dnoregion": "X", "shortname": "Y",
                  "data": [{"from": fmt(s), "to": fmt(s + 1800),
                            "intensity": {"forecast": value_of(s), "index": "low"}, "generationmix": []}
                           for s in slots]}
        return 200, {"data": region}


def uk(api, region: str | None = None) -> UKCarbonIntensity:
    import requests

    return UKCarbonIntensity.from_config(IntensityConfig(url=api.url, region=region, timeout=5), requests.Session())


# -- documented payloads ------------------------------------------------------------------------
def test_national_documented_shape_actual_then_forecast(http_api):
    http_api.route(r"/intensity/.*", (200, json.loads((DATA / "uk_national.json").read_text())))
    readings = uk(http_api).fetch(ts("2018-01-20T12:00Z"), ts("2018-01-20T14:00Z"))
    assert [(r.slot, r.g_per_kwh, r.kind) for r in readings] == [
        (ts("2018-01-20T12:00Z"), 263, "actual"),
        (ts("2018-01-20T12:30Z"), 259, "actual"),
        (ts("2018-01-20T13:00Z"), 255, "forecast"),  # actual null: not yet published
        (ts("2018-01-20T13:30Z"), 250, "forecast"),
    ]
    # bounds moved one minute in, so the half-hour ending at `from` is not asked for
    assert [r.path for r in http_api.requests] == ["/intensity/2018-01-20T12:01Z/2018-01-20T14:01Z"]


def test_regional_by_region_id_is_an_object_and_forecast_only(http_api):
    http_api.route(r"/regional/intensity/.*/regionid/13", (200, json.loads((DATA / "uk_regional_regionid.json").read_text())))
    p = uk(http_api, "13")
    readings = p.fetch(ts("2018-05-15T12:00Z"), ts("2018-05-15T13:00Z"))
    assert [(r.g_per_kwh, r.kind) for r in readings] == [(195, "forecast"), (190, "forecast")]
    assert http_api.requests[0].path == "/regional/intensity/2018-05-15T12:01Z/2018-05-15T13:01Z/regionid/13"
    assert p.cache_key == "uk-carbon-intensity:region=13"


def test_regional_by_postcode(http_api):
    http_api.route(r"/regional/intensity/.*/postcode/RG10", (200, json.loads((DATA / "uk_regional_postcode.json").read_text())))
    p = uk(http_api, "rg10")
    readings = p.fetch(ts("2018-05-15T12:00Z"), ts("2018-05-15T13:00Z"))
    assert [r.g_per_kwh for r in readings] == [152, 181]
    assert http_api.requests[0].path.endswith("/postcode/RG10")
    assert p.cache_key == "uk-carbon-intensity:postcode=RG10"


def test_regional_wrapped_in_a_list_is_read_too(http_api):
    body = json.loads((DATA / "uk_regional_postcode.json").read_text())
    http_api.route(r"/regional/.*", (200, {"data": [body["data"]]}))
    assert len(uk(http_api, "RG10").fetch(ts("2018-05-15T12:00Z"), ts("2018-05-15T13:00Z"))) == 2


def test_thirty_days_take_three_requests_of_at_most_fourteen_days(http_api):
    FakeUK(http_api)
    start = ts("2024-01-01T00:00Z")
    readings = uk(http_api).fetch(start, start + 30 * DAY)
    assert [r.slot for r in readings] == list(range(start, start + 30 * DAY, 1800))
    assert all(r.g_per_kwh == value_of(r.slot) for r in readings)
    assert http_api.count() == 3
    spans = [ts(m[1]) - ts(m[0]) for m in (re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ", r.path) for r in http_api.requests)]
    assert spans == [14 * DAY, 14 * DAY, 2 * DAY]


def test_http_error_names_url_and_message(http_api):
    http_api.route(r"/intensity/.*", (400, {"error": {"code": "400 Bad Request", "message": "Invalid date"}}))
    with pytest.raises(IntensityUnavailable) as exc:
        uk(http_api).fetch(ts("2024-01-01T00:00Z"), ts("2024-01-01T01:00Z"))
    assert f"{http_api.url}/intensity/2024-01-01T00:01Z/2024-01-01T01:01Z answered HTTP 400" in str(exc.value)
    assert "Invalid date" in str(exc.value)


@pytest.mark.parametrize("body", [{"nodata": []}, {"data": [{"from": "2024-01-01T00:00Z"}]},
                                  {"data": [{"from": "2024-01-01T00:10Z", "intensity": {"forecast": 1}}]}, "not json"])
def test_unexpected_shapes_are_clear_errors(http_api, body):
    http_api.route(r"/intensity/.*", (200, body))
    with pytest.raises(IntensityUnavailable, match=re.escape(http_api.url)):
        uk(http_api).fetch(ts("2024-01-01T00:00Z"), ts("2024-01-01T01:00Z"))


# -- through the cache --------------------------------------------------------------------------
class Clock:
    def __init__(self, t: float) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t


def test_month_cold_then_warm_even_from_another_process_view(http_api, tmp_path):
    FakeUK(http_api)
    db = str(tmp_path / "intensity.sqlite")
    clock = Clock(ts("2024-03-01T00:00Z"))
    start, end = ts("2024-01-01T00:00Z"), ts("2024-01-31T00:00Z")
    table = IntensitySource(uk(http_api), db, clock).lookup(start, end)
    assert http_api.count() == 3
    assert table.values.size == 1440 and not np.isnan(table.values).any() and not table.stale.any()
    assert set(table.kinds) == {"actual"}
    again = IntensitySource(uk(http_api), db, clock).lookup(start + 3600, end - 3600)  # e.g. the CLI
    assert http_api.count() == 3
    assert np.array_equal(again.values, table.values[2:-2])


def test_only_missing_ranges_are_fetched(http_api, tmp_path):
    FakeUK(http_api)
    src = IntensitySource(uk(http_api), str(tmp_path / "c.sqlite"), Clock(ts("2024-03-01T00:00Z")))
    src.lookup(ts("2024-01-10T00:00Z"), ts("2024-01-11T00:00Z"))
    http_api.reset()
    src.lookup(ts("2024-01-09T00:00Z"), ts("2024-01-12T00:00Z"))
    assert [r.path for r in http_api.requests] == [
        "/intensity/2024-01-09T00:01Z/2024-01-10T00:01Z",
        "/intensity/2024-01-11T00:01Z/2024-01-12T00:01Z",
    ]


def test_forecast_replaced_by_actual_and_refresh_interval_respected(http_api, tmp_path):
    now = ts("2024-05-01T12:10Z")
    fake = FakeUK(http_api, published_until=ts("2024-05-01T11:00Z"))
    clock = Clock(now)
    src = IntensitySource(uk(http_api), str(tmp_path / "c.sqlite"), clock, refresh_seconds=1800)
    start, end = ts("2024-05-01T10:00Z"), ts("2024-05-01T13:00Z")
    t = src.lookup(start, end)
    assert list(t.kinds) == ["actual", "actual", "forecast", "forecast", "forecast", "forecast"]
    assert t.values[2] == value_of(start + 2 * 1800) + 7
    assert src.current() == value_of(ts("2024-05-01T12:00Z")) + 7
    assert http_api.count() == 1

    fake.published_until = ts("2024-05-01T12:30Z")
    clock.t = now + 1799
    src.lookup(start, end)
    assert http_api.count() == 1  # younger than refresh_seconds: served from the cache

    clock.t = now + 1800
    t = src.lookup(start, end)
    assert http_api.count() == 2
    assert list(t.kinds) == ["actual"] * 5 + ["forecast"]
    assert t.values[3] == value_of(start + 3 * 1800)

    fake.published_until = math.inf
    clock.t = now + 2 * DAY  # fetched more than a day after the half-hours ended: final
    assert set(src.lookup(start, end).kinds) == {"actual"}
    clock.t = now + 5 * DAY
    src.lookup(start, end)
    fresh = IntensitySource(uk(http_api), str(tmp_path / "c.sqlite"), clock)
    fresh.lookup(start, end)
    assert http_api.count() == 3


def test_outage_with_cache_returns_stale_values(http_api, tmp_path):
    now = ts("2024-05-01T12:10Z")
    FakeUK(http_api, published_until=ts("2024-05-01T11:00Z"))
    clock = Clock(now)
    src = IntensitySource(uk(http_api), str(tmp_path / "c.sqlite"), clock)
    old = src.lookup(ts("2024-04-20T00:00Z"), ts("2024-04-20T01:00Z"))  # final entries
    young = src.lookup(ts("2024-05-01T11:00Z"), ts("2024-05-01T14:00Z"))
    http_api.stop()
    clock.t = now + 3600
    t = src.lookup(ts("2024-04-20T00:00Z"), ts("2024-04-20T01:00Z"))
    assert np.array_equal(t.values, old.values) and not t.stale.any()  # nothing to refresh
    t = src.lookup(ts("2024-05-01T11:00Z"), ts("2024-05-01T14:00Z"))
    assert np.array_equal(t.values, young.values)
    assert t.stale.all()
    assert list(t.kinds) == ["forecast"] * 6
    assert src.current() == young.values[4]  # 13:10 lies in the 13:00 half-hour


def test_outage_without_cache_raises_naming_the_url(http_api, tmp_path):
    FakeUK(http_api)
    url = http_api.url
    src = IntensitySource(uk(http_api), str(tmp_path / "c.sqlite"), Clock(ts("2024-05-01T12:10Z")))
    src.lookup(ts("2024-04-01T00:00Z"), ts("2024-04-01T01:00Z"))
    http_api.stop()
    with pytest.raises(IntensityUnavailable) as exc:
        src.lookup(ts("2024-04-01T00:00Z"), ts("2024-04-01T02:00Z"))  # half cached, half not
    assert f"cannot reach {url}/intensity/2024-04-01T01:01Z/2024-04-01T02:01Z" in str(exc.value)
    assert "2024-04-01T01:00:00Z" in str(exc.value)
    assert src.current() is None


def test_utc_days_have_48_half_hours_across_dst(http_api, tmp_path):
    FakeUK(http_api)
    src = IntensitySource(uk(http_api), None, Clock(ts("2025-01-01T00:00Z")))
    for day in ("2024-03-31", "2024-10-27"):  # UK clocks change on these days, UTC does not
        t = src.lookup(ts(f"{day}T00:00Z"), ts(f"{day}T00:00Z") + DAY)
        assert t.values.size == 48 and not np.isnan(t.values).any()
        assert t.first_slot == ts(f"{day}T00:00Z")
    assert all(re.fullmatch(r"/intensity/\d{4}-\d\d-\d\dT\d\d:01Z/\d{4}-\d\d-\d\dT\d\d:01Z", r.path)
               for r in http_api.requests)
