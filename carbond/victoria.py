"""VictoriaMetrics client: raw node power for many nodes and long windows in few requests.

Power is read with `/api/v1/export` (raw samples, no resampling), one request per group of
nodes and time chunk, so the number of requests grows with nodes and time, never with jobs.
A month of 200 nodes at 30 s is 17 M samples, so the export lines are not fed to `json`:
the `values` and `timestamps` arrays of each line are sliced out and parsed by numpy, with
a plain-JSON fallback whenever the fast path's sanity checks fail.

Nothing in an answer is trusted: a request has a total deadline (`timeout`), an export line and
a whole answer have size limits (`max_line_bytes`, `max_response_bytes`), and a power sample that
is not finite, is negative or exceeds a node's bound (`max_watts`, or 10x its class' max_watts)
is dropped and counted in `dropped_samples`, so the job's coverage shows the hole.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from .config import VictoriaConfig, read_secret
from .energy import counter_ms
from .errors import VictoriaError
from .httpconn import Connections, DeadlineExceeded, Failure, basic_auth, read_capped
from .node_regex import label_pattern, node_regex_problem  # noqa: F401 - node_regex_problem: this module's API

if TYPE_CHECKING:
    from .config import Config

TOKEN_ENV = "CARBOND_VM_BEARER_TOKEN"
CONCURRENCY = 2
"""Export requests in flight. Each response is parsed while it streams in, so even one stream
overlaps VictoriaMetrics' encoding with our parsing; the second hides request latency and
network time (measured on 2 cores beside VM: same wall time, +8% CPU, +30 MB RSS)."""
MAX_POINTS = 30000
"""VictoriaMetrics refuses query_range answers with more points per series than this."""
READ_SIZE = 1 << 20
MAX_LINE_BYTES = VictoriaConfig.max_line_bytes
MAX_RESPONSE_BYTES = VictoriaConfig.max_response_bytes
FALLBACK_BYTES = 1 << 20
"""Longest line the plain-JSON fallback reads: json builds ~25x the text in Python objects (a
16 MB line of [0],[0],... cost 390 MB), so a longer line the fast path refuses is an error."""
CLASS_FACTOR = 10.0
"""A node's power sample above this many times its class' max_watts is no measurement."""

_RE2_META = re.compile(r"([\\.+*?()|\[\]{}^$])")

PowerSeries = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class _Task:
    """One export request: a group of nodes over [start_ms, end_ms] (both inclusive)."""

    chunk: int
    chunks: int
    nodes: tuple[str, ...]
    start_ms: int
    end_ms: int


class VictoriaClient:
    """Reads power and other series from a VictoriaMetrics (single node or cluster vmselect)."""

    def __init__(self, cfg: VictoriaConfig, max_watts: Callable[[str], float] | None = None) -> None:
        self.cfg = cfg
        self.requests_made = 0
        self.dropped_samples = 0
        """Power samples refused (not finite, negative, above the node's bound) since the start."""
        self.max_watts = max_watts or (lambda node: cfg.max_watts)
        """node -> the largest plausible sample in watts (see `power_bound`)."""
        self.on_response: Callable[[], None] | None = None
        """Called as each answer arrives (the daemon's watchdog counts it as progress)."""
        self._lock = threading.Lock()
        self._url = _redact(cfg.url.rstrip("/"))
        base = cfg.url.rstrip("/")
        if cfg.tenant:
            base += f"/select/{cfg.tenant}/prometheus"
        self._base = base
        self._secrets: list[str] = []
        # gzip: 3x fewer bytes but +1.5 s VM CPU and +2.9 s to inflate 17 M samples; not worth it
        self._headers = {"Accept-Encoding": "identity"}
        try:
            self._http = Connections(base, cfg.timeout, cfg.ca_file)
        except ValueError as exc:
            raise VictoriaError(f"victoriametrics.url {self._url!r}: {exc}") from None
        self._load_credentials()
        self.names = NodeNames(cfg.node_label, cfg.node_regex)

    def _load_credentials(self) -> None:
        cfg = self.cfg
        try:
            token = read_secret(cfg.bearer_token_file, env=TOKEN_ENV)
            password = read_secret(cfg.basic_auth.password_file) if cfg.basic_auth else None
        except OSError as exc:
            raise VictoriaError(f"{self._url}: cannot read a credential file: {exc.filename}") from None
        # One Authorization header: basic_auth, else user:password in the URL, else the token.
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
            self._secrets.append(token)
        userinfo = self._http.userinfo
        if userinfo:
            self._headers["Authorization"] = basic_auth(*userinfo)
            self._secrets.extend(x for x in (userinfo[1], urlsplit(cfg.url).password) if x)
        if cfg.basic_auth:
            self._headers["Authorization"] = basic_auth(cfg.basic_auth.username, password or "")
            if password:
                self._secrets.append(password)

    # -- power ------------------------------------------------------------------------------
    def fetch_power(self, nodes: Sequence[str], start: float, end: float) -> PowerSeries:
        """node -> (t seconds ascending unique, watts): raw samples in [start, end]."""
        tasks = self._tasks(nodes, start, end)
        if not tasks:
            return {}
        series: dict[str, _Series] = {}
        for task, got in self._run(tasks):  # in time order
            for node, (t, w) in got.items():
                if node not in series:
                    series[node] = _Series(len(t) * (task.chunks - task.chunk))
                series[node].append(t, w)
            del got
        return {node: s.finish() for node, s in series.items()}

    def _tasks(self, nodes: Sequence[str], start: float, end: float) -> list[_Task]:
        names = list(dict.fromkeys(nodes))
        lo, hi = math.ceil(start * 1000), math.floor(end * 1000)
        if not names or hi < lo:
            return []
        step_ms = self.cfg.chunk_seconds * 1000
        per = max(1, self.cfg.max_nodes_per_request)
        groups = [tuple(names[i : i + per]) for i in range(0, len(names), per)]
        # The last chunk takes a tail of up to 1 ms rather than make a request of its own:
        # callers ask for whole chunks with both ends inclusive.
        edges = range(lo, max(lo + 1, hi), step_ms)
        last = len(edges) - 1
        return [_Task(c, len(edges), g, a, hi if c == last else a + step_ms - 1)
                for c, a in enumerate(edges) for g in groups]

    def _run(self, tasks: list[_Task]) -> Iterator[tuple[_Task, dict[str, tuple[np.ndarray, np.ndarray]]]]:
        if len(tasks) == 1 or CONCURRENCY <= 1:
            for task in tasks:
                yield task, self._export(task)
            return
        with ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="carbond-vm") as pool:
            yield from zip(tasks, pool.map(self._export, tasks), strict=True)

    def _export(self, task: _Task) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """One export request, parsed while it streams in: node -> (t ms int64, watts)."""
        form = {
            "match[]": self.selector(task.nodes),
            "start": _ms_to_s(task.start_ms),
            "end": _ms_to_s(task.end_ms),
        }
        wanted, scale = set(task.nodes), self.cfg.scale
        out: dict[str, dict[tuple, list[tuple[np.ndarray, np.ndarray]]]] = {}
        with self._post("/api/v1/export", form) as resp:
            for line in self._lines(resp):
                metric, t, w, dropped = parse_export_counted(line)
                node = self.names.node(metric)
                # a node_regex selector may also match other nodes' names that share a prefix
                if node is None or node not in wanted:
                    continue
                w = w * scale if scale != 1.0 else w
                if self.cfg.kind == "counter":  # joules since some start -> the power between samples
                    t, w = counter_ms(t, w, math.inf)  # gaps: max_gap, when the trace is built
                t, w, over = _bounded(t, w, self.max_watts(node))
                self.count_dropped(dropped + over)
                if len(t):
                    out.setdefault(node, {}).setdefault(tuple(sorted(metric.items())), []).append((t, w))
        return {n: _one_series(n, by_labels, self.cfg.query) for n, by_labels in out.items()}

    def count_dropped(self, n: int) -> None:
        if n:
            with self._lock:
                self.dropped_samples += n

    def _lines(self, resp: http.client.HTTPResponse) -> Iterator[bytes]:
        return _lines(resp, self._url, self.cfg.max_line_bytes, self.cfg.max_response_bytes)

    def selector(self, nodes: Sequence[str]) -> str:
        """The configured selector restricted to `nodes` by an anchored regex on the node label."""
        return add_matcher(self.cfg.query, self.names.matcher(nodes))

    # -- other queries ----------------------------------------------------------------------
    def query_range(self, query: str, start: float, end: float, step: float) -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
        """(labels, t seconds, values) per series; split so no answer exceeds VM's point limit."""
        if step <= 0:
            raise ValueError("step must be positive")
        span = step * (MAX_POINTS - 1)
        series: dict[tuple[tuple[str, str], ...], list[tuple[np.ndarray, np.ndarray]]] = {}
        a = start
        while a <= end:
            b = min(a + span, end)
            form = {"query": query, "start": _fmt(a), "end": _fmt(b), "step": _fmt(step), "nocache": "1"}
            for labels, t, v in self._matrix(form):
                series.setdefault(tuple(sorted(labels.items())), []).append((t, v))
            a = b + step
        out = []
        for key, parts in series.items():
            t, v = _concat(parts)
            t, keep = np.unique(t, return_index=True)
            out.append((dict(key), t, v[keep]))
        return out

    def _matrix(self, form: dict[str, str]) -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
        data = self._json("/api/v1/query_range", form)
        kind, result = data.get("resultType"), data.get("result")
        if kind not in ("scalar", "string", "vector", "matrix"):
            raise VictoriaError(f"{self._url}: unexpected resultType {kind!r} from /api/v1/query_range")
        try:
            if kind == "scalar" or kind == "string":
                result = [{"metric": {}, "values": [result]}]
            elif kind == "vector":
                result = [{"metric": r.get("metric", {}), "values": [r["value"]]} for r in result]
            return [(_labels(r.get("metric", {})), _floats(r.get("values") or [], 0), _floats(r.get("values") or [], 1))
                    for r in result]
        except (TypeError, ValueError, AttributeError, IndexError, KeyError, OverflowError):
            raise VictoriaError(f"{self._url}: malformed series in the answer of /api/v1/query_range") from None

    def latest_sample(self, nodes: Sequence[str], since: float) -> dict[str, float]:
        """node -> time of its newest sample at or after `since` (the daemon waits for data past a job's end)."""
        names = list(dict.fromkeys(nodes))
        at = max(time.time(), since) + 60  # a little ahead: tolerate clocks that differ slightly
        window = math.ceil(at - since) + 1
        per = max(1, self.cfg.max_nodes_per_request)
        wanted = set(names)
        found: dict[str, float] = {}
        for i in range(0, len(names), per):
            sel = self.selector(names[i : i + per])
            # nocache=1: otherwise VM hides the last -search.latencyOffset (30 s) of data
            form = {"query": f"tlast_over_time({sel}[{window}s])", "time": _fmt(math.floor(at)), "nocache": "1"}
            data = self._json("/api/v1/query", form)
            try:
                for r in data.get("result") or []:
                    node, ts = self.names.node(_labels(r.get("metric", {}))), float(r["value"][1])
                    if node in wanted and math.isfinite(ts) and ts >= since and ts > found.get(node, -math.inf):
                        found[node] = ts
            except (TypeError, ValueError, AttributeError, IndexError, KeyError, OverflowError):
                raise VictoriaError(f"{self._url}: malformed series in the answer of /api/v1/query") from None
        return found

    # -- HTTP -------------------------------------------------------------------------------
    @contextmanager
    def _post(self, path: str, form: dict[str, str]) -> Iterator[http.client.HTTPResponse]:
        """POST a form (selectors for hundreds of nodes do not fit in a URL); a 200 answer, to read."""
        with self._lock:
            self.requests_made += 1
        try:
            with self._http.post(path, form, self._headers) as resp:
                if self.on_response is not None:
                    self.on_response()
                if resp.status != 200:
                    body = self._scrub(resp.read(300).decode("utf-8", "replace").strip())
                    hint = " (authentication refused)" if resp.status in (401, 403) else ""
                    raise VictoriaError(f"VictoriaMetrics at {self._where(path)} answered HTTP {resp.status}{hint}: {body}")
                yield resp
        except DeadlineExceeded as exc:
            raise VictoriaError(f"VictoriaMetrics at {self._where(path)}: {exc} (victoriametrics.timeout)") from None
        except Failure as exc:
            raise VictoriaError(f"VictoriaMetrics at {self._where(path)} unreachable: {self._scrub(_why(exc))}") from None

    def _json(self, path: str, form: dict[str, str]) -> dict:
        limit = self.cfg.max_line_bytes
        with self._post(path, form) as resp:
            try:
                body = read_capped(resp.read, limit, "answer", READ_SIZE)
            except ValueError as exc:
                raise VictoriaError(f"VictoriaMetrics at {self._where(path)}: {exc} "
                                    "(victoriametrics.max_line_bytes)") from None
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise VictoriaError(f"VictoriaMetrics at {self._where(path)} sent invalid JSON") from None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            what = doc.get("error", doc) if isinstance(doc, dict) else doc
            raise VictoriaError(f"VictoriaMetrics at {self._where(path)}: {self._scrub(str(what)[:300])}")
        data = doc.get("data") or {}
        if not isinstance(data, dict):
            raise VictoriaError(f"VictoriaMetrics at {self._where(path)}: 'data' is not an object")
        return data

    def _where(self, path: str) -> str:
        return _redact(self._base) + path

    def _scrub(self, what: object) -> str:
        text = str(what)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


