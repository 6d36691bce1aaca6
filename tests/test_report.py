"""Output: the bulk JSON writer must say exactly what JobFootprint.to_dict says."""

import io
import json
import math
from types import SimpleNamespace

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_footprint import MIDNIGHT, FakePower

from carbond import report
from carbond.config import from_mapping
from carbond.engine import Engine
from carbond.footprint import J_PER_KWH, Accounting, Allocation, Batch, JobMeta, significant
from carbond.jobs import BadLine, Job


class MixedIntensity:
    """Actual, forecast, stale and missing half-hours, as a provider outage would leave them."""

    def lookup(self, start, end):
        first = int(start // 1800 * 1800)
        n = int((end - first) // 1800) + 1
        values = np.linspace(100, 300, n)
        kinds = np.array(["actual"] * n, dtype=object)
        stale = np.zeros(n, bool)
        kinds[n // 2 :] = "forecast"
        stale[-3:] = True
        values[-1] = np.nan
        return SimpleNamespace(first_slot=first, values=values, kinds=kinds, stale=stale)


def test_bulk_json_matches_to_dict_for_every_kind_of_job():
    cfg = from_mapping({"nodes": [{"match": "n[1-2]", "cpus": 4, "idle_watts": 100, "max_watts": 300}],
                        "pue": 1.3, "embodied": {"g_per_node_hour": 7}})
    power = FakePower({"n1": (MIDNIGHT - 3600, MIDNIGHT + 40 * 3600, 250)})
    h = 3600.0
    items = [
        Job("1", MIDNIGHT + 17.5, MIDNIGHT + 2 * h, ("n1",), (2.0,), partition="p"),  # plain, measured
        Job("2", MIDNIGHT, MIDNIGHT + h, ("n1", "n2"), (1.0, 3.0)),  # n2 estimated: mixed
        Job("3", MIDNIGHT, MIDNIGHT + h, ("n1",), (1.0,), warnings=("local time ambiguous",)),
        Job("4", None, None),
        BadLine("5", 7, "bad"),
        Job("6", MIDNIGHT + 20 * h, MIDNIGHT + 30 * h, ("n1",), (4.0,)),  # forecast periods
        Job("7", MIDNIGHT + 36 * h, MIDNIGHT + 40 * h + 60, ("n1",), (1.0,)),  # stale and missing intensity
        Job("8", MIDNIGHT, MIDNIGHT + 60, ("x9",), (1.0,)),  # unknown node: error
    ]
    engine = Engine(cfg, power, MixedIntensity())
    canonical, bulk = io.StringIO(), io.StringIO()
    report.write_json(engine.account(items), canonical)
    report.write_json_batches(engine.batches(items), bulk)
    assert bulk.getvalue() == canonical.getvalue()
    lines = [json.loads(x) for x in canonical.getvalue().splitlines()]
    assert [d["status"] for d in lines] == ["ok", "ok", "ok", "not-started", "error", "ok", "error", "error"]
    assert lines[1]["method"] == "mixed" and "warnings" in lines[5] and "-stale" in json.dumps(lines[6])


def test_table_has_a_totals_line_and_periods_for_one_job():
    cfg = from_mapping({"attribution": "exclusive"})
    power = FakePower({"n1": (MIDNIGHT - 3600, MIDNIGHT + 7200, 360)})
    out = io.StringIO()
    report.write_table(Engine(cfg, power, MixedIntensity()).account([Job("1", MIDNIGHT, MIDNIGHT + 3600, ("n1",))]), out)
    text = out.getvalue()
    assert "1 job(s), 0.360 kWh" in text and "HALF-HOUR (UTC)" in text and "2023-11-15 00:30:00" in text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=200), st.booleans(), st.booleans())
def test_bulk_numbers_are_written_as_repr_writes_them(values, rounded, few):
    """The fast '%.12g' path of the bulk writer never changes a number's text, rounded or not."""
    x = np.array(values)
    if rounded:
        x = significant(x)
    assert list(report._texts(x, few=few)) == [repr(v).encode() for v in x.tolist()]


def _batch(values: list[float], fraction: bool) -> Batch:
    """A batch of one-node, one-half-hour jobs whose every number is taken from `values`."""
    v = np.array(values, dtype=np.float64)
    n = v.size
    start = MIDNIGHT + 60.0 * np.arange(n) + (0.5 if fraction else 0.0)
    end = start + 600
    ones = np.ones(n)
    intensity = np.where(np.isnan(v[::-1]), np.nan, np.roll(v, 5))  # no operational grams: some intensity unknown
    alloc = Allocation(start, end, np.arange(n), np.zeros(n, np.int64), np.nan_to_num(np.abs(v[::-1]) % 1.0), ones)
    acc = Accounting(energy_j=v * J_PER_KWH, operational_g=v[::-1], embodied_g=np.nan_to_num(np.roll(v, 1)),
                     coverage=np.nan_to_num(np.abs(v) % 1.5),
                     intensity=np.roll(v, 2), row_energy_j=np.roll(v, 3) * J_PER_KWH, period_job=np.arange(n),
                     period_start=start, period_end=end, period_energy_j=np.roll(v, 4) * J_PER_KWH,
                     period_intensity=intensity, period_kind=np.array(["actual"] * n), period_stale=np.zeros(n, bool),
                     period_g=np.roll(v, 6), row_offsets=np.arange(n + 1), period_offsets=np.arange(n + 1))
    metas = [JobMeta(str(1000 + i), (f"cpu-{i}",)) for i in range(n)]
    return Batch(list(range(n)), metas, acc, alloc, 1.25)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-1e290, 1e290) | st.just(math.nan), min_size=1, max_size=100), st.booleans())
@example([0.0, -0.0, 172.0, 1e-12, 3.3e-11, 1e13, 123456789012.5, 0.5, math.nan, 1e290], False)
def test_bulk_lines_write_every_number_as_to_dict_does(values, fraction):
    """Whatever the numbers (integral, tiny, huge, unknown), every line of the bulk writer is the
    line to_dict makes of the same job: '%.12g' where it writes repr's text, repr or null elsewhere."""
    b = _batch(values, fraction)
    canonical, bulk = io.StringIO(), io.BytesIO()
    report.write_json(b.footprints(), canonical)
    assert report.write_json_batches([b], bulk) == len(values)
    assert bulk.getvalue().decode() == canonical.getvalue()
