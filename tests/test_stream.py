"""Streaming by time equals the unstreamed engine: weeks of real VictoriaMetrics data, jobs
crossing window edges, gaps, a node without samples; and the power cache fetches what jobs need."""

import io
import json
import math
import multiprocessing
import os
import signal
import socket
import tempfile
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbond import segments
from carbond.config import from_mapping
from carbond.energy import build_trace, window
from carbond.engine import Engine
from carbond.errors import CarbondError, VictoriaError
from carbond.jobs import TimeBuckets, read_sacct
from carbond.powercache import PowerCache
from carbond.report import write_json_batches
from carbond.victoria import VictoriaClient

T0 = 1_706_745_600.0  # 2024-02-01T00:00:00Z
DAY = 86400.0
HEADER = "JobIDRaw|JobID|Start|End|NodeList|AllocTRES|Partition|Account|User"


class SlotIntensity:
    """A different intensity every half-hour, so a period priced in the wrong slot shows."""

    def lookup(self, start, end):
        from types import SimpleNamespace

        first = int(start // 1800 * 1800)
        n = int((end - first) // 1800) + 1
        slots = first + 1800 * np.arange(n)
        values = 100 + 50 * np.sin(slots / 7000.0)
        return SimpleNamespace(first_slot=first, values=values, kinds=np.array(["actual"] * n), stale=np.zeros(n, bool))


@pytest.fixture(scope="module")
def weeks(vm):
    """Three weeks of 30 s power on four nodes (with gaps), a fifth node without any, 400 jobs."""
    rng = np.random.default_rng(7)
    nodes = [vm.node("st") for _ in range(5)]
    span = 21 * DAY
    for k, node in enumerate(nodes[:4]):
        t = T0 - DAY + np.arange(0, span + 2 * DAY, 30.0) + rng.integers(-300, 300, int((span + 2 * DAY) / 30)) / 1000
        keep = np.ones(t.size, bool)
        keep[(t > T0 + (3 + k) * DAY) & (t < T0 + (3 + k) * DAY + 1800 * (k + 1))] = False  # 30 min .. 2 h gaps
        w = np.rint(150 + 100 * np.sin(t[keep] / (3000.0 + k * 100)) + rng.normal(0, 3, keep.sum()))
        vm.import_series(node, t[keep], w)
    vm.flush()
    lines = [HEADER]
    for i in range(400):
        start = T0 + float(rng.uniform(0, span - 3600))
        dur = float(np.clip(rng.lognormal(np.log(5400), 1.4), 60, 4 * DAY))
        width = 1 if rng.random() < 0.85 else int(rng.integers(2, 4))
        first = int(rng.integers(0, 5 - width + 1))
        nodelist = ",".join(nodes[first : first + width])
        cpus = int(rng.choice([1, 2, 4, 8])) * width
        lines.append(f"{1000 + i}|{1000 + i}|{start:.0f}|{start + dur:.0f}|{nodelist}|cpu={cpus}|p|a|u")
    lines.append("2000|2000|Unknown|Unknown|None assigned|cpu=1|p|a|u")
    lines.append(f"2001|2001|{T0 + 5 * DAY:.0f}|{T0 + 5 * DAY + 60:.0f}|{nodes[0]}")  # a bad line
    cfg = from_mapping({"victoriametrics": {"url": vm.url},
                        "nodes": [{"match": n, "cpus": 16, "idle_watts": 100, "max_watts": 300} for n in nodes]})
    return cfg, lines


class FlatPower:
    """100 W every 30 s on the given nodes, only inside the asked range (as VictoriaMetrics answers)."""

    def __init__(self, nodes):
        self.nodes = set(nodes)

    def fetch_power(self, nodes, start, end):
        t = np.arange(np.ceil(start / 30) * 30, end + 1e-9, 30.0)
        return {n: (t, np.full(t.size, 100.0)) for n in nodes if n in self.nodes}


def numbers_close(a, b, path=""):
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (path, a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            numbers_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            numbers_close(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("hours", [24.0, 5.0])
def test_streamed_equals_unstreamed_on_real_victoriametrics(weeks, hours):
    cfg, lines = weeks
    whole = Engine(cfg, VictoriaClient(cfg.victoriametrics), SlotIntensity())
    reference = {fp.job_id: fp.to_dict() for fp in whole.account(read_sacct(lines))}
    client = VictoriaClient(cfg.victoriametrics)
    engine = Engine(cfg, client, SlotIntensity())
    with TimeBuckets(lines, hours * 3600) as buckets:
        assert len(buckets.keys()) > 10
        streamed = [fp for b in engine.stream(buckets.windows(), (buckets.lo, buckets.hi), align=hours * 3600)
                    for fp in b.footprints()]
    got = {fp.job_id: fp.to_dict() for fp in streamed}
    assert got.keys() == reference.keys() and len(streamed) == len(got) == 402
    crossing = [fp for fp in streamed if fp.start is not None and fp.end is not None
                and fp.start // (hours * 3600) != fp.end // (hours * 3600)]
    assert len(crossing) > 50
    statuses = {d["status"] for d in got.values()}
    assert statuses == {"ok", "not-started", "error"}
    assert {d["method"] for d in got.values() if d["status"] == "ok"} >= {"measured", "mixed", "estimated"}
    for job_id, ref in reference.items():
        numbers_close(ref, got[job_id], job_id)
    # Window order: starts never go back; the unstarted job comes last, the bad line after its window.
    starts = [fp.start for fp in streamed if fp.start is not None]
    assert all(a // (hours * 3600) <= b // (hours * 3600) for a, b in zip(starts, starts[1:], strict=False))
    assert streamed[-1].status == "not-started"
    assert got["2001"]["error"] == "line 403: expected 9 fields, got 5"


def test_cache_holds_only_what_later_jobs_need():
    """A month of jobs on one node, a day at a time: samples held stay about a window, not the span."""
    power = FlatPower(["a"])
    cache = PowerCache(power.fetch_power, 300.0)
    held = []
    for d in range(30):
        lo = T0 + d * DAY
        cache.drop_before(lo - 300)
        cache.ensure({"a": (lo - 300, lo + DAY + 3600 + 300)})
        held.append(cache.samples_held)
        j, s = window(cache.trace("a"), np.array([lo + 10.0]), np.array([lo + DAY + 3600]))
        assert j[0] == pytest.approx(100 * (DAY + 3590)) and s[0] == pytest.approx(DAY + 3590)
    assert max(held) < 2.2 * DAY / 30
    assert cache.stats.samples < 1.1 * 30 * DAY / 30 + 3000


def test_busy_nodes_are_read_ahead_but_the_last_window_only_as_far_as_its_jobs():
    asked = []

    def fetch(nodes, lo, hi):
        asked.append((lo, hi))
        return FlatPower(["a"]).fetch_power(nodes, lo, hi)

    cache = PowerCache(fetch, 300.0, align=2 * DAY)  # chunk edges at T0 + 300 + 2k days
    b = T0 + DAY / 2
    cache.ensure({"a": (b - 300, b + 3600)})  # seen afresh: read exactly
    cache.ensure({"a": (b - 300, b + 7200)})  # busy: on to the chunk edge
    assert asked == [(b - 300, b + 3600), (b + 3600, T0 + 2 * DAY + 300)]
    cache.ensure({"a": (b + DAY, b + 3 * DAY)}, ahead=False)  # no window follows
    assert asked[-1] == (T0 + 2 * DAY + 300, b + 3 * DAY)

    engine = Engine(from_mapping({"nodes": [{"match": "a", "cpus": 4}]}), FlatPower(["a"]), SlotIntensity())
    ends = []
    engine.power = type("Recording", (), {"fetch_power": lambda _, n, lo, hi: ends.append(hi) or fetch(n, lo, hi)})()
    # Each job runs into the next day: the node stays busy and is read ahead, but not past the last job.
    lines = [HEADER] + [f"{i}|{i}|{T0 + i * DAY + 60:.0f}|{T0 + (i + 1) * DAY + 3600:.0f}|a|cpu=1|p|a|u" for i in range(4)]
    with TimeBuckets(lines, DAY) as buckets:
        assert len(list(engine.stream(buckets.windows(), (buckets.lo, buckets.hi), align=DAY))) == 4
    gap = engine.cfg.max_gap
    assert T0 + 3 * DAY < max(ends[:-1]) and max(ends) == T0 + 4 * DAY + 3600 + gap


def test_sparse_jobs_fetch_about_what_they_need():
    power = FlatPower([f"n{i}" for i in range(50)])
    cache = PowerCache(power.fetch_power, 300.0)
    rng = np.random.default_rng(1)
    need = 0.0
    for d in range(90):
        starts = T0 + d * DAY + np.sort(rng.uniform(0, DAY, 3))
        needs = {f"n{int(rng.integers(0, 50))}": (s - 300, s + 3600 + 300) for s in starts}
        need += sum(b - a for a, b in needs.values())
        cache.drop_before(T0 + d * DAY - 300)
        cache.ensure(needs)
    assert cache.stats.samples < 2 * need / 30


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.floats(0, 2e5), min_size=1, max_size=6),
    a=st.floats(0, 1e5), length=st.floats(1, 5e4), drops=st.lists(st.floats(0, 1e5), max_size=6),
)
def test_running_integral_carried_across_fetches_equals_one_trace(cuts, a, length, drops):
    """Appending samples in pieces (any cut points), dropping what lies before the job on the
    way (a drop is made with the next append), gives the energy of one trace of them all."""
    rng = np.random.default_rng(int(a) + len(cuts))
    t = np.sort(rng.uniform(0, 2e5, 3000))
    t = t[np.concatenate(([True], np.diff(t) > 1e-3))]
    w = rng.uniform(50, 500, t.size)
    whole = build_trace(t, w, 300.0)

    def fetch(nodes, lo, hi):
        keep = (t >= lo) & (t <= hi)
        return {"x": (t[keep], w[keep])}

    cache = PowerCache(fetch, 300.0, align=1.0)
    bounds = sorted(set(cuts + [2e5]))
    for k, hi in enumerate(bounds):
        cache.ensure({"x": (-1.0, hi)})
        if k < len(drops):
            cache.drop_before(min(drops[k], a) - 300.0)
    lo, hi = np.array([a]), np.array([min(a + length, 2e5)])
    ref_j, ref_s = window(whole, lo, hi)
    got_j, got_s = window(cache.trace("x"), lo, hi)
    assert got_j[0] == pytest.approx(ref_j[0], rel=1e-9, abs=1e-6)
    assert got_s[0] == pytest.approx(ref_s[0], rel=1e-9, abs=1e-6)


# -- segments: the same stream on several cores -----------------------------------------------
def _segment_engine(cfg, url=None):
    client = VictoriaClient(replace(cfg.victoriametrics, url=url) if url else cfg.victoriametrics)
    return Engine(cfg, client, SlotIntensity()), client


@pytest.mark.parametrize("to_file", [False, True])  # a file descriptor: segments are copied by sendfile
def test_segments_on_three_cores_write_the_sequential_lines_in_order(weeks, monkeypatch, tmp_path, to_file):
    """Segment boundaries cut through running jobs; every line still comes out once, in order,
    with the numbers of the single-process stream."""
    cfg, lines = weeks
    monkeypatch.setattr(segments, "SEGMENT_WINDOWS", 3)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    engine, _ = _segment_engine(cfg)
    with TimeBuckets(lines, DAY) as buckets:
        one = io.StringIO()
        write_json_batches(engine.stream(buckets.windows(), (buckets.lo, buckets.hi), align=DAY), one)
    sequential = [json.loads(x) for x in one.getvalue().splitlines()]
    on_disk = []
    emit = segments._emit

    def counting_emit(result, out, totals):
        on_disk.append(len(os.listdir(os.path.dirname(result.path))))
        emit(result, out, totals)

    monkeypatch.setattr(segments, "_emit", counting_emit)
    with TimeBuckets(lines, DAY) as buckets:
        assert len(segments.plan([buckets.counts[k] for k in buckets.keys()], 3)) == 9
        out = open(tmp_path.parent / f"{tmp_path.name}.out", "w+b") if to_file else io.BytesIO()  # noqa: SIM115
        with out:
            out.write(b'{"job_id":"written before"}\n')  # still buffered: it must stay first
            totals = segments.write_parallel(buckets, engine, lambda: _segment_engine(cfg), out, 3, DAY)
            out.flush()
            out.seek(0)
            first, *rest = out.read().decode().splitlines()
    assert json.loads(first) == {"job_id": "written before"}
    parallel = [json.loads(x) for x in rest]
    assert [d["job_id"] for d in parallel] == [d["job_id"] for d in sequential] and len(parallel) == 402
    for a, b in zip(sequential, parallel, strict=True):
        numbers_close(a, b, a["job_id"])
    assert totals.lines == 402
    assert totals.failures == sum(d["status"] == "error" for d in sequential) == 1
    assert totals.requests > 9 and totals.samples > 0
    assert len(on_disk) == 9 and max(on_disk) <= 3 + 1  # finished files waiting stay few
    assert list(tmp_path.iterdir()) == []  # and are gone


def test_a_worker_that_cannot_reach_victoriametrics_fails_the_run_and_leaves_nothing(weeks, monkeypatch, tmp_path):
    cfg, lines = weeks
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    engine, _ = _segment_engine(cfg)
    with socket.socket() as s:  # a port nobody listens on: connection refused, for real
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with TimeBuckets(lines, DAY) as buckets, pytest.raises(VictoriaError, match="unreachable"):
        segments.write_parallel(buckets, engine, lambda: _segment_engine(cfg, dead), io.BytesIO(), 2, DAY)
    assert list(tmp_path.iterdir()) == []


@given(st.lists(st.integers(0, 50), min_size=0, max_size=200), st.integers(1, 8), st.integers(1, 20))
def test_segments_cover_every_window_once_in_order(counts, workers, most):
    segs = segments.plan(counts, workers, most)
    n = len(counts)
    assert [a for a, _ in segs] == [0, *(b for _, b in segs[:-1])] if segs else n == 0
    assert (segs[-1][1] == n) if segs else True
    assert all(a < b for a, b in segs)
    assert len(segs) <= max(n, 0) and len(segs) <= workers * math.ceil(n / (workers * most)) if n else not segs


def test_a_worker_killed_mid_run_fails_the_run_at_once_and_leaves_nothing(weeks, monkeypatch, tmp_path):
    """SIGKILL (the OOM killer's signal) on the process accounting the third segment."""
    cfg, lines = weeks
    monkeypatch.setattr(segments, "SEGMENT_WINDOWS", 3)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    engine, _ = _segment_engine(cfg)
    built = multiprocessing.get_context("fork").Value("i", 0)

    def build():
        with built.get_lock():
            built.value += 1
            mine = built.value
        if mine == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return _segment_engine(cfg)

    def hung(*_):
        raise TimeoutError("write_parallel still waiting a minute after its worker died")

    before = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        with TimeBuckets(lines, DAY) as buckets, pytest.raises(CarbondError, match="died"):
            segments.write_parallel(buckets, engine, build, io.BytesIO(), 2, DAY)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    assert built.value >= 3
    assert list(tmp_path.iterdir()) == []