# -- node names -----------------------------------------------------------------------------
class NodeNames:
    """Slurm node names <-> values of the node label, as exporters label their series.

    Without a regex the label's value is the node name. With one (a group named `node`), the
    name is what the group captures, and the selector becomes that same regex with the group
    replaced by the escaped candidate names, so VictoriaMetrics still returns only their series
    (plus any whose name merely starts like one, which `node()` then sorts out).
    """

    def __init__(self, label: str, regex: str | None = None) -> None:
        self.label = label
        self.regex = regex
        self._re = re.compile(regex) if regex else None

    def node(self, metric: dict[str, str]) -> str | None:
        value = metric.get(self.label)
        if not isinstance(value, str) or self._re is None:
            return value if isinstance(value, str) else None
            return value
        m = self._re.search(value)
        return m.group("node") if m else None

    def matcher(self, nodes: Sequence[str]) -> str:
        alternatives = "|".join(_RE2_META.sub(r"\\\1", n) for n in nodes)
        if self.regex is None:
            return f"{self.label}=~{_promql_string(alternatives)}"
        return f"{self.label}=~{_promql_string(label_pattern(self.regex, alternatives))}"


# -- selector -------------------------------------------------------------------------------
def add_matcher(selector: str, matcher: str) -> str:
    """Merge one label matcher into a series selector: `m`, `m{}`, `m{a="b"}` or `{__name__="m"}`."""
    sel = selector.strip()
    if not sel.endswith("}"):
        if not _METRIC_NAME.fullmatch(sel):
            raise VictoriaError(f"victoriametrics.query must be a series selector, got {selector!r}")
        return f"{sel}{{{matcher}}}"
    open_at, close_at = _braces(sel)
    if close_at != len(sel) - 1 or not (open_at == 0 or _METRIC_NAME.fullmatch(sel[:open_at].strip())):
        raise VictoriaError(f"victoriametrics.query must be a series selector, got {selector!r}")
    inner = sel[open_at + 1 : -1].strip().rstrip(",").strip()
    return f"{sel[:open_at].strip()}{{{inner + ',' if inner else ''}{matcher}}}"


