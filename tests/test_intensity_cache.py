"""IntensitySource and its sqlite cache: range merging, refresh rules, sharing between processes."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbond.errors import IntensityUnavailable
from carbond.intensity import HALF_HOUR, IntensitySource, Reading, chunks, merge_ranges
from carbond.intensity.cache import Entry, IntensityCache
from carbond.intensity.constant import ConstantIntensity

T0 = 1_704_067_200  # 2024-01-01T00:00Z
DAY = 86400


@dataclass
class Counting:
    """A remote-like provider that records each fetch; `holes` are slots it has no value for."""

    name: str = "counting"
    cache_key: str = "counting:x"
    cacheable: bool = True
    kind: str = "actual"
    down: bool = False
    holes: set[int] = field(default_factory=set)
    calls: list[tuple[int, int]] = field(default_factory=list)
    attempts: int = 0

    def fetch(self, start: int, end: int) -> list[Reading]:
        self.attempts += 1
        if self.down:
            raise IntensityUnavailable("cannot reach http://127.0.0.1:9/x: Connection refused")
        self.calls.append((start, end))
        return [Reading(s, value(s), self.kind) for s in range(start, end, HALF_HOUR)
                if s not in self.holes]


def value(slot: int) -> float:
    return float(slot // HALF_HOUR % 1000)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t


# -- pure helpers -------------------------------------------------------------------------------
@given(st.sets(st.integers(0, 500)))
def test_merged_ranges_cover_exactly_the_slots(indices):
    slots = {T0 + i * HALF_HOUR for i in indices}
    ranges = merge_ranges(slots)
    covered = [s for a, b in ranges for s in range(a, b, HALF_HOUR)]
    assert sorted(covered) == sorted(slots) and len(covered) == len(set(covered))
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(ranges, ranges[1:], strict=False))  # sorted, never touching


@given(st.integers(0, 2000), st.integers(0, 2000), st.integers(1, 700))
def test_chunks_cut_a_range_into_bounded_consecutive_pieces(i, n, span_slots):
    start, end, span = T0 + i * HALF_HOUR, T0 + (i + n) * HALF_HOUR, span_slots * HALF_HOUR
    pieces = chunks(start, end, span)
    assert [s for a, b in pieces for s in range(a, b, HALF_HOUR)] == list(range(start, end, HALF_HOUR))
    assert all(0 < b - a <= span for a, b in pieces)
    assert len(pieces) == math.ceil(n / span_slots)


@given(st.floats(0, 10 * DAY), st.floats(0, 3 * DAY))
def test_lookup_returns_exactly_the_slots_overlapping_the_window(offset, length):
    start, end = T0 + offset, T0 + offset + length
    t = IntensitySource(ConstantIntensity(100.0), None).lookup(start, end)
    slots = t.first_slot + HALF_HOUR * np.arange(t.values.size)
    assert t.first_slot % HALF_HOUR == 0
    assert np.all(slots < end) and np.all(slots + HALF_HOUR > start)  # each overlaps
    if end > start:
        assert t.first_slot <= start and slots[-1] + HALF_HOUR >= end  # none missing
    assert np.all(t.values == 100.0)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 100)), min_size=1, max_size=6))
def test_any_lookup_sequence_fetches_each_final_slot_once(windows):
    p = Counting()
    src = IntensitySource(p, None, Clock(T0 + 100 * DAY))
    for i, n in windows:
        t = src.lookup(T0 + i * HALF_HOUR, T0 + (i + n) * HALF_HOUR)
        assert not np.isnan(t.values).any()
    fetched = [s for a, b in p.calls for s in range(a, b, HALF_HOUR)]
    assert len(fetched) == len(set(fetched))


# -- cached behaviour ---------------------------------------------------------------------------
def test_second_lookup_makes_no_fetch_and_holes_cost_one_fetch_each(tmp_path):
    p = Counting()
    src = IntensitySource(p, str(tmp_path / "c.sqlite"), Clock(T0 + 100 * DAY))
    src.lookup(T0 + DAY, T0 + 2 * DAY)
    src.lookup(T0 + 3 * DAY, T0 + 4 * DAY)
    p.calls.clear()
    t = src.lookup(T0, T0 + 5 * DAY)
    assert p.calls == [(T0, T0 + DAY), (T0 + 2 * DAY, T0 + 3 * DAY), (T0 + 4 * DAY, T0 + 5 * DAY)]
    assert t.values.size == 240 and not np.isnan(t.values).any()
    p.calls.clear()
    src.lookup(T0, T0 + 5 * DAY)
    assert p.calls == []


def test_slots_the_provider_lacks_are_not_asked_again_until_refresh(tmp_path):
    hole = T0 + 10 * HALF_HOUR
    p = Counting(holes={hole})
    clock = Clock(T0 + 3600)  # the window is young: provisional
    src = IntensitySource(p, str(tmp_path / "c.sqlite"), clock, refresh_seconds=600)
    t = src.lookup(T0, T0 + DAY)
    assert np.isnan(t.values[10]) and t.kinds[10] == "missing" and np.isfinite(np.delete(t.values, 10)).all()
    src.lookup(T0, T0 + DAY)
    assert len(p.calls) == 1
    p.holes.clear()
    clock.t += 600
    t = src.lookup(T0, T0 + DAY)
    assert len(p.calls) == 2 and t.values[10] == value(hole)


def test_refresh_that_lacks_a_slot_keeps_the_earlier_value(tmp_path):
    p = Counting(kind="forecast")
    clock = Clock(T0 + 3600)
    src = IntensitySource(p, str(tmp_path / "c.sqlite"), clock)
    src.lookup(T0, T0 + 3600)
    p.holes = {T0}
    clock.t += 1800
    t = src.lookup(T0, T0 + 3600)
    assert len(p.calls) == 2 and t.values[0] == value(T0) and t.kinds[0] == "forecast"


def test_outage_flags_only_refreshed_slots_and_raises_for_unknown_ones(tmp_path):
    p = Counting()
    clock = Clock(T0 + 2 * DAY)
    src = IntensitySource(p, str(tmp_path / "c.sqlite"), clock)
    src.lookup(T0, T0 + 2 * DAY)  # day 1 final, day 2 provisional
    p.down = True
    clock.t += 3600
    t = src.lookup(T0, T0 + 2 * DAY)
    assert not t.stale[:48].any() and t.stale[48:].all()
    assert not np.isnan(t.values).any()
    with pytest.raises(IntensityUnavailable, match=r"http://127.0.0.1:9/x.*no cached intensity from 2024-01-03T00:00:00Z"):
        src.lookup(T0, T0 + 3 * DAY)


def test_after_a_failure_cached_values_are_served_without_asking_for_a_while(tmp_path):
    p = Counting()
    clock = Clock(T0 + 3600)
    src = IntensitySource(p, str(tmp_path / "c.sqlite"), clock, refresh_seconds=600)
    src.lookup(T0, T0 + 3600)
    p.down = True
    clock.t += 600
    assert src.lookup(T0, T0 + 3600).stale.all() and p.attempts == 2
    clock.t += src.retry_seconds - 1
    assert src.lookup(T0, T0 + 3600).stale.all() and p.attempts == 2  # not asked again yet
    with pytest.raises(IntensityUnavailable):
        src.lookup(T0, T0 + 7200)  # a slot with no value is always asked for
    assert p.attempts == 3
    p.down = False
    clock.t += src.retry_seconds
    t = src.lookup(T0, T0 + 3600)
    assert not t.stale.any() and p.attempts == 4


def test_two_sources_on_one_file_share_fetches(tmp_path):
    db = str(tmp_path / "c.sqlite")
    daemon, cli = Counting(), Counting()
    clock = Clock(T0 + 2 * DAY)
    IntensitySource(daemon, db, clock).lookup(T0, T0 + 2 * DAY)
    clock.t += 3600
    IntensitySource(cli, db, clock).lookup(T0, T0 + 2 * DAY)
    assert cli.calls == [(T0 + DAY, T0 + 2 * DAY)]  # only the provisional day, once refresh is due
    daemon_src = IntensitySource(daemon, db, clock)
    daemon_src.lookup(T0, T0 + 2 * DAY)  # the CLI refreshed it a moment ago: nothing to do
    assert len(daemon.calls) == 1


def test_cache_is_wal_and_two_processes_write_concurrently(tmp_path):
    db = str(tmp_path / "c.sqlite")
    cache = IntensityCache(db)
    assert cache._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from carbond.intensity.cache import Entry, IntensityCache
        c = IntensityCache({db!r})
        for i in range(200):
            c.put("other", {{{T0} + (i * 10 + j) * 1800: Entry(float(i), "actual", 1.0) for j in range(10)}})
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)  # noqa: S603 - argument list
    for i in range(200):
        cache.put("mine", {T0 + (i * 10 + j) * HALF_HOUR: Entry(float(i), "forecast", 2.0) for j in range(10)})
        cache.get("other", T0, T0 + 10**7)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err.decode()
    assert len(cache.get("mine", T0, T0 + 10**7)) == 2000
    assert len(cache.get("other", T0, T0 + 10**7)) == 2000
    assert cache.get("mine", T0, T0 + HALF_HOUR) == {T0: Entry(0.0, "forecast", 2.0)}


def test_unopenable_cache_names_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    from carbond.errors import CarbondError

    with pytest.raises(CarbondError, match=f"cannot open the intensity cache {blocker}/c.sqlite"):
        IntensityCache(str(blocker / "c.sqlite"))
