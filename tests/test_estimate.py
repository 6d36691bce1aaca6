"""`carbond estimate`: a hand-computed case, a power model learned from the ledger, the UK forecast."""

import argparse
import io
import json
import time

import numpy as np
import pytest

from carbond.cli import build_parser
from carbond.config import from_mapping
from carbond.errors import JobInputError
from carbond.estimate import estimate, greenest, learn_power, parse_duration, run
from carbond.ledger import ACCOUNTED, Entry, Ledger
from carbond.ledger_columns import Details, connect, record_details

NOW = 1_763_800_000.0  # 2025-11-22T08:26:40Z


def cfg(**extra):
    base = {"cluster": "c1", "pue": 1.2, "embodied": {"g_per_node_hour": 64},
            "intensity": {"provider": "constant", "value": 200},
            "nodes": [{"match": "c[1-9]", "name": "cpu", "cpus": 64, "idle_watts": 200, "max_watts": 640},
                      {"match": "g[1-4]", "name": "gpu", "cpus": 64, "gpus": 4, "max_watts": 1600,
                       "weights": {"cpu": 5, "gpu": 250}}]}
    base.update(extra)
    return from_mapping(base)


def test_hand_computed_fallback_case():
    # 640 W / 64 CPUs = 10 W per CPU; 8 CPUs for 6 h = 0.48 kWh; x 200 g/kWh x PUE 1.2 = 115.2 g;
    # embodied 64 g per node-hour x 6 h x 8/64 of a node = 48 g.
    e = estimate(cfg(), cpus=8, gpus=0, seconds=6 * 3600, node_class="cpu", now=NOW)
    assert e.energy_consumption_kwh == pytest.approx(0.48)
    assert e.carbon_intensity_g_per_kwh == pytest.approx(200.0)
    assert e.operational_g == pytest.approx(115.2)
    assert e.embodied_g == pytest.approx(48.0)
    assert e.carbon_footprint_g == pytest.approx(163.2)
    assert e.how["power"] == "fallback: max_watts/cpus of node class cpu"


def test_learns_watts_per_cpu_and_gpu_from_measured_jobs(tmp_path):
    rnd = np.random.default_rng(3)
    led = Ledger(tmp_path, "c1")
    entries, details = [], []
    for i in range(40):
        c, g, s = int(rnd.integers(1, 64)), int(rnd.integers(0, 4)), float(rnd.uniform(600, 36000))
        e = (3.5 * c + 210.0 * g) * s * (1 + rnd.normal(0, 0.01))
        entries.append(Entry(str(i), ACCOUNTED, e, 1.0, "gpuq", "a", "u", NOW - 1000 * i))
        details.append(Details(str(i), NOW - 1000 * i - s, method="measured", coverage=1.0, node_class="gpu",
                               cpus=c, gpus=g))
    # an estimated job far off the model must be ignored
    entries.append(Entry("x", ACCOUNTED, 1e12, 1.0, "gpuq", "a", "u", NOW))
    details.append(Details("x", NOW - 100, method="estimated", coverage=0.0, node_class="gpu", cpus=1, gpus=0))
    led.record_many(entries)
    record_details(tmp_path, "c1", details)
    led.close()
    db = connect(tmp_path, readonly=True)
    e = estimate(cfg(), cpus=16, gpus=1, seconds=3600, node_class="gpu", db=db, now=NOW)
    assert e.how["power"].startswith("learned from") and "measured jobs of node class gpu" in e.how["power"]
    assert e.how["w_per_cpu"] == pytest.approx(3.5, rel=0.05)
    assert e.how["w_per_gpu"] == pytest.approx(210.0, rel=0.02)
    assert e.energy_consumption_kwh == pytest.approx((16 * 3.5 + 210) / 1000, rel=0.03)
    by_partition = estimate(cfg(), cpus=16, gpus=1, seconds=3600, partition="gpuq", db=db, now=NOW)
    assert by_partition.energy_consumption_kwh == pytest.approx(e.energy_consumption_kwh)


def test_learn_power_exact_and_non_negative():
    c = np.array([1, 2, 4, 8.0])
    g = np.array([0, 1, 0, 2.0])
    s = np.array([100, 200, 300, 400.0])
    a, b = learn_power(c, g, s, (5 * c + 100 * g) * s)
    assert (a, b) == pytest.approx((5.0, 100.0))
    a, b = learn_power(c, g * 0, s, 7 * c * s)
    assert (a, b) == pytest.approx((7.0, 0.0))


def test_greenest_start_in_a_window():
    # intensity per half-hour from slot 0: 300, 300, 100, 100, 300 ...; a 1 h job is greenest at 01:00
    v = np.array([300, 300, 100, 100, 300, 300.0])
    best, best_i, now_i = greenest(0, v, 600.0, 4 * 3600, 3600)
    assert (best, best_i) == (3600.0, 100.0)
    assert now_i == pytest.approx((1200 * 300 + 1800 * 300 + 600 * 100) / 3600)