_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:.]*")


def _braces(sel: str) -> tuple[int, int]:
    """Positions of the first `{` and its `}`, skipping braces inside quoted label values."""
    quote, escaped, open_at = "", False, -1
    for i, ch in enumerate(sel):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch == "{" and open_at < 0:
            open_at = i
        elif ch == "}" and open_at >= 0:
            return open_at, i
    return -1, -1


def _promql_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# -- export parsing -------------------------------------------------------------------------
def _lines(resp: http.client.HTTPResponse, url: str, max_line: int = MAX_LINE_BYTES,
           max_total: int = MAX_RESPONSE_BYTES) -> Iterator[bytes]:
    """Complete non-blank lines of a streamed body (stripped), read in large blocks; a line or a
    body over its limit is a VictoriaError as soon as the limit is passed (never held whole)."""
    tail: list[bytes] = []
    held = total = 0  # bytes in tail; bytes read
    try:
        while block := resp.read(READ_SIZE):
            total += len(block)
            if total > max_total:
                raise VictoriaError(f"VictoriaMetrics at {url}: export answer larger than {max_total} bytes "
                                    "(victoriametrics.max_response_bytes; or lower chunk_seconds, max_nodes_per_request)")
            start = 0
            if tail:
                nl = block.find(b"\n")
                if nl < 0:
                    held += len(block)
                    _check_line(held, max_line, url)
                    tail.append(block)
                    continue
                _check_line(held + nl, max_line, url)
                tail.append(block[:nl])
                if line := b"".join(tail).strip():
                    yield line
                tail, held, start = [], 0, nl + 1
            while (nl := block.find(b"\n", start)) >= 0:
                _check_line(nl - start, max_line, url)
                if nl > start and (line := block[start:nl].strip()):
                    yield line
                start = nl + 1
            if start < len(block):
                held = len(block) - start
                _check_line(held, max_line, url)
                tail.append(block[start:])
    except Failure as exc:
        raise VictoriaError(f"VictoriaMetrics at {url}: export interrupted: {type(exc).__name__}") from None
    if rest := b"".join(tail).strip():
        yield rest


