"""Attribution and pricing, on plain arrays: known answers and invariants."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbond.config import from_mapping
from carbond.energy import build_trace
from carbond.engine import Engine
from carbond.footprint import Allocation, IntensityView, JobMeta, compute, footprints
from carbond.jobs import BadLine, Job

MIDNIGHT = 1_700_006_400.0  # 2023-11-15T00:00:00Z
KWH = 3.6e6


def view(first_slot, values, kind="actual"):
    v = np.array(values, dtype=float)
    return IntensityView(int(first_slot), v, np.array([kind] * v.size, dtype=object), np.zeros(v.size, bool))


def alloc(starts, ends, rows):
    """rows: (job, node, share, fallback_w)."""
    a = np.array(rows, dtype=float).reshape(-1, 4)
    return Allocation(
        np.array(starts, float), np.array(ends, float), a[:, 0].astype(int), a[:, 1].astype(int), a[:, 2], a[:, 3]
    )


def flat(t0, t1, watts, step=30.0):
    t = np.arange(t0, t1 + step, step)
    return build_trace(t, np.full(t.size, float(watts)), 300)


def run(al, traces, iv, pue=1.0, embodied=0.0, ids=None):
    acc = compute(al, traces, iv, pue, embodied)
    n = al.start.size
    metas = [JobMeta(ids[i] if ids else str(i), tuple(f"n{k}" for k in np.unique(al.row_node[al.row_job == i]))) for i in range(n)]
    return list(footprints(acc, al, metas, pue))


def test_job_across_midnight_is_priced_per_half_hour():
    # 400 W node, job holds half of it from 23:50 to 00:40 UTC: 10 + 30 + 10 minutes at 200 W.
    tr = flat(MIDNIGHT - 3600, MIDNIGHT + 3600, 400)
    al = alloc([MIDNIGHT - 600], [MIDNIGHT + 2400], [(0, 0, 0.5, np.nan)])
    (fp,) = run(al, [tr], view(MIDNIGHT - 1800, [100, 200, 300]), pue=1.5)
    kwh = [200 * 600 / KWH, 200 * 1800 / KWH, 200 * 600 / KWH]
    assert [p.energy_kwh for p in fp.periods] == pytest.approx(kwh)
    assert [p.co2e_g for p in fp.periods] == pytest.approx([kwh[0] * 100 * 1.5, kwh[1] * 200 * 1.5, kwh[2] * 300 * 1.5])
    assert fp.energy_kwh == pytest.approx(sum(kwh))
    assert fp.intensity_g_per_kwh == pytest.approx((kwh[0] * 100 + kwh[1] * 200 + kwh[2] * 300) / sum(kwh))
    assert fp.method == "measured" and fp.coverage == pytest.approx(1.0)
    assert fp.to_dict()["periods"][1]["start"] == "2023-11-15T00:00:00Z"


def test_gap_is_filled_with_the_mean_measured_power():
    t = np.concatenate([np.arange(0, 1201, 30.0), np.arange(2400, 3601, 30.0)]) + MIDNIGHT
    w = np.where(t < MIDNIGHT + 1500, 100.0, 300.0)
    tr = build_trace(t, w, 300)
    al = alloc([MIDNIGHT], [MIDNIGHT + 3600], [(0, 0, 1.0, np.nan)])
    (fp,) = run(al, [tr], view(MIDNIGHT, [10, 10]))
    measured = 100 * 1200 + 300 * 1200
    assert fp.coverage == pytest.approx(2400 / 3600)
    assert fp.method == "mixed"
    assert fp.energy_kwh * KWH == pytest.approx(measured + (measured / 2400) * 1200)


def test_node_without_samples_is_estimated_from_idle_and_max():
    cfg = from_mapping({"nodes": [{"match": "n[1-2]", "cpus": 4, "idle_watts": 100, "max_watts": 300}]})
    job = Job("7", MIDNIGHT, MIDNIGHT + 3600, ("n1",), (1.0,))
    (fp,) = Engine(cfg, FakePower({}), FakeIntensity(50)).account([job])
    # share 1/4 of the 100 W floor + the 200 W dynamic range for 1 of 4 CPUs = 75 W for an hour.
    assert fp.status == "ok" and fp.method == "estimated" and fp.coverage == 0
    assert fp.energy_kwh == pytest.approx(0.075)
    assert fp.co2e_g == pytest.approx(0.075 * 50)


def test_node_without_samples_or_estimate_is_an_error_naming_the_node():
    cfg = from_mapping({"attribution": "exclusive"})
    job = Job("8", MIDNIGHT, MIDNIGHT + 60, ("gpu-q-07",), ())
    (fp,) = Engine(cfg, FakePower({}), FakeIntensity(50)).account([job])
    assert fp.status == "error" and "gpu-q-07" in fp.error


def test_multi_node_job_attributes_each_node_by_cpus():
    cfg = from_mapping({"nodes": [{"match": "a,b", "cpus": 8}]})
    power = FakePower({"a": (MIDNIGHT, MIDNIGHT + 7200, 400), "b": (MIDNIGHT, MIDNIGHT + 7200, 200)})
    job = Job("9", MIDNIGHT + 100, MIDNIGHT + 1900, ("a", "b"), (2.0, 4.0))
    (fp,) = Engine(cfg, power, FakeIntensity(100)).account([job])
    by_node = {n.node: n for n in fp.nodes}
    assert by_node["a"].share == 0.25 and by_node["b"].share == 0.5
    assert by_node["a"].energy_kwh == pytest.approx(400 * 0.25 * 1800 / KWH)
    assert by_node["b"].energy_kwh == pytest.approx(200 * 0.5 * 1800 / KWH)
    assert fp.energy_kwh == pytest.approx(by_node["a"].energy_kwh + by_node["b"].energy_kwh)
    assert len(fp.periods) == 2  # 00:01:40-00:30 and 00:30-00:31:40, both nodes summed


def test_embodied_is_reported_separately_and_in_the_total():
    cfg = from_mapping({"attribution": "exclusive", "embodied": {"g_per_node_hour": 20}, "pue": 1.2})
    power = FakePower({"a": (MIDNIGHT, MIDNIGHT + 7200, 360)})
    (fp,) = Engine(cfg, power, FakeIntensity(100)).account([Job("1", MIDNIGHT, MIDNIGHT + 1800, ("a",), ())])
    assert fp.embodied_g == pytest.approx(10.0)
    assert fp.operational_g == pytest.approx(0.18 * 100 * 1.2)
    assert fp.co2e_g == pytest.approx(fp.operational_g + 10.0)


def test_jobs_that_cannot_be_accounted_keep_their_place_and_say_why():
    cfg = from_mapping({"attribution": "exclusive"})
    power = FakePower({"a": (MIDNIGHT, MIDNIGHT + 7200, 100)})
    items = [
        Job("1", None, None, ("a",)),
        Job("2", MIDNIGHT, MIDNIGHT, ("a",)),
        Job("3", MIDNIGHT, None, ("a",)),
        BadLine("4", 5, "bad time"),
        Job("5", MIDNIGHT + 10, MIDNIGHT, ("a",)),
        Job("6", MIDNIGHT, MIDNIGHT + 60, ("a",)),
    ]
    out = list(Engine(cfg, power, FakeIntensity(1)).account(items))
    assert [(f.job_id, f.status) for f in out] == [
        ("1", "not-started"),
        ("2", "zero-length"),
        ("3", "running"),
        ("4", "error"),
        ("5", "error"),
        ("6", "ok"),
    ]
    assert "line 5" in out[3].error
    assert out[5].energy_kwh == pytest.approx(100 * 60 / KWH)


def test_cpus_attribution_without_node_cpu_count_is_a_clear_error():
    power = FakePower({"a": (MIDNIGHT, MIDNIGHT + 7200, 100)})
    (fp,) = Engine(from_mapping({}), power, FakeIntensity(1)).account([Job("1", MIDNIGHT, MIDNIGHT + 60, ("a",), (2.0,))])
    assert fp.status == "error" and "CPU count of node a" in fp.error


def test_missing_intensity_is_an_error_not_a_zero():
    power = FakePower({"a": (MIDNIGHT, MIDNIGHT + 7200, 100)})
    eng = Engine(from_mapping({"attribution": "exclusive"}), power, FakeIntensity(float("nan")))
    (fp,) = eng.account([Job("1", MIDNIGHT, MIDNIGHT + 60, ("a",))])
    assert fp.status == "error" and "no grid intensity" in fp.error and fp.co2e_g is None


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0, 3000),
    st.floats(1, 1000),
    st.lists(st.tuples(st.floats(0, 80000), st.floats(1, 40000), st.floats(0.01, 1)), min_size=1, max_size=8),
    st.floats(1, 2),
)
def test_constant_intensity_gives_kwh_times_intensity(watts, intensity, jobs, pue):
    tr = flat(MIDNIGHT - 1000, MIDNIGHT + 130000, watts)
    al = alloc(
        [MIDNIGHT + s for s, _, _ in jobs],
        [MIDNIGHT + s + d for s, d, _ in jobs],
        [(i, 0, share, np.nan) for i, (_, _, share) in enumerate(jobs)],
    )
    iv = view(MIDNIGHT - 1800, [intensity] * 80)
    # Epoch seconds in float64 resolve ~2.4e-7 s near 1.7e9: that bounds the absolute error.
    tol = watts * 1e-6 / KWH + 1e-15
    for fp, (_, d, share) in zip(run(al, [tr], iv, pue=pue), jobs, strict=False):
        assert fp.energy_kwh == pytest.approx(watts * share * d / KWH, rel=1e-9, abs=tol)
        assert fp.co2e_g == pytest.approx(fp.energy_kwh * intensity * pue, rel=1e-9, abs=1e-9)
        assert sum(p.energy_kwh for p in fp.periods) == pytest.approx(fp.energy_kwh, rel=1e-9, abs=1e-12)
        assert sum(n.energy_kwh for n in fp.nodes) == pytest.approx(fp.energy_kwh, rel=1e-9, abs=1e-12)


# ---- stand-ins for the I/O edges (the real ones are tested against real services) ----------


class FakePower:
    def __init__(self, flats):
        self.flats = flats

    def fetch_power(self, nodes, start, end):
        out = {}
        for n in nodes:
            if n in self.flats:
                t0, t1, watts = self.flats[n]
                t = np.arange(t0, t1 + 30, 30.0)
                out[n] = (t, np.full(t.size, float(watts)))
        return out


class FakeIntensity:
    def __init__(self, value):
        self.value = value

    def lookup(self, start, end):
        first = int(start // 1800 * 1800)
        n = int((end - first) // 1800) + 1
        return SimpleNamespace(
            first_slot=first, values=np.full(n, self.value), kinds=np.array(["constant"] * n), stale=np.zeros(n, bool)
        )
