"""Node power for the streaming engine: fetched as windows of jobs need it, dropped when none will.

Each node keeps its samples over the stretch of time still needed, with its running integrals
(joules and covered seconds) carried on as samples are appended, so E(b) - E(a) over a job is
the same as on one trace of the whole span (the unstreamed engine), up to float rounding.

Why the energy is exact: a window [a, b] only reads the samples that bracket a and b and the
segments between them. Every fetch covers [first job start - max_gap, last job end + max_gap],
so a bracketing sample outside it would lie more than max_gap away, and that segment is not
bridged either way (it adds nothing). Dropping keeps the last sample at or before the drop point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .energy import Trace, build_trace

MAX_PIECES = 16

Fetch = Callable[[Sequence[str], float, float], dict[str, tuple[np.ndarray, np.ndarray]]]


@dataclass
class _Node:
    t: np.ndarray
    w: np.ndarray
    cum_j: np.ndarray
    cum_s: np.ndarray
    lo: float
    """Samples from lo to hi are all here (both fetched bounds)."""
    hi: float
    k: int = 0
    """Samples before index k are dropped, but not yet cut off: the cut is made with the next
    append, in the same copy (a busy node is cut and extended every window)."""

    def cut(self) -> None:
        """Make a pending drop: re-based at the kept bracket, differences unchanged, magnitudes small."""
        k = self.k
        if k > 0:
            self.t, self.w = self.t[k:].copy(), self.w[k:].copy()
            self.cum_j, self.cum_s = _rebased(self.cum_j, k, _NONE), _rebased(self.cum_s, k, _NONE)
            self.k = 0


@dataclass
class FetchStats:
    calls: int = 0
    samples: int = 0
    node_ranges: int = 0


@dataclass
class PowerCache:
    fetch: Fetch
    max_gap: float
    align: float = 86400.0
    """A busy node (its stretch extended again) is read ahead to the next multiple of `align`,
    so a dense cluster's nodes share requests; a node seen afresh is read exactly (sparse jobs)."""
    waste: float = 1.5
    """Nodes share one request when its span x nodes stays within this factor of what they need."""
    concurrency: int = 4
    """Requests in flight when a window needs many small ones."""
    stats: FetchStats = field(default_factory=FetchStats)
    _nodes: dict[str, _Node] = field(default_factory=dict)

    def ensure(self, needs: dict[str, tuple[float, float]], ahead: bool = True) -> None:
        """Make [lo, hi] (max_gap included by the caller) of each node available; a busy node's
        stretch is read ahead to the chunk edge unless `ahead` is false (no window follows)."""
        pieces: list[tuple[float, float, str]] = []
        for node, (lo, hi) in needs.items():
            st = self._nodes.get(node)
            if st is None or lo > st.hi or lo < st.lo:
                a, b = lo, hi
            elif hi > st.hi:
                a, b = st.hi, max(hi, self._ahead(hi)) if ahead else hi
            else:
                continue
            pieces.extend((x, y, node) for x, y in self._pieces(a, b))
        groups = _groups(pieces, self.waste)
        for (a, b, nodes), got in zip(groups, self._fetch_all(groups), strict=True):
            self.stats.calls += 1
            self.stats.node_ranges += len(nodes)
            for node in dict.fromkeys(nodes):
                t, w = got.get(node, (np.zeros(0), np.zeros(0)))
                self.stats.samples += len(t)
                self._add(node, np.asarray(t, dtype=np.float64), np.asarray(w, dtype=np.float64), a, b, needs[node])

    def _ahead(self, hi: float) -> float:
        """The chunk edge at or after `hi` (edges are multiples of `align`, shifted by max_gap)."""
        return -(-(hi - self.max_gap) // self.align) * self.align + self.max_gap

    def _pieces(self, a: float, b: float) -> Iterator[tuple[float, float]]:
        """[a, b] cut at the chunk edges: nodes needing the same chunk then share one request.
        At most `MAX_PIECES` (a tiny `align` would cut a long range into too many)."""
        for _ in range(MAX_PIECES - 1):
            edge = self._ahead(a)
            edge = edge + self.align if edge <= a else edge
            if edge >= b:
                break
            yield a, edge
            a = edge
        yield a, b

    def _fetch_all(self, groups: list[tuple[float, float, list[str]]]) -> Iterator[dict]:
        """The groups' samples in order; several small requests in flight (sparse jobs make many)."""
        if len(groups) < 4 or self.concurrency <= 1:
            yield from (self.fetch(nodes, a, b) for a, b, nodes in groups)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="carbond-power") as pool:
            yield from pool.map(lambda g: self.fetch(g[2], g[0], g[1]), groups)

    def _add(self, node: str, t: np.ndarray, w: np.ndarray, a: float, b: float, need: tuple[float, float]) -> None:
        st = self._nodes.get(node)
        if st is None or need[0] > st.hi or need[0] < st.lo or a > st.hi or st.t.size == 0:
            tr = build_trace(t, w, self.max_gap)
            lo = a if st is None or a > st.hi or need[0] < st.lo else min(a, st.lo)
            if tr.t.size == 0:
                self._nodes[node] = _Node(tr.t, tr.w, np.zeros(0), np.zeros(0), lo, b)
            else:
                self._nodes[node] = _Node(tr.t, tr.w, tr.cum_j, tr.cum_s, lo, b)
            return
        t, w = t[t > st.t[-1]], w[t > st.t[-1]]
        if t.size:
            tr = build_trace(np.concatenate(([st.t[-1]], t)), np.concatenate(([st.w[-1]], w)), self.max_gap)
            k = st.k  # the pending drop, made in the same copy (the same numbers as cut() then append)
            st.t = np.concatenate((st.t[k:], tr.t[1:]))
            st.w = np.concatenate((st.w[k:], tr.w[1:]))
            st.cum_j = _rebased(st.cum_j, k, tr.cum_j[1:])
            st.cum_s = _rebased(st.cum_s, k, tr.cum_s[1:])
            st.k = 0
        st.hi = max(st.hi, b)

    def trace(self, node: str) -> Trace | None:
        st = self._nodes.get(node)
        if st is None or st.t.size == 0:
            return None
        st.cut()
        return Trace(st.t, st.w, st.cum_j, st.cum_s, self.max_gap)

    def drop_before(self, when: float) -> None:
        """No job will read before `when` (max_gap included): free what lies before it."""
        for node in list(self._nodes):
            st = self._nodes[node]
            if st.hi < when:
                del self._nodes[node]
                continue
            k = int(np.searchsorted(st.t, when, side="right")) - 1
            if k > st.k:
                st.k = k
                st.lo = max(st.lo, when)

    @property
    def samples_held(self) -> int:
        return sum(st.t.size - st.k for st in self._nodes.values())


_NONE = np.zeros(0)


def _rebased(cum: np.ndarray, k: int, more: np.ndarray) -> np.ndarray:
    """(cum[k:] - cum[k]) followed by its last value + more, in one new array."""
    out = np.empty(cum.size - k + more.size)
    base = cum[k]
    np.subtract(cum[k:], base, out=out[: cum.size - k])
    np.add(cum[-1] - base, more, out=out[cum.size - k :])
    return out


def _groups(ranges: Iterable[tuple[float, float, str]], waste: float) -> list[tuple[float, float, list[str]]]:
    """Node ranges merged into shared requests while span x nodes <= waste x the sum of needs."""
    out: list[tuple[float, float, list[str]]] = []
    cur: list[str] = []
    lo = hi = need = 0.0
    for a, b, node in sorted(ranges):
        if cur:
            nlo, nhi = min(lo, a), max(hi, b)
            if (nhi - nlo) * (len(cur) + 1) <= waste * (need + (b - a)):
                cur.append(node)
                lo, hi, need = nlo, nhi, need + (b - a)
                continue
            out.append((lo, hi, cur))
        cur, lo, hi, need = [node], a, b, b - a
    if cur:
        out.append((lo, hi, cur))
    return out
