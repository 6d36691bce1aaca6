"""Electricity Maps v3 provider against a local HTTP server serving the documented shapes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests

from carbond.config import IntensityConfig
from carbond.errors import ConfigError, IntensityUnavailable
from carbond.intensity import IntensitySource
from carbond.intensity.electricitymaps import TOKEN_ENV, ElectricityMaps
from carbond.times import iso, parse_time

DATA = Path(__file__).parent / "data" / "intensity"
TOKEN = "s3cr3t-T0KEN-value"
DAY = 86400


def ts(text: str) -> int:
    return int(parse_time(text)[0])


class Clock:
    def __init__(self, t: float) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t


def em(api, tmp_path, now: str = "2030-01-01T00:00Z") -> ElectricityMaps:
    token_file = tmp_path / "em.token"
    token_file.write_text(TOKEN + "\n")
    ic = IntensityConfig(provider="electricitymaps", url=api.url, zone="DE", token_file=str(token_file), timeout=5)
    return ElectricityMaps.from_config(ic, requests.Session(), Clock(ts(now)))


def hourly(req):
    """past-range: one point per hour in [start, end], refusing more than 10 days."""
    lo, hi = ts(req.query["start"]), ts(req.query["end"])
    if hi - lo > 240 * 3600:
        return 400, {"error": "The time range is limited to 10 days"}
    return 200, {"zone": req.query["zone"], "data": [
        {"zone": req.query["zone"], "carbonIntensity": 300 + (h // 3600) % 50, "datetime": iso(h).replace("Z", ".000Z"),
         "updatedAt": "2024-01-01T00:00:00.000Z", "isEstimated": False, "estimationMethod": None}
        for h in range(lo, hi + 1, 3600)]}


def test_past_range_documented_shape_each_hour_serves_two_half_hours(http_api, tmp_path):
    http_api.route(r"/v3/carbon-intensity/past-range", (200, json.loads((DATA / "em_past_range.json").read_text())))
    readings = em(http_api, tmp_path).fetch(ts("2019-05-21T21:00Z"), ts("2019-05-22T01:00Z"))
    assert [(iso(r.slot), r.g_per_kwh, r.kind) for r in readings] == [
        ("2019-05-21T21:00:00Z", 322, "actual"), ("2019-05-21T21:30:00Z", 322, "actual"),
        ("2019-05-21T22:00:00Z", 310, "actual"), ("2019-05-21T22:30:00Z", 310, "actual"),
        ("2019-05-21T23:00:00Z", 305, "actual"), ("2019-05-21T23:30:00Z", 305, "actual"),
    ]  # 00:00 has carbonIntensity null: no reading
    (req,) = http_api.requests
    assert req.headers["auth-token"] == TOKEN
    assert req.query == {"zone": "DE", "start": "2019-05-21T21:00:00Z", "end": "2019-05-22T01:00:00Z"}


def test_half_hour_bounds_ask_for_whole_hours_and_keep_only_asked_slots(http_api, tmp_path):
    http_api.route(r"/v3/carbon-intensity/past-range", hourly)
    readings = em(http_api, tmp_path).fetch(ts("2024-01-01T10:30Z"), ts("2024-01-01T11:30Z"))
    assert [iso(r.slot) for r in readings] == ["2024-01-01T10:30:00Z", "2024-01-01T11:00:00Z"]
    assert readings[0].g_per_kwh == 300 + (ts("2024-01-01T10:00Z") // 3600) % 50
    assert http_api.requests[0].query["start"] == "2024-01-01T10:00:00Z"
    assert http_api.requests[0].query["end"] == "2024-01-01T12:00:00Z"


def test_history_endpoint_for_the_last_day(http_api, tmp_path):
    http_api.route(r"/v3/carbon-intensity/history", (200, json.loads((DATA / "em_history.json").read_text())))
    p = em(http_api, tmp_path, now="2024-06-01T12:10Z")
    readings = p.fetch(ts("2024-06-01T10:00Z"), ts("2024-06-01T12:30Z"))
    assert [(iso(r.slot), r.g_per_kwh) for r in readings] == [
        ("2024-06-01T10:00:00Z", 402), ("2024-06-01T10:30:00Z", 402),
        ("2024-06-01T11:00:00Z", 397), ("2024-06-01T11:30:00Z", 397),
    ]
    (req,) = http_api.requests
    assert req.path == "/v3/carbon-intensity/history" and req.query == {"zone": "DE"}
    assert req.headers["auth-token"] == TOKEN


def test_long_ranges_are_cut_into_ten_day_requests(http_api, tmp_path):
    http_api.route(r"/v3/carbon-intensity/past-range", hourly)
    start = ts("2024-01-01T00:00Z")
    readings = em(http_api, tmp_path).fetch(start, start + 25 * DAY)
    assert [r.slot for r in readings] == list(range(start, start + 25 * DAY, 1800))
    spans = [ts(r.query["end"]) - ts(r.query["start"]) for r in http_api.requests]
    assert spans == [10 * DAY, 10 * DAY, 5 * DAY]


def test_cold_then_warm_through_the_cache(http_api, tmp_path):
    http_api.route(r"/v3/carbon-intensity/past-range", hourly)
    db = str(tmp_path / "c.sqlite")
    p = em(http_api, tmp_path)
    start = ts("2024-01-01T00:00Z")
    IntensitySource(p, db, p.clock).lookup(start, start + 30 * DAY)
    assert http_api.count() == 3
    t = IntensitySource(p, db, p.clock).lookup(start + 100, start + 30 * DAY - 100)
    assert http_api.count() == 3 and t.values.size == 1440


def test_rejected_token_error_names_url_never_the_token(http_api, tmp_path):
    http_api.route(r"/v3/.*", (401, {"message": f"Invalid token {TOKEN}"}))
    with pytest.raises(IntensityUnavailable) as exc:
        em(http_api, tmp_path).fetch(ts("2024-01-01T00:00Z"), ts("2024-01-01T01:00Z"))
    text = str(exc.value)
    assert f"{http_api.url}/v3/carbon-intensity/past-range?zone=DE" in text and "HTTP 401" in text
    assert TOKEN not in text


def test_outage_without_cache_names_url_never_the_token(http_api, tmp_path):
    p = em(http_api, tmp_path)
    url = http_api.url
    http_api.stop()
    src = IntensitySource(p, str(tmp_path / "c.sqlite"), p.clock)
    with pytest.raises(IntensityUnavailable) as exc:
        src.lookup(ts("2024-01-01T00:00Z"), ts("2024-01-01T01:00Z"))
    text = str(exc.value)
    assert text.startswith(f"cannot reach {url}/v3/carbon-intensity/past-range?zone=DE&start=2024-01-01T00")
    assert TOKEN not in text and TOKEN not in repr(p)


def test_token_from_environment_and_missing_token(http_api, tmp_path, monkeypatch):
    http_api.route(r"/v3/carbon-intensity/past-range", hourly)
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    p = ElectricityMaps.from_config(IntensityConfig(provider="electricitymaps", url=http_api.url, zone="FR"),
                                    requests.Session(), Clock(ts("2030-01-01T00:00Z")))
    p.fetch(ts("2024-01-01T00:00Z"), ts("2024-01-01T01:00Z"))
    assert http_api.requests[0].headers["auth-token"] == "from-env"
    assert p.cache_key == "electricitymaps:FR"
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(ConfigError, match=re.escape(f"intensity.token_file: required (or set ${TOKEN_ENV})")):
        ElectricityMaps.from_config(IntensityConfig(provider="electricitymaps", zone="FR"), requests.Session())