def test_durations():
    assert parse_duration("6h") == 21600
    assert parse_duration("90m") == 5400
    assert parse_duration("45") == 2700
    assert parse_duration("1-12:00:00") == 129600
    assert parse_duration("2:30:00") == 9000
    assert parse_duration("30:00") == 1800
    assert parse_duration("2-12") == 216000
    with pytest.raises(JobInputError, match="cannot read duration"):
        parse_duration("soon")


def test_no_history_no_watts_is_a_clear_error():
    c = cfg(nodes=[{"match": "z1", "name": "bare"}])
    with pytest.raises(JobInputError, match="cannot estimate power"):
        estimate(c, cpus=1, gpus=0, seconds=60, node_class="bare", now=NOW)


def uk_forecast(api, now, horizon=48 * 3600):
    """The national endpoint for future half-hours: forecast only, `actual` null, nothing past 48 h."""
    from test_intensity_uk import fmt, ts

    def answer(req):
        import re

        m = re.search(r"intensity/([^/]+)/([^/]+)", req.path)
        lo, hi = ts(m.group(1)), ts(m.group(2))
        slots = range(-(-(lo - 1800) // 1800) * 1800, min(hi, int(now) + horizon) + 1, 1800)
        return 200, {"data": [{"from": fmt(s), "to": fmt(s + 1800),
                               "intensity": {"forecast": 50 if (s // 1800) % 48 in range(20, 28) else 250,
                                             "actual": None, "index": "moderate"}} for s in slots]}

    api.route(r"/intensity/([^/]+)/([^/]+)", answer)


def test_window_on_the_uk_forecast_shape(http_api):
    now = 1_763_769_600.0  # 2025-11-22T00:00Z; forecast 50 g/kWh from 10:00 to 14:00 UTC, else 250
    uk_forecast(http_api, now)
    c = cfg(intensity={"provider": "uk-carbon-intensity", "url": http_api.url})
    e = estimate(c, cpus=64, gpus=0, seconds=4 * 3600, node_class="cpu", window_s=24 * 3600, now=now)
    assert e.start == "2025-11-22T10:00:00Z"
    assert e.carbon_intensity_g_per_kwh == pytest.approx(50.0)
    w = e.window
    assert w["intensity_now_g_per_kwh"] == pytest.approx(250.0)
    assert w["saving_g"] == pytest.approx(0.64 * 4 * 200 * 1.2)
    assert w["sbatch_begin"] == "--begin=" + time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now + 36000))
    assert e.how["intensity"] == "uk-carbon-intensity (forecast)"
    # a job reaching past the 48 h horizon: the missing half-hours take the forecast a day earlier, said so
    late = estimate(c, cpus=1, gpus=0, seconds=6 * 3600, node_class="cpu", start=now + 45 * 3600, now=now)
    assert "5 half-hour(s) without a forecast take the value a day earlier" in late.how["intensity"]


def test_cli_json_carries_the_seed_fields(tmp_path):
    c = cfg(state_dir=str(tmp_path))
    args = build_parser().parse_args(["estimate", "--nodes-class", "cpu", "--cpus", "8", "--time", "6h", "--json"])
    assert isinstance(args, argparse.Namespace)
    buf = io.StringIO()
    assert run(args, c, out=buf) == 0
    d = json.loads(buf.getvalue())
    assert d["carbon_footprint_g"] == pytest.approx(163.2)
    assert d["energy_consumption_kwh"] == pytest.approx(0.48)
    assert d["carbon_intensity_g_per_kwh"] == pytest.approx(200.0)
    assert d["how"]["power"].startswith("fallback")


def test_provider_without_forecast_uses_the_day_before(tmp_path):
    # a CSV that ends now: tomorrow's half-hours take today's values (persistence)
    day0 = 1_763_769_600  # 2025-11-22T00:00Z
    def z(t):
        return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(t))

    rows = ["from,to,intensity"] + [f"{z(day0 + 1800 * k)},{z(day0 + 1800 * k + 1800)},{300 if k < 24 else 100}"
                                    for k in range(48)]
    path = tmp_path / "i.csv"
    path.write_text("\n".join(rows) + "\n")
    c = cfg(intensity={"provider": "csv", "path": str(path)})
    e = estimate(c, cpus=64, gpus=0, seconds=3600, node_class="cpu", start=day0 + 86400 + 13 * 3600, now=day0)
    assert e.carbon_intensity_g_per_kwh == pytest.approx(100.0)
    assert "2 half-hour(s) without a forecast take the value a day earlier" in e.how["intensity"]
