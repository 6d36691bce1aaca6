"""Energy arithmetic: known answers worked out by hand, and invariants under hypothesis."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbond.energy import HALF_HOUR, build_trace, cumulative, split_half_hours, window

T0 = 1_700_000_000.0 - 1_700_000_000 % 1800  # a UTC half-hour boundary


def one(trace, a, b):
    j, s = window(trace, np.array([a]), np.array([b]))
    return float(j[0]), float(s[0])


def test_step_between_samples_is_interpolated_linearly():
    # 100 W at 0 s, 300 W at 30 s and 60 s. [15, 45]: 15 s averaging 250 W, then 15 s at 300 W.
    tr = build_trace(np.array([0.0, 30, 60]), np.array([100.0, 300, 300]), 300)
    assert one(tr, 15, 45) == (pytest.approx(15 * 250 + 15 * 300), 30.0)


def test_job_shorter_than_one_sample_interval():
    # p(10) = 200 W and p(20) = 300 W on the line from 100 W to 400 W: mean 250 W for 10 s.
    tr = build_trace(np.array([0.0, 30]), np.array([100.0, 400]), 300)
    assert one(tr, 10, 20) == (pytest.approx(2500.0), 10.0)


def test_gap_longer_than_max_gap_is_not_bridged():
    t = np.concatenate([np.arange(0, 301, 30.0), np.arange(1000, 1601, 30.0)])
    tr = build_trace(t, np.full(t.size, 200.0), max_gap=300)
    joules, covered = one(tr, 0, 1600)
    assert covered == pytest.approx(300 + 600)
    assert joules == pytest.approx(200 * 900)


def test_gap_equal_to_max_gap_is_bridged():
    tr = build_trace(np.array([0.0, 300]), np.array([100.0, 100]), max_gap=300)
    assert one(tr, 0, 300) == (pytest.approx(30000.0), 300.0)


def test_window_outside_the_samples_measures_nothing():
    tr = build_trace(np.array([100.0, 130]), np.array([100.0, 100]), 300)
    assert one(tr, 0, 50) == (0.0, 0.0)
    assert one(tr, 200, 300) == (0.0, 0.0)
    assert one(tr, 0, 300) == (pytest.approx(3000.0), 30.0)


def test_unsorted_duplicate_and_nan_samples_are_cleaned():
    t = np.array([60.0, 0, 30, 30, 90, 120])
    w = np.array([100.0, 100, 999, 100, np.nan, 100])
    tr = build_trace(t, w, 300)
    assert list(tr.t) == [0, 30, 60, 120]
    assert one(tr, 0, 120) == (pytest.approx(12000.0), 120.0)


def _plain_trace(t, w, max_gap):
    """build_trace as its definition reads: clean, sort, then mask every segment (no fast path)."""
    keep = np.isfinite(t) & np.isfinite(w)
    t, w = t[keep], w[keep]
    order = np.argsort(t, kind="stable")
    t, w = t[order], w[order]
    last = np.append(t[1:] != t[:-1], True) if t.size else np.zeros(0, bool)
    t, w = t[last], w[last]
    dt = np.diff(t)
    bridged = dt <= max_gap
    seg_j = np.where(bridged, 0.5 * (w[:-1] + w[1:]) * dt, 0.0)
    seg_s = np.where(bridged, dt, 0.0)
    return t, w, np.concatenate(([0.0], np.cumsum(seg_j))), np.concatenate(([0.0], np.cumsum(seg_s)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5000) | st.just(np.nan), st.floats(0, 900) | st.sampled_from([np.nan, np.inf])),
                max_size=60),
       st.booleans(), st.sampled_from([60.0, 300.0, np.inf]))
def test_build_trace_gives_the_numbers_of_its_definition(samples, in_order, max_gap):
    """The fast paths (a clean, ordered, gapless series skips masks and sorts) change no bit."""
    t = np.array([a for a, _ in samples], dtype=np.float64)
    w = np.array([b for _, b in samples], dtype=np.float64)
    if in_order:
        order = np.argsort(t, kind="stable")
        t, w = t[order], w[order]
    got = build_trace(t, w, max_gap)
    for a, b in zip((got.t, got.w, got.cum_j, got.cum_s), _plain_trace(t, w, max_gap), strict=True):
        assert np.array_equal(a, b)


def test_empty_and_single_sample_traces():
    for t in (np.array([]), np.array([5.0])):
        tr = build_trace(t, np.full(t.size, 100.0), 300)
        assert one(tr, 0, 10) == (0.0, 0.0)


def test_piecewise_linear_trace_matches_analytic_integral():
    # A ramp, a plateau and a fall, sampled every 30 s, integrated between arbitrary instants.
    t = T0 + np.arange(0, 4 * 3600 + 1, 30.0)
    x = t - T0
    w = np.interp(x, [0, 3600, 7200, 14400], [120, 450, 450, 150])
    tr = build_trace(t, w, 300)

    def analytic(s):  # integral of the piecewise-linear power from 0 to s
        knots = np.array([0, 3600, 7200, 14400.0])
        vals = np.interp(knots, [0, 3600, 7200, 14400], [120, 450, 450, 150])
        total = 0.0
        for k in range(3):
            lo, hi = knots[k], min(knots[k + 1], s)
            if hi <= lo:
                break
            v_hi = np.interp(hi, knots, vals)
            total += 0.5 * (vals[k] + v_hi) * (hi - lo)
        return total

    a, b = 1234.567, 13000.001
    exact = analytic(b) - analytic(a)
    joules, _ = one(tr, T0 + a, T0 + b)
    assert abs(joules - exact) / exact < 1e-4  # the bar: within 0.01 %
    assert joules == pytest.approx(exact, rel=1e-9)  # in fact exact up to rounding


def test_split_crosses_half_hours_and_midnight():
    midnight = 1_700_006_400.0  # 2023-11-15T00:00:00Z
    p = split_half_hours(np.array([midnight - 1790.0]), np.array([midnight + 1900.0]))
    assert list(p.slot) == [midnight - 1800, midnight, midnight + 1800]
    assert list(p.start) == [midnight - 1790, midnight, midnight + 1800]
    assert list(p.end) == [midnight, midnight + 1800, midnight + 1900]


def test_split_window_on_boundaries_and_empty_windows():
    p = split_half_hours(np.array([T0, T0 + 5, T0 + 9]), np.array([T0 + 3600, T0 + 5, T0 + 1]))
    assert list(p.owner) == [0, 0]
    assert list(p.slot) == [T0, T0 + 1800]


# ---- invariants ----------------------------------------------------------------------------

powers = st.lists(st.floats(0, 2000, allow_nan=False), min_size=2, max_size=60)


@st.composite
def traces(draw):
    w = np.array(draw(powers))
    steps = np.array(draw(st.lists(st.floats(1, 400), min_size=w.size - 1, max_size=w.size - 1)))
    t = T0 + np.concatenate([[0.0], np.cumsum(steps)])
    return t, w


@settings(max_examples=200, deadline=None)
@given(traces(), st.lists(st.floats(-500, 30000), min_size=1, max_size=12))
def test_a_window_cut_in_pieces_sums_to_the_whole(trace, cuts):
    t, w = trace
    tr = build_trace(t, w, 300)
    edges = np.sort(T0 + np.array(cuts + [-600.0, 31000.0]))
    whole_j, whole_s = one(tr, edges[0], edges[-1])
    parts_j, parts_s = window(tr, edges[:-1], edges[1:])
    assert parts_j.sum() == pytest.approx(whole_j, rel=1e-9, abs=1e-6)
    assert parts_s.sum() == pytest.approx(whole_s, rel=1e-9, abs=1e-6)
    assert np.all(parts_j >= -1e-6)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0, 5000, allow_nan=False),
    st.floats(1, 60),
    st.floats(0, 5000),
    st.floats(0.001, 20000),
)
def test_constant_power_over_d_seconds_is_exactly_p_times_d(p, step, offset, d):
    t = T0 + np.arange(0, 30000, step)
    tr = build_trace(t, np.full(t.size, p), 300)
    a = T0 + min(offset, 30000 - d - step) if d + step < 30000 else T0
    b = min(a + d, t[-1])
    joules, covered = one(tr, a, b)
    assert covered == pytest.approx(b - a, rel=1e-9, abs=1e-6)
    assert joules == pytest.approx(p * (b - a), rel=1e-9, abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e5, 1e5), st.floats(0, 2e5)), min_size=1, max_size=20))
def test_half_hour_pieces_partition_each_window(windows):
    start = T0 + np.array([s for s, _ in windows])
    end = start + np.array([d for _, d in windows])
    p = split_half_hours(start, end)
    lengths = np.bincount(p.owner, p.end - p.start, minlength=len(windows))
    assert np.allclose(lengths, end - start, rtol=1e-12, atol=1e-6)
    assert np.all(p.start >= p.slot) and np.all(p.end <= p.slot + HALF_HOUR)
    assert np.all(p.slot % HALF_HOUR == 0)


def test_cumulative_is_monotone_in_time():
    t = T0 + np.arange(0, 3000, 30.0)
    tr = build_trace(t, 100 + 50 * np.sin(t / 100), 300)
    j, s = cumulative(tr, np.linspace(T0 - 100, T0 + 3100, 997))
    assert np.all(np.diff(j) >= -1e-9) and np.all(np.diff(s) >= -1e-9)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(1, 400), st.floats(10, 5000), st.booleans()), min_size=2, max_size=60))
def test_a_counter_gives_its_increments_exactly_between_samples(segments):
    """counter_power: for every pair of samples not separated by a gap, the trace's energy equals the
    counter's increments (a reset counts the new value as the energy since)."""
    from carbond.energy import counter_power

    t = np.concatenate(([1e9], 1e9 + np.cumsum([dt for dt, _, _ in segments])))
    e = [1e6]
    for dt, watts, reset in segments:  # a reset restarts from 0: the new value is below the old one
        e.append(watts * dt if reset and watts * dt < e[-1] else e[-1] + watts * dt)
    e = np.array(e)
    inc = np.diff(e)
    inc = np.where(inc < 0, e[1:], inc)
    gap = 300.0
    tr = build_trace(*counter_power(t, e, gap), gap)
    got = window(tr, t[:-1], t[1:])[0]
    bridged = np.diff(t) <= gap
    assert np.allclose(got[bridged], inc[bridged], rtol=1e-9, atol=1e-6)
