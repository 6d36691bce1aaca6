"""Energy from power samples: pure numpy, no I/O.

A node's samples define a piecewise-linear power trace. Its running integral (joules since the
first sample) is precomputed once per node, so the energy of any window [a, b] is E(b) - E(a),
with exact linear interpolation inside the segments that hold a and b: jobs and UTC half-hours
are cut at their real times, not at sample times. Segments longer than `max_gap` are not bridged:
they add neither energy nor covered seconds, and the caller estimates what they miss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .units import HALF_HOUR


@dataclass(frozen=True)
class Trace:
    """One node's samples with their running integrals."""

    t: np.ndarray
    """Sample times, epoch seconds, strictly ascending."""
    w: np.ndarray
    """Watts at those times."""
    cum_j: np.ndarray
    """Joules from t[0] to t[i], bridged segments only."""
    cum_s: np.ndarray
    """Seconds from t[0] to t[i] covered by bridged segments."""
    max_gap: float


def build_trace(t: np.ndarray, w: np.ndarray, max_gap: float) -> Trace:
    """Running integrals of a trace; unsorted, duplicated or NaN samples are cleaned first.

    Written for the clean trace a series usually is (finite, in order, no gap): each check is
    one pass, and what a clean trace does not need (masks, np.where) is skipped; the numbers
    are the same either way.
    """
    t = np.asarray(t, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if not np.isfinite(t.sum() + w.sum()):  # a sum is finite only if every term is (or it overflowed)
        keep = np.isfinite(t) & np.isfinite(w)
        t, w = t[keep], w[keep]
    dt = np.diff(t)
    if dt.size and not dt.min() > 0:
        order = np.argsort(t, kind="stable")
        t, w = t[order], w[order]
        last = np.append(t[1:] != t[:-1], True)  # keep the last of equal timestamps
        t, w = t[last], w[last]
        dt = np.diff(t)
    seg_j = 0.5 * (w[:-1] + w[1:]) * dt
    seg_s = dt
    if dt.size and not dt.max() <= max_gap:
        bridged = dt <= max_gap
        seg_j = np.where(bridged, seg_j, 0.0)
        seg_s = np.where(bridged, dt, 0.0)
    return Trace(t, w, _running(seg_j), _running(seg_s), float(max_gap))


def _running(seg: np.ndarray) -> np.ndarray:
    """0, then the running sum of seg (np.cumsum straight into place)."""
    out = np.empty(seg.size + 1)
    out[0] = 0.0
    np.cumsum(seg, out=out[1:])
    return out


def cumulative(trace: Trace, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joules and covered seconds from the first sample up to each time in `x`.

    Called once per node per batch with a few hundred times, so it is written for few numpy
    calls (their fixed cost outweighed the arithmetic: 2.3x faster than with np.clip and
    nested np.where, bit for bit the same numbers).
    """
    x = np.asarray(x, dtype=np.float64)
    t, w = trace.t, trace.w
    n = t.size
    if n < 2:
        zero = np.zeros_like(x)
        return zero, zero.copy()
    k = np.searchsorted(t, x, side="right") - 1
    kc = np.minimum(np.maximum(k, 0), n - 2)
    t0, w0 = t[kc], w[kc]
    seg = t[kc + 1] - t0
    bridged = (k >= 0) & (k < n - 1) & (seg <= trace.max_gap)
    frac = np.where(bridged, x - t0, 0.0)
    slope = np.where(bridged, (w[kc + 1] - w0) / np.where(seg > 0, seg, 1.0), 0.0)
    j = trace.cum_j[kc] + frac * (w0 + 0.5 * slope * frac)
    s = trace.cum_s[kc] + frac
    # Before the first sample nothing is known; after the last, everything up to it counts.
    before, after = k < 0, k >= n - 1
    j[before] = 0.0
    s[before] = 0.0
    j[after] = trace.cum_j[-1]
    s[after] = trace.cum_s[-1]
    return j, s


def window(trace: Trace, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Measured joules and covered seconds inside each window [a_i, b_i] (one pass for both ends)."""
    a = np.asarray(a, dtype=np.float64)
    m = a.size
    j, s = cumulative(trace, np.concatenate((a, np.asarray(b, dtype=np.float64))))
    return j[m:] - j[:m], s[m:] - s[:m]


STEP = 1e-3
"""Seconds after each counter sample where the power steps to the next segment's (counter_power)."""


def counter_power(t: np.ndarray, e: np.ndarray, max_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Power samples whose trapezoids give an energy counter's increments exactly between its samples.

    A counter (joules since some start: dcgm-exporter's TOTAL_ENERGY_CONSUMPTION, RAPL, Redfish)
    knows a segment's energy, not how power moved inside it: the power is taken as constant there,
    and steps to the next segment's within STEP seconds after each sample, the step's trapezoid
    accounted for, so E(t_i) - E(t_j) is the counter's to the last bits of float (unless a segment
    holds less energy than STEP x half the power before it: then a power of 0). A counter that
    went down was reset (a reboot): its new value is the energy since. Segments longer than
    `max_gap` stay gaps, as for any series; the sample after one starts anew.
    """
    t = np.asarray(t, dtype=np.float64)
    e = np.asarray(e, dtype=np.float64)
    keep = np.isfinite(t) & np.isfinite(e)
    t, e = t[keep], e[keep]
    order = np.argsort(t, kind="stable")
    t, e = t[order], e[order]
    if t.size < 2:
        return t[:0], e[:0]
    dt = np.diff(t)
    de = np.diff(e)
    de = np.where(de < 0, e[1:], de)  # a reset: the counter restarted from zero
    step = np.minimum(STEP, dt / 4)
    out_t: list[float] = [float(t[0])]
    out_w: list[float | None] = [None]  # a point's power, None until the segment after it is known
    prev: float | None = None  # the power of the segment before, None after a gap
    for i in range(dt.size):
        if not dt[i] > 0 or dt[i] > max_gap:
            if out_w[-1] is None:
                out_w[-1] = prev if prev is not None else 0.0
            out_t.append(float(t[i + 1]))
            out_w.append(None)
            prev = None
            continue
        if prev is None:  # the segment's power from its first sample
            p = float(de[i] / dt[i])
            out_w[-1] = p
            out_t.append(float(t[i + 1]))
            out_w.append(p)
        else:  # the step's trapezoid over [t_i, t_i + s] taken from this segment's energy
            at = float(t[i]) + float(step[i])
            s = at - float(t[i])  # the step as the float times hold it (1e9 + 0.001 is not exact)
            p = max(0.0, float((de[i] - prev * s / 2) / (dt[i] - s / 2)))  # 0 only after ~no energy
            out_t += [at, float(t[i + 1])]
            out_w += [p, p]
        prev = p
    if out_w[-1] is None:
        out_w[-1] = prev if prev is not None else 0.0
    return np.array(out_t), np.array(out_w, dtype=np.float64)


def counter_ms(t_ms: np.ndarray, e: np.ndarray, max_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """counter_power for sample times in integer milliseconds (as VictoriaMetrics exports them)."""
    t, w = counter_power(np.asarray(t_ms, dtype=np.float64) / 1000.0, e, max_gap)
    return np.round(t * 1000.0).astype(np.int64), w


@dataclass(frozen=True)
class Pieces:
    """Windows cut at UTC half-hours: row i is piece `index[i]` of window `owner[i]`."""

    owner: np.ndarray
    slot: np.ndarray
    """Half-hour start, epoch seconds."""
    start: np.ndarray
    end: np.ndarray


def split_half_hours(start: np.ndarray, end: np.ndarray) -> Pieces:
    """Cut each window [start_i, end_i) at every UTC half-hour boundary (vectorised).

    Windows with end <= start produce no piece.
    """
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    first = np.floor(start / HALF_HOUR).astype(np.int64)
    last = np.ceil(end / HALF_HOUR).astype(np.int64) - 1
    counts = np.where(end > start, last - first + 1, 0)
    owner = np.repeat(np.arange(start.size), counts)
    offsets = np.cumsum(counts) - counts
    index = np.arange(owner.size) - np.repeat(offsets, counts)
    slot = (first[owner] + index) * HALF_HOUR
    a = np.maximum(start[owner], slot)
    b = np.minimum(end[owner], slot + HALF_HOUR)
    return Pieces(owner, slot.astype(np.int64), a, b)