def _check_line(size: int, limit: int, url: str) -> None:
    if size > limit:
        raise VictoriaError(f"VictoriaMetrics at {url}: an export line is longer than {limit} bytes "
                            "(victoriametrics.max_line_bytes)")


def _bounded(t: np.ndarray, w: np.ndarray, upper: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(t, w) without the samples above `upper`, and how many those were."""
    over = w > upper
    n = int(np.count_nonzero(over))
    return (t[~over], w[~over], n) if n else (t, w, 0)


def parse_export_line(line: bytes, max_value: float = math.inf) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    """(labels, t ms int64, values float64) of one export line; values that are not finite, are
    negative or exceed `max_value` are dropped (no power, no intensity is ever below zero).

    A line that is not an export line (not JSON, labels not all strings, lengths that differ)
    is a VictoriaError."""
    metric, t, w, _ = parse_export_counted(line, max_value)
    return metric, t, w


def parse_export_counted(line: bytes, max_value: float = math.inf
                         ) -> tuple[dict[str, str], np.ndarray, np.ndarray, int]:
    """parse_export_line, and how many samples it dropped."""
    line = line.strip()
    try:
        parsed = _fast_line(line)
    except (ValueError, RecursionError):
        parsed = None
    if parsed is None and len(line) > FALLBACK_BYTES:
        raise VictoriaError(f"cannot parse a VictoriaMetrics export line of {len(line)} bytes: {line[:120]!r}...")
    metric, t, w = parsed if parsed is not None else _json_line(line)
    if not isinstance(metric, dict) or not all(isinstance(v, str) for v in metric.values()):
        raise VictoriaError(f"VictoriaMetrics export line whose labels are not all strings: {line[:120]!r}...")
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(w) & (w >= 0) & (w <= max_value)
    dropped = len(w) - int(np.count_nonzero(keep))
    if dropped:
        t, w = t[keep], w[keep]
    return metric, t, w, dropped


def _fast_line(line: bytes) -> tuple[dict[str, str], np.ndarray, np.ndarray] | None:
    """Slice the two arrays out of the line and let numpy read them; None if anything looks off."""
    head = b'{"metric":'
    i = line.find(b'"values":[')
    j = line.rfind(b'],"timestamps":[')
    if not line.startswith(head) or not line.endswith(b"]}") or i < 0 or j < i:
        return None
    metric = json.loads(line[len(head) : i].rstrip().rstrip(b","))
    t = _parse_times(line[j + 16 : -2])
    if t is None or not isinstance(metric, dict):
        return None
    w = _parse_values(line[i + 10 : j], len(t))
    return None if w is None else (metric, t, w)


def _count(text: bytes) -> int:
    return text.count(b",") + 1 if text.strip() else 0


def _parse_times(text: bytes) -> np.ndarray | None:
    """Millisecond timestamps; 13 digits each since 2001, which makes the length a free check.

    (A (n, 14) byte-matrix product is ~30% faster single-threaded, but OpenBLAS threads make it
    slower beside VictoriaMetrics on a small host; numpy's text reader is the steadier choice.)
    """
    try:
        arr = np.fromstring(text, dtype=np.int64, sep=",")
    except ValueError:
        return None
    ok = len(text) + 1 == 14 * len(arr) or len(arr) == _count(text)
    return arr if ok else None


def _parse_values(text: bytes, n: int) -> np.ndarray | None:
    """Integers parse ~5x faster than floats in numpy, and power meters mostly report integers."""
    if b"." not in text:
        try:
            arr = np.fromstring(text, dtype=np.int64, sep=",")
        except ValueError:
            arr = None
        if arr is not None and len(arr) == n and (n == 0 or -(2**53) < arr.min() and arr.max() < 2**53):
            return arr.astype(np.float64)
    try:
        arr = np.fromstring(text, dtype=np.float64, sep=",")
    except ValueError:
        # NaN/Inf as old (NaN, +Inf) or new (null, "Infinity") VictoriaMetrics versions spell them
        text = text.replace(b"null", b"nan").replace(b'"', b"")
        try:
            arr = np.fromstring(text, dtype=np.float64, sep=",")
        except ValueError:
            arr = None
    if arr is not None and len(arr) == n:
        return arr
    arr = _parse_tokens(text) if len(text) <= FALLBACK_BYTES else None  # one Python object per token
    return arr if arr is not None and len(arr) == n else None


def _parse_tokens(text: bytes) -> np.ndarray | None:
    """Slow, exact path for anything numpy would not read: one Python float per token."""
    try:
        return np.array([_token(tok) for tok in text.split(b",")] if text.strip() else [], dtype=np.float64)
    except ValueError:
        return None


def _token(tok: bytes) -> float:
    tok = tok.strip().strip(b'"')
    return math.nan if tok in (b"null", b"") else float(tok)


def _json_line(line: bytes) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    """Plain JSON fallback; also reads VM's bare NaN/+Inf/-Inf, which strict JSON lacks."""
    text = re.sub(rb"(?<=[\[,])\s*([+-]?Inf|NaN)\s*(?=[,\]])", rb'"\1"', line)
    try:
        doc = json.loads(text)
        metric = doc["metric"]
        t = np.array([_ms(x) for x in doc["timestamps"]], dtype=np.int64)
        w = np.array([_value(x) for x in doc["values"]], dtype=np.float64)
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError, IndexError):
        raise VictoriaError(f"cannot parse a VictoriaMetrics export line: {line[:120]!r}...") from None
    if len(t) != len(w):
        raise VictoriaError(f"VictoriaMetrics export line with {len(t)} timestamps but {len(w)} values")
    return metric, t, w


def _ms(x: object) -> int:
    """A millisecond timestamp: a JSON integer within int64 (not a float, a string or a bool)."""
    if type(x) is not int or not -(2**63) <= x < 2**63:
        raise ValueError(f"timestamp {x!r}")
    return x


def _value(x: object) -> float:
    """A sample: a number, or VM's spellings of NaN/Inf (null, "NaN", "+Inf", "Infinity")."""
    if x is None:
        return math.nan
    if isinstance(x, str):
        return _token(x.encode())
    if type(x) not in (int, float):
        raise ValueError(f"value {x!r}")
    try:
        return float(x)
    except OverflowError:
        return math.inf  # dropped as not finite


def _labels(metric: object) -> dict[str, str]:
    if not isinstance(metric, dict) or not all(isinstance(v, str) for v in metric.values()):
        raise TypeError("labels are not all strings")
    return dict(metric)


def _floats(pairs: object, i: int) -> np.ndarray:
    """Column `i` of [[t, "v"], ...] as float64 (a Prometheus API matrix)."""
    if not isinstance(pairs, list):
        raise TypeError("values are not a list")
    return np.array([float(p[i]) for p in pairs], dtype=np.float64)


def power_bound(cfg: Config) -> Callable[[str], float]:
    """node -> the largest plausible power sample: CLASS_FACTOR x its class' max_watts when the
    configuration knows it, never above victoriametrics.max_watts."""
    cap = cfg.victoriametrics.max_watts
    known: dict[str, float] = {}

    def bound(node: str) -> float:
        if node not in known:
            nc = cfg.node_class(node)
            known[node] = min(cap, CLASS_FACTOR * nc.max_watts) if nc is not None and nc.max_watts else cap
        return known[node]

    return bound


# -- assembling -----------------------------------------------------------------------------
def _one_series(node: str, by_labels: dict[tuple, list[tuple[np.ndarray, np.ndarray]]], query: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """A node's samples. Series that follow one another (a label changed over time) are joined;
    series that overlap in time (two PSUs, two PowerControl entries) would be mixed sample by
    sample into a wrong number, so that is an error naming them."""
    parts = [_concat(p) for p in by_labels.values()]
    if len(parts) > 1:
        spans = sorted((int(t.min()), int(t.max()), i) for i, (t, _) in enumerate(parts))
        for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:], strict=False):
            if start_b <= end_a:
                labels = [dict(k) for k in by_labels]
                raise VictoriaError(
                    f"victoriametrics.query {query!r} matches {len(parts)} series for node {node} at the same time "
                    f"({labels[a]} and {labels[b]}): narrow it to one series per node (etc/power-sources/README.md)")
    return _concat(parts)


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class _Series:
    """One node's samples, appended chunk by chunk into one growing buffer.

    Each chunk's small arrays are freed as soon as they are copied, so their heap space is
    reused by the next chunk instead of sitting beside the final arrays (which, when built
    by concatenation at the end, cost ~40% more peak RSS for a month of 200 nodes).
    """

    def __init__(self, capacity: int) -> None:
        cap = capacity + capacity // 16 + 16
        self.t = np.empty(cap, dtype=np.float64)
        self.w = np.empty(cap, dtype=np.float64)
        self.n = 0

    def append(self, t_ms: np.ndarray, w: np.ndarray) -> None:
        end = self.n + len(t_ms)
        if end > len(self.t):
            cap = max(end, 2 * len(self.t))
            self.t = _grow(self.t, self.n, cap)
            self.w = _grow(self.w, self.n, cap)
        np.divide(t_ms, 1000.0, out=self.t[self.n : end])
        self.w[self.n : end] = w
        self.n = end

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """(t ascending unique, watts); of equal times the first received wins."""
        t, w = self.t[: self.n], self.w[: self.n]
        self.t = self.w = np.empty(0)
        if len(t) > 1 and not (np.diff(t) > 0).all():
            order = np.argsort(t, kind="stable")
            t, w = t[order], w[order]
            first = np.empty(len(t), dtype=bool)
            first[0] = True
            np.not_equal(t[1:], t[:-1], out=first[1:])
            return t[first], w[first]
        if len(t.base) - len(t) > len(t) // 8:  # type: ignore[arg-type]
            return t.copy(), w.copy()
        return t, w


def _grow(a: np.ndarray, n: int, cap: int) -> np.ndarray:
    out = np.empty(cap, dtype=a.dtype)
    out[:n] = a[:n]
    return out


# -- small helpers --------------------------------------------------------------------------
def _why(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _ms_to_s(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def _fmt(x: float) -> str:
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


def _redact(url: str) -> str:
    """The URL without any user:password@ part, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
