"""Streamed accounting on every core: runs of consecutive windows (segments), each accounted whole
in a forked process, their JSON lines written out in input order.

Formatting batches in a pool of processes spent nearly as much CPU pickling batches and copying
text as it saved (the benchmark month on 2 cores: 12.6 CPU-s in one process, 19 with the pool).
A segment instead runs the whole pipeline (fetch, arithmetic, JSON) in one process and hands back
a file of finished lines. What parallelism then costs is the power two neighbouring segments both
read (the jobs of one that run on into the next) and one copy of the output.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from .errors import CarbondError

if TYPE_CHECKING:
    from .engine import Engine
    from .footprint import IntensityView
    from .jobs import TimeBuckets
    from .victoria import VictoriaClient

SEGMENT_WINDOWS = 16
"""About the most windows (days) in a segment. Fewer segments mean less power read twice (a
segment boundary costs about a day of the busy nodes: a month in 4 segments read 9 % more
samples than in 2, and took 7 % longer); more mean smaller temporary files."""


@dataclass
class Totals:
    """What the segments did, summed: lines written, jobs not accounted, requests, samples."""

    lines: int = 0
    failures: int = 0
    requests: int = 0
    samples: int = 0

    def add(self, other: Totals) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True)
class SegmentResult:
    path: str
    """The segment's JSON lines, waiting for their turn."""
    counts: Totals


def plan(counts: list[int], workers: int, most: int | None = None) -> list[tuple[int, int]]:
    """Windows [a, b) cut into consecutive segments of about equal jobs, a multiple of `workers`
    of them (the cores finish together) unless there are fewer windows, each about `most` windows."""
    n, most = len(counts), most or SEGMENT_WINDOWS
    if n == 0:
        return []
    k = min(n, max(1, workers) * math.ceil(n / (max(1, workers) * most)))
    cum = np.cumsum(np.asarray(counts, dtype=np.int64))
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, k) / k, side="left") + 1
    edges = sorted({0, n, *(int(c) for c in cuts if 0 < c < n)})
    return list(zip(edges[:-1], edges[1:], strict=True))


@dataclass
class _Shared:
    """What the forked workers inherit (nothing of it is pickled)."""

    buckets: TimeBuckets
    keys: list[int]
    view: IntensityView | None
    align: float
    tmp: str
    build: Callable[[], tuple[Engine, VictoriaClient]]


_SHARED: _Shared | None = None


def write_parallel(buckets: TimeBuckets, engine: Engine, build: Callable[[], tuple[Engine, VictoriaClient]],
                   out: BinaryIO, workers: int, align: float) -> Totals:
    """Every window of `buckets` accounted by `workers` processes; JSON lines to `out` in order.

    The intensity of the whole span is looked up once, here, so the workers share it; each
    worker builds its own engine with `build` (its own connections and cache handle: none is
    shared across a fork). At most one segment more than there are workers is done or under
    way, so the temporary files stay bounded whatever the span.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    global _SHARED
    keys = buckets.keys()
    segments = plan([buckets.counts.get(k, 0) for k in keys], workers)
    view = engine.intensity_view(*buckets.span) if buckets.span else None
    totals = Totals()
    tmp = tempfile.mkdtemp(prefix="carbond-segments-")
    _SHARED = _Shared(buckets, keys, view, align, tmp, build)
    try:
        # A process pool that notices a worker dying (the OOM killer, a signal): a lost segment
        # fails the run at once rather than leave it waiting for lines that never come.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        try:
            pending: deque = deque()
            for seg in segments:
                pending.append(pool.submit(_account, seg))
                while pending and (len(pending) > workers or pending[0].done()):
                    _emit(pending.popleft().result(), out, totals)
            while pending:
                _emit(pending.popleft().result(), out, totals)
        except BaseException:
            _stop(pool)  # an error or ^C: the other segments' work would be thrown away anyway
            raise
        pool.shutdown()
    except BrokenProcessPool:
        raise CarbondError("a process accounting a segment died (killed, or out of memory?): "
                           "no output after the last complete segment") from None
    finally:
        _SHARED = None
        shutil.rmtree(tmp, ignore_errors=True)
    return totals


def _stop(pool) -> None:
    """Kill the workers now (ProcessPoolExecutor would let every queued segment finish first)."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def _emit(result: SegmentResult, out: BinaryIO, totals: Totals) -> None:
    with open(result.path, "rb") as fh:
        _copy(fh, out)
    os.unlink(result.path)
    totals.add(result.counts)


def _copy(src: BinaryIO, out: BinaryIO) -> None:
    """src to out, in the kernel where out is a file descriptor: the last segment's copy is the
    run's serial tail (the month: ~100 MB, 0.4 CPU-s through Python's buffers)."""
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        fd = None
    if fd is not None:
        out.flush()
        size, sent = os.fstat(src.fileno()).st_size, 0
        try:
            while sent < size:
                n = os.sendfile(fd, src.fileno(), sent, size - sent)
                if n == 0:
                    break
                sent += n
            return
        except OSError:
            if sent:  # part of it is out already: going on from there is all that is left
                src.seek(sent)
                shutil.copyfileobj(src, out, 1 << 20)
                return
    shutil.copyfileobj(src, out, 1 << 20)


def _account(segment: tuple[int, int]) -> SegmentResult:
    """In a worker: one segment's windows accounted and written to a file of their own."""
    from .report import write_json_batches

    s = _SHARED
    assert s is not None, "segments: worker started without its shared state"
    engine, victoria = s.build()
    failures = 0

    def tally(batch):
        nonlocal failures
        failures += batch.failures()
        return batch

    windows = (s.buckets.table(k) for k in s.keys[segment[0] : segment[1]])
    path = os.path.join(s.tmp, f"{segment[0]:08d}.jsonl")
    with open(path, "wb") as out:
        lines = write_json_batches(map(tally, engine.stream(windows, view=s.view, align=s.align)), out)
    samples = engine.cache.stats.samples if engine.cache else 0
    return SegmentResult(path, Totals(lines, failures, victoria.requests_made, samples))
