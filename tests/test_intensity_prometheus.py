"""The `prometheus` provider against a real VictoriaMetrics (the `vm` fixture) through VictoriaClient."""

from __future__ import annotations

import json

import numpy as np
import pytest

from carbond.config import VictoriaConfig, from_mapping
from carbond.errors import IntensityUnavailable
from carbond.intensity import IntensitySource, make_provider
from carbond.intensity.promql import PrometheusIntensity, window_query
from carbond.victoria import VictoriaClient

pytestmark = pytest.mark.vm

T0 = 1_717_200_000  # 2024-06-01T00:00Z
SLOTS = 6


def provider(vm, query: str) -> PrometheusIntensity:
    cfg = from_mapping({"victoriametrics": {"url": vm.url}, "intensity": {"provider": "prometheus", "query": query}})
    return make_provider(cfg, victoria=VictoriaClient(cfg.victoriametrics))  # type: ignore[return-value]


def load(vm, tag: str, series: dict[str, tuple[list[float], list[float]]]) -> None:
    vm.import_lines(json.dumps({"metric": {"__name__": "grid_intensity", "run": tag, "zone": zone},
                                "values": v, "timestamps": [int(t * 1000) for t in ts]})
                    for zone, (ts, v) in series.items())
    vm.flush()


def test_one_sample_per_half_hour_stamped_at_its_start(vm):
    tag = vm.node("ci")
    starts = [T0 + i * 1800 for i in range(SLOTS)]
    load(vm, tag, {"gb": (starts, [100.0 * (i + 1) for i in range(SLOTS)])})
    p = provider(vm, f'grid_intensity{{run="{tag}"}}')
    readings = p.fetch(T0, T0 + SLOTS * 1800)
    assert [(r.slot, r.g_per_kwh, r.kind) for r in readings] == [(s, 100.0 * (i + 1), "series") for i, s in enumerate(starts)]


def test_mean_over_each_half_hour_also_for_aggregations(vm):
    tag = vm.node("ci")
    minutes = [T0 + 60 * k for k in range(SLOTS * 30)]
    load(vm, tag, {"a": (minutes, [float(k) for k in range(len(minutes))]),
                   "b": (minutes, [100.0 + k for k in range(len(minutes))])})
    expected_a = [np.mean(range(30 * i, 30 * i + 30)) for i in range(SLOTS)]  # samples in [s, s+1800)
    plain = provider(vm, f'grid_intensity{{run="{tag}",zone="a"}}').fetch(T0, T0 + SLOTS * 1800)
    assert [r.g_per_kwh for r in plain] == pytest.approx(expected_a)
    both = provider(vm, f'avg(grid_intensity{{run="{tag}"}})').fetch(T0, T0 + SLOTS * 1800)
    assert [r.g_per_kwh for r in both] == pytest.approx([x + 50 for x in expected_a])


def test_through_the_cache_and_a_gap_of_hours(vm, tmp_path):
    tag = vm.node("ci")
    load(vm, tag, {"gb": ([T0, T0 + 1800, T0 + 12 * 3600], [10.0, 20.0, 40.0])})
    p = provider(vm, f'grid_intensity{{run="{tag}"}}')
    src = IntensitySource(p, str(tmp_path / "c.sqlite"), clock=lambda: T0 + 30 * 86400)
    t = src.lookup(T0, T0 + 12 * 3600 + 1800)
    assert t.values[[0, 1, -1]].tolist() == [10.0, 20.0, 40.0]
    assert t.kinds[0] == t.kinds[1] == t.kinds[-1] == "series"
    assert list(t.kinds[2:-1]) == ["missing"] * (t.values.size - 3) and np.isnan(t.values[2:-1]).all()
    src2 = IntensitySource(p, str(tmp_path / "c.sqlite"), clock=lambda: T0 + 30 * 86400)
    assert np.array_equal(src2.lookup(T0, T0 + 3600).values, [10.0, 20.0])
    assert p.cache_key.startswith("prometheus:") and p.cache_key != provider(vm, "other").cache_key


def test_unreachable_victoriametrics_is_intensity_unavailable():
    from fixtures_vm import free_port

    url = f"http://127.0.0.1:{free_port()}"
    p = PrometheusIntensity(VictoriaClient(VictoriaConfig(url=url, timeout=5)), "grid_intensity")
    with pytest.raises(IntensityUnavailable, match=url):
        p.fetch(T0, T0 + 1800)


@pytest.mark.parametrize("query, window", [
    ("grid_intensity", "[1800s]"), ('grid_intensity{zone="gb", src=~"a|b"}', "[1800s]"), ('{__name__="x"}', "[1800s]"),
    ("avg(grid_intensity)", "[1800s:60s]"), ("grid_intensity * 0.9", "[1800s:60s]"), ("rate(x[5m])", "[1800s:60s]"),
])
def test_window_query_form(query, window):
    assert window_query(query) == f"avg_over_time(({query}){window} offset 1ms)"
