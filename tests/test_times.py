import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbond.errors import TimeFormatError
from carbond.times import iso, iso_many, iso_parts, parse_time


def test_epoch_and_offsets():
    assert parse_time("1700000000") == (1700000000.0, None)
    assert parse_time("2023-11-14T22:13:20Z")[0] == 1700000000.0
    assert parse_time("2023-11-14T23:13:20+01:00")[0] == 1700000000.0


def test_local_time_needs_a_zone():
    with pytest.raises(TimeFormatError, match="no UTC offset"):
        parse_time("2023-11-14T22:13:20")


def test_local_times_across_dst_in_london():
    # Summer: BST is UTC+1. Winter: GMT.
    assert parse_time("2024-07-01T12:00:00", "Europe/London")[0] == parse_time("2024-07-01T11:00:00Z")[0]
    assert parse_time("2024-01-01T12:00:00", "Europe/London")[0] == parse_time("2024-01-01T12:00:00Z")[0]
    # A job from 00:30 to 03:30 local on the night clocks go forward lasted two hours, not three.
    start, _ = parse_time("2024-03-31T00:30:00", "Europe/London")
    end, _ = parse_time("2024-03-31T03:30:00", "Europe/London")
    assert end - start == 7200


def test_autumn_hour_is_flagged_and_spring_hour_refused():
    value, warning = parse_time("2024-10-27T01:30:00", "Europe/London")
    assert warning and "ambiguous" in warning
    assert value == parse_time("2024-10-27T00:30:00Z")[0]  # first occurrence, BST
    with pytest.raises(TimeFormatError, match="does not exist"):
        parse_time("2024-03-31T01:30:00", "Europe/London")


def test_bad_inputs():
    with pytest.raises(TimeFormatError, match="cannot read"):
        parse_time("yesterday")
    with pytest.raises(TimeFormatError, match="unknown time zone"):
        parse_time("2024-01-01T00:00:00", "Mars/Olympus")


def test_iso():
    assert iso(1700000000) == "2023-11-14T22:13:20Z"


@settings(max_examples=200, deadline=None)
@given(st.integers(-2000 * 3600, 253402300799 - 2000 * 3600), st.lists(st.integers(0, 2000 * 3600 - 1), min_size=1, max_size=50),
       st.booleans(), st.booleans())
def test_iso_parts_write_what_iso_writes(base, offsets, fraction, wide):
    """The bulk JSON writes times as an hour's text and the rest: side by side they must be
    iso's, and where they cannot be (a fraction, before 1970, a span of 2,000 hours) there are none."""
    t = np.array([base + o for o in offsets] + ([base + min(offsets) + 2000 * 3600] if wide else []), dtype=np.float64)
    t = t + (0.25 if fraction else 0.0)
    parts = iso_parts(t)
    if fraction or wide or t.min() < 0:
        assert parts is None
        return
    assert [(a + b).decode() for a, b in zip(*parts, strict=True)] == [iso(v) for v in t.tolist()] == iso_many(t)
