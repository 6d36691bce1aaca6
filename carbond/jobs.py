"""Jobs as carbond sees them, and the reader for `sacct -P` tables.

A job is what the accounting needs and nothing more: when it ran (UTC epoch seconds),
where, and how many CPUs it held on each node.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import chain
from operator import itemgetter, methodcaller

import numpy as np

from .errors import CarbondError, JobInputError
from .hostlist import expand
from .times import EPOCH_MAX, MAX_SPAN, check_span, in_range, parse_time

REQUIRED_COLUMNS = ("JobIDRaw", "Start", "End", "NodeList", "AllocTRES")
NOT_STARTED = {"", "unknown", "none"}


@dataclass(frozen=True)
class Job:
    job_id: str
    """JobIDRaw: unique, and what sacctmgr's `where jobid=` takes."""
    start: float | None
    end: float | None
    nodes: tuple[str, ...] = ()
    cpus: tuple[float, ...] = ()
    """CPUs held on each node, in `nodes` order (an even split when only a total is known)."""
    gpus: int = 0
    partition: str = ""
    account: str = ""
    user: str = ""
    display_id: str = ""
    """JobID as users see it (`1234_7` for an array task)."""
    warnings: tuple[str, ...] = field(default=())
    gpu_ids: tuple[tuple[str, str], ...] = ()
    """(node, "0,2"): the GPU indices the job held on each node, captured while it ran (carbond.gpu_capture)."""
    mem_gb: float = 0.0
    """Memory allocated to the job in all (AllocTRES `mem`), GB; 0 when not known."""

    @property
    def label(self) -> str:
        return self.display_id or self.job_id


@dataclass(frozen=True)
class BadLine:
    """A line that could not be read; reported in the results, never silently skipped."""

    job_id: str
    line_no: int
    error: str


@functools.lru_cache(maxsize=4096)
def parse_tres(tres: str) -> dict[str, str]:
    """`billing=4,cpu=4,gres/gpu=1,node=1` -> {'cpu': '4', ...}."""
    out: dict[str, str] = {}
    for item in tres.split(","):
        key, sep, value = item.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def tres_counts(tres: str) -> tuple[int, int]:
    """Allocated CPUs and GPUs from an AllocTRES string."""
    t = parse_tres(tres)
    try:
        cpus = int(t.get("cpu", "0"))
        gpus = int(t.get("gres/gpu", "0"))
    except ValueError:
        raise JobInputError(f"cannot read AllocTRES {tres!r}") from None
    return cpus, gpus


_MEM_UNITS = {"K": 1 / (1024 * 1024), "M": 1 / 1024, "G": 1.0, "T": 1024.0, "P": 1024.0 * 1024}


def tres_mem_gb(tres: str) -> float:
    """Memory allocated, GB (Slurm's G: GiB), from AllocTRES `mem=4000M`; 0 when absent or unreadable."""
    text = parse_tres(tres).get("mem", "")
    unit = text[-1:].upper() if text[-1:].isalpha() else "M"  # Slurm's unit when none is written
    number = text[:-1] if text[-1:].isalpha() else text
    try:
        value = float(number) * _MEM_UNITS[unit]
    except (ValueError, KeyError):
        return 0.0
    return value if value > 0 and value == value and value != float("inf") else 0.0


def even_split(total: float, n: int) -> tuple[float, ...]:
    return (total / n,) * n if n else ()


def read_sacct(lines: Iterable[str], zone: str | None = None) -> Iterator[Job | BadLine]:
    """Jobs of a `sacct -P` table with a header line; steps (`123.batch`) are skipped.

    Times may be epoch seconds (SLURM_TIME_FORMAT=%s) or local times read in `zone`.
    """
    it = iter(lines)
    header = next(it, "").rstrip("\n").split("|")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise JobInputError(
            f"sacct table lacks column(s) {', '.join(missing)}; run sacct -P -o {','.join(REQUIRED_COLUMNS)}"
        )
    col = {name: i for i, name in enumerate(header)}
    optional = {k: col.get(k) for k in ("JobID", "Partition", "Account", "User")}
    for line_no, line in enumerate(it, start=2):
        line = line.rstrip("\n")
        if not line:
            continue
        row = line.split("|")
        job_id = row[col["JobIDRaw"]] if len(row) > col["JobIDRaw"] else "?"
        if "." in job_id:
            continue
        try:
            yield _job_from_row(row, col, optional, zone, len(header))
        except CarbondError as exc:
            yield BadLine(job_id, line_no, str(exc))


def _job_from_row(row: list[str], col: dict[str, int], opt: dict[str, int | None], zone: str | None, width: int) -> Job:
    if len(row) != width:
        raise JobInputError(f"expected {width} fields, got {len(row)}")
    job_id = row[col["JobIDRaw"]]
    warnings: list[str] = []
    start = _time(row[col["Start"]], zone, warnings)
    end = _time(row[col["End"]], zone, warnings)
    if start is not None and end is not None:
        check_span(start, end)
    nodes_expr = row[col["NodeList"]]
    nodes = () if nodes_expr.lower() in ("none assigned", "", "none") else expand(nodes_expr)
    cpus, gpus = tres_counts(row[col["AllocTRES"]])
    if nodes and cpus <= 0:
        cpus = _cpu_column(row, col)

    def get(k: str) -> str:
        i = opt[k]
        return row[i] if i is not None else ""

    return Job(
        job_id=job_id,
        mem_gb=tres_mem_gb(row[col["AllocTRES"]]),
        start=start,
        end=end,
        nodes=nodes,
        cpus=even_split(cpus, len(nodes)),
        gpus=gpus,
        partition=get("Partition"),
        account=get("Account"),
        user=get("User"),
        display_id=get("JobID"),
        warnings=tuple(warnings),
    )


CPU_COLUMNS = ("AllocCPUS", "NCPUS")
"""Where a job's CPU count is found when its AllocTRES is empty (seen in real sacct output)."""


def _cpu_column(row: list[str] | tuple[str, ...], col: dict[str, int]) -> int:
    """The job's CPUs from AllocCPUS/NCPUS; an error, never 0, when neither holds a count."""
    for name in CPU_COLUMNS:
        i = col.get(name)
        if i is not None and i < len(row) and row[i].strip().isdigit() and int(row[i]) > 0:
            return int(row[i])
    raise JobInputError("AllocTRES has no cpu count and there is no AllocCPUS or NCPUS column to take it from "
                        "(add AllocCPUS to the sacct -o columns)")


def _time(text: str, zone: str | None, warnings: list[str]) -> float | None:
    if text.strip().lower() in NOT_STARTED:
        return None
    if _is_epoch(text):
        return in_range(float(text), text)
    value, warning = parse_time(text, zone)
    if warning:
        warnings.append(warning)
    return value


def _is_epoch(text: str) -> bool:
    """Whole epoch seconds as sacct prints them with SLURM_TIME_FORMAT=%s: ASCII digits only
    (str.isdigit also takes `²` and `١٢`, which float() then refuses or misreads)."""
    return text.isascii() and text.isdigit()


# ---- columnar input: the bulk path ---------------------------------------------------------


class NodeNames:
    """Node name <-> small integer, shared by every window of one run (tables carry indices)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.names: list[str] = []

    def ids(self, names: tuple[str, ...]) -> tuple[int, ...]:
        index = self.index
        out = []
        for n in names:
            i = index.get(n)
            if i is None:
                i = index[n] = len(self.names)
                self.names.append(n)
            out.append(i)
        return tuple(out)


@dataclass
class JobTable:
    """Jobs as columns (J jobs, K job-node rows): what the engine needs, one array per fact.

    Times are NaN where unknown; `row_cpus` NaN where the CPUs held are unknown (whole nodes).
    `bad` holds the lines that could not be read, reported in the results after the jobs.
    """

    job_id: np.ndarray
    start: np.ndarray
    end: np.ndarray
    node_offsets: np.ndarray
    """Rows of job j are node_offsets[j]:node_offsets[j+1]."""
    node: np.ndarray
    """NodeNames index of each row."""
    row_cpus: np.ndarray
    gpus: np.ndarray
    partition: np.ndarray
    account: np.ndarray
    user: np.ndarray
    display_id: np.ndarray
    names: NodeNames
    warnings: dict[int, tuple[str, ...]] = field(default_factory=dict)
    bad: list[BadLine] = field(default_factory=list)
    gpu_ids: dict[int, object] = field(default_factory=dict)
    """Job index -> the GPU indices it held (carbond.gpus), for the few jobs that record them."""
    mem_gb: np.ndarray | None = None
    """Memory allocated per job, GB (None: not known for any)."""

    def __len__(self) -> int:
        return int(self.start.size)

    def nodes_of(self, j: int) -> tuple[str, ...]:
        names = self.names.names
        return tuple(names[i] for i in self.node[self.node_offsets[j] : self.node_offsets[j + 1]].tolist())

    def take(self, idx: np.ndarray) -> JobTable:
        """The jobs at `idx`, in that order (bad lines stay with the original table)."""
        idx = np.asarray(idx, dtype=np.int64)
        counts = np.diff(self.node_offsets)[idx]
        offsets = np.concatenate(([0], np.cumsum(counts)))
        rows = np.repeat(self.node_offsets[idx], counts) + (np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], counts))
        where = {int(k): i for i, k in enumerate(idx.tolist())}
        return JobTable(
            self.job_id[idx], self.start[idx], self.end[idx], offsets, self.node[rows], self.row_cpus[rows],
            self.gpus[idx], self.partition[idx], self.account[idx], self.user[idx], self.display_id[idx],
            self.names, {where[k]: w for k, w in self.warnings.items() if k in where},
            gpu_ids={where[k]: g for k, g in self.gpu_ids.items() if k in where},
            mem_gb=None if self.mem_gb is None else self.mem_gb[idx],
        )

    @classmethod
    def from_jobs(cls, jobs: list[Job], names: NodeNames | None = None) -> JobTable:
        names = names or NodeNames()
        ids = [names.ids(j.nodes) for j in jobs]
        counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(jobs))
        cpus = [c for j in jobs for c in (j.cpus if j.cpus else (np.nan,) * len(j.nodes))]
        return cls(
            job_id=_strings([j.job_id for j in jobs]),
            start=np.array([np.nan if j.start is None else j.start for j in jobs], dtype=np.float64),
            end=np.array([np.nan if j.end is None else j.end for j in jobs], dtype=np.float64),
            node_offsets=np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
            node=np.fromiter((i for t in ids for i in t), dtype=np.int64, count=int(counts.sum())),
            row_cpus=np.array(cpus, dtype=np.float64),
            gpus=np.array([j.gpus for j in jobs], dtype=np.int64),
            partition=_strings([j.partition for j in jobs]),
            account=_strings([j.account for j in jobs]),
            user=_strings([j.user for j in jobs]),
            display_id=_strings([j.display_id for j in jobs]),
            names=names,
            warnings={i: j.warnings for i, j in enumerate(jobs) if j.warnings},
            gpu_ids={i: g for i, j in enumerate(jobs) if (g := getattr(j, "gpu_ids", None))},
            mem_gb=np.array([getattr(j, "mem_gb", 0.0) for j in jobs], dtype=np.float64),
        )


def _strings(values: list[str] | tuple[str, ...]) -> np.ndarray:
    """A text column as an array of the str objects themselves: the engine hands them back out
    as str (JobMeta, ids), and a fixed-width unicode array would copy each one in and out."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


@dataclass(frozen=True)
class SacctHeader:
    """Column positions of a `sacct -P` table."""

    width: int
    col: dict[str, int]

    @classmethod
    def parse(cls, line: str) -> SacctHeader:
        header = line.rstrip("\n").split("|")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise JobInputError(
                f"sacct table lacks column(s) {', '.join(missing)}; run sacct -P -o {','.join(REQUIRED_COLUMNS)}"
            )
        return cls(len(header), {name: i for i, name in enumerate(header)})


def read_table(lines: list[str], line_nos: list[int], header: SacctHeader, names: NodeNames,
               zone: str | None = None) -> JobTable:
    """A chunk of `sacct -P` lines (no header, no steps) as columns.

    Fields are split once and each column converted in one numpy call; node lists and TRES
    strings are parsed once per distinct value. A line that cannot be read becomes a BadLine.
    """
    col, width = header.col, header.width
    rows = [ln.split("|") for ln in lines]
    bad: list[BadLine] = []
    if rows and not min(map(len, rows)) == max(map(len, rows)) == width:
        keep = []
        for r, no in zip(rows, line_nos, strict=True):
            if len(r) == width:
                keep.append((r, no))
            else:
                jid = r[col["JobIDRaw"]] if len(r) > col["JobIDRaw"] else "?"
                bad.append(BadLine(jid, no, f"expected {width} fields, got {len(r)}"))
        rows = [r for r, _ in keep]
        line_nos = [no for _, no in keep]
    n = len(rows)
    cols = list(zip(*rows, strict=True)) if rows else [()] * width
    warnings: dict[int, list[str]] = {}
    time_err: dict[int, str] = {}
    start = _times(cols[col["Start"]], zone, warnings, time_err)
    end = _times(cols[col["End"]], zone, warnings, time_err)
    with np.errstate(invalid="ignore"):
        for i in np.flatnonzero(end - start > MAX_SPAN).tolist():
            try:
                check_span(float(start[i]), float(end[i]))
            except JobInputError as exc:
                time_err.setdefault(i, str(exc))
    node_ids, node_err = _node_column(cols[col["NodeList"]], names)
    tres, tres_err = _tres_column(cols[col["AllocTRES"]])
    counts = np.fromiter(map(len, node_ids), dtype=np.int64, count=n)
    if n and np.any((tres[:, 0] <= 0) & (counts > 0)):  # an empty AllocTRES: AllocCPUS/NCPUS, or an error
        for i in np.flatnonzero((tres[:, 0] <= 0) & (counts > 0)).tolist():
            try:
                tres[i, 0] = _cpu_column([c[i] for c in cols], col)
            except CarbondError as exc:
                tres_err[i] = str(exc)
    failed = {**tres_err, **node_err, **time_err}
    for i, e in failed.items():
        jid = cols[col["JobIDRaw"]][i]
        bad.append(BadLine(jid, line_nos[i], e))
    if failed:
        ok = np.ones(n, dtype=bool)
        ok[list(failed)] = False
        keep_idx = np.flatnonzero(ok)
    else:
        keep_idx = None
    cpus = tres[:, 0] if n else np.zeros(0)
    per_node = np.divide(cpus, counts, out=np.zeros(n), where=counts > 0)
    table = JobTable(
        job_id=_strings(cols[col["JobIDRaw"]]),
        start=start,
        end=end,
        node_offsets=np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
        node=np.fromiter(chain.from_iterable(node_ids), dtype=np.int64, count=int(counts.sum())),
        row_cpus=np.repeat(per_node, counts),
        gpus=tres[:, 1].astype(np.int64) if n else np.zeros(0, dtype=np.int64),
        mem_gb=tres[:, 2] if n else np.zeros(0),
        partition=_optional(cols, col, "Partition", n),
        account=_optional(cols, col, "Account", n),
        user=_optional(cols, col, "User", n),
        display_id=_optional(cols, col, "JobID", n),
        names=names,
        warnings={i: tuple(w) for i, w in warnings.items()},
    )
    if keep_idx is not None:
        table = table.take(keep_idx)
    table.bad = sorted(bad, key=lambda b: b.line_no)
    return table


def _optional(cols: list, col: dict[str, int], name: str, n: int) -> np.ndarray:
    return _strings(cols[col[name]]) if name in col else np.full(n, "", dtype=object)


def _times(texts: tuple[str, ...], zone: str | None, warnings: dict[int, list[str]],
           errors: dict[int, str]) -> np.ndarray:
    """Epoch seconds in one conversion; local times, Unknown and None one by one (and so are the
    texts numpy reads as no time of ours: nan, inf, -5, 1e400)."""
    try:
        fast = np.array(texts, dtype=np.float64) if texts else np.zeros(0)
        if ((fast >= 0) & (fast <= EPOCH_MAX)).all():
            return fast
    except ValueError:
        pass
    out = np.empty(len(texts))
    for i, text in enumerate(texts):
        w: list[str] = []
        try:
            value = _time(text, zone, w)
        except CarbondError as exc:
            errors[i] = str(exc)
            value = None
        out[i] = np.nan if value is None else value
        if w:
            warnings.setdefault(i, []).extend(w)
    return out


def _node_column(exprs: tuple[str, ...], names: NodeNames) -> tuple[list[tuple[int, ...]], dict[int, str]]:
    cache: dict[str, tuple[int, ...] | str] = {}
    for e in set(exprs):
        try:
            cache[e] = () if e.lower() in ("none assigned", "", "none") else names.ids(expand(e))
        except CarbondError as exc:
            cache[e] = str(exc)
    out = [cache[e] for e in exprs]
    if not any(isinstance(v, str) for v in cache.values()):
        return out, {}  # type: ignore[return-value]
    errors = {i: v for i, v in enumerate(out) if isinstance(v, str)}
    for i in errors:
        out[i] = ()
    return out, errors  # type: ignore[return-value]


def _tres_column(texts: tuple[str, ...]) -> tuple[np.ndarray, dict[int, str]]:
    """(cpus, gpus, memory GB) per line, each distinct AllocTRES parsed once."""
    cache: dict[str, tuple[float, float, float] | str] = {}
    for t in set(texts):
        try:
            cache[t] = (*tres_counts(t), tres_mem_gb(t))
        except CarbondError as exc:
            cache[t] = str(exc)
    vals = [cache[t] for t in texts]
    bad = any(isinstance(v, str) for v in cache.values())
    errors = {i: v for i, v in enumerate(vals) if isinstance(v, str)} if bad else {}
    for i in errors:
        vals[i] = (0, 0, 0)
    return np.array(vals, dtype=np.float64).reshape(len(texts), 3), errors  # type: ignore[arg-type]


NO_WINDOW = -1
"""The bucket of jobs that never started or have no start time: no power is needed for them."""
BLOCK = 4096
"""Lines read per step of the fill: small blocks leave no fragmented heap behind (a long input
read in large blocks kept ~30 MB more resident for the whole run) and are faster."""


class TimeBuckets:
    """`sacct -P` lines sorted into windows by start time, spilled to disk beyond `limit` bytes.

    One pass over the input with one split per line; each window is later read back as one
    JobTable. Memory is bounded by `limit` and one window, whatever the input's span or order.
    """

    def __init__(self, lines: Iterable[str], window: float, zone: str | None = None,
                 limit: int = 8 << 20, spill_dir: str | None = None, gpu_special: bool = False) -> None:
        import tempfile

        self.window = float(window)
        self.zone = zone
        self.names = NodeNames()
        self._mem: dict[int, list[tuple[str, np.ndarray]]] = {}
        """Per window: its lines of each block, joined (one allocation, not one per line: a long
        input would otherwise leave the heap fragmented by the few lines kept of every block)."""
        self._size = 0
        self._limit = limit
        self._tmp = tempfile.TemporaryDirectory(prefix="carbond-buckets-", dir=spill_dir)
        self._spilled: set[int] = set()
        self.lo = float("inf")
        """Earliest start and latest end of the input (for one intensity lookup)."""
        self.hi = float("-inf")
        self.jobs = 0
        self.counts: dict[int, int] = {}
        """Lines per window (to share windows out evenly)."""
        self._ids: list[str] = []
        self._key_parts: list[np.ndarray] = []
        self._special_keys: list[int] = []
        self._marked: set[str] = set()
        self._gpu_special = gpu_special
        """GPU jobs are special too (their captured indices are in a readable ledger)."""
        self.specials: frozenset[str] = frozenset()
        """Jobs of several lines (`sacct -D`: one per run of a requeued job) or suspended for some
        time: kept out of the windows and accounted whole by `special_histories` (carbond.accounting)."""
        self.special_lines: list[tuple[str, int]] = []
        self._fill(iter(lines))

    def _fill(self, it: Iterator[str]) -> None:
        import itertools

        first = next(it, "")
        self.header = SacctHeader.parse(first)
        self._header_line = first.rstrip("\n")
        line_no = 2
        while True:
            block = list(itertools.islice(it, BLOCK))
            if not block:
                break
            self._add_block(block, line_no)
            line_no += len(block)
        from collections import Counter

        counts = Counter(self._ids)
        self.specials = frozenset(k for k, c in counts.items() if c > 1) | self._marked
        if self.specials:
            ids = np.empty(len(self._ids), dtype=object)
            ids[:] = self._ids
            keys = np.concatenate(self._key_parts)
            self._special_keys = sorted(set(keys[np.isin(ids, list(self.specials))].tolist()))
        del self._ids, self._key_parts

    def _add_block(self, block: list[str], first_no: int) -> None:
        """One split per line, the start column converted in one call, lines moved by window."""

        c_id, c_start, c_end = (self.header.col[k] for k in ("JobIDRaw", "Start", "End"))
        c_susp = self.header.col.get("Suspended", -1)
        c_tres = self.header.col["AllocTRES"] if self._gpu_special else -1
        need = max(c_id, c_start, c_end, c_susp, c_tres) + 1
        lines = [ln.rstrip("\n") for ln in block]
        fields = list(map(methodcaller("split", "|", need), lines))
        whole = min(map(len, fields)) >= need
        if whole and "." not in "".join(map(itemgetter(c_id), fields)):  # no step, no short line: the usual table
            keep = range(len(lines))
        else:
            keep = [i for i, f in enumerate(fields) if len(f) > need - 1 and "." not in f[c_id] and lines[i]]
            short = [i for i, f in enumerate(fields) if len(f) <= need - 1 and lines[i] and "." not in f[0]]
            keep = sorted(keep + short) if short else keep
            if not keep:
                return
            fields = [fields[i] for i in keep] if len(keep) < len(fields) else fields
            lines = [lines[i] for i in keep] if len(keep) < len(lines) else lines
        nos = np.asarray(keep) + first_no
        self._ids.extend(map(itemgetter(c_id), fields) if whole else (f[c_id] if len(f) > c_id else "" for f in fields))
        if c_susp >= 0:
            self._marked.update(f[c_id] for f in fields if len(f) > c_susp and f[c_susp].strip("0:- "))
        if c_tres >= 0:
            self._marked.update(f[c_id] for f in fields if len(f) > c_tres and "gres/gpu" in f[c_tres])
        start = self._column(fields, c_start, whole)
        end = self._column(fields, c_end, whole)
        with np.errstate(invalid="ignore"):
            sane = ~(end - start > MAX_SPAN)  # a job too long to account (a bad line) widens no lookup
            if np.isfinite(start[sane]).any():
                self.lo = min(self.lo, float(np.nanmin(start[sane])))
            if np.isfinite(end[sane]).any():
                self.hi = max(self.hi, float(np.nanmax(end[sane])))
            keys = np.where(np.isfinite(start), np.floor(start / self.window), NO_WINDOW).astype(np.int64)
        self._key_parts.append(keys)
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        cuts = np.flatnonzero(np.diff(sk)) + 1
        for idx in np.split(order, cuts):
            key = int(keys[idx[0]])
            got = itemgetter(*idx.tolist())(lines)
            text = "\n".join(got) if len(idx) > 1 else got
            self._mem.setdefault(key, []).append((text, nos[idx]))
            self.counts[key] = self.counts.get(key, 0) + len(idx)
            self._size += len(text) + 60 * len(idx)
        self.jobs += len(lines)
        if self._size > self._limit:
            self._spill()

    def _column(self, fields: list[list[str]], c: int, whole: bool) -> np.ndarray:
        texts = list(map(itemgetter(c), fields)) if whole else [f[c] if len(f) > c else "" for f in fields]
        try:
            fast = np.array(texts, dtype=np.float64)
            if ((fast >= 0) & (fast <= EPOCH_MAX)).all():
                return fast
        except ValueError:
            pass
        return np.array([np.nan if (v := self._start(t)) is None else v for t in texts], dtype=np.float64)

    def _start(self, text: str) -> float | None:
        try:
            return _time(text, self.zone, [])
        except CarbondError:
            return None

    def _spill(self) -> None:
        """Each window's lines to its text file, their line numbers to a file of int64 beside it."""
        for key, parts in self._mem.items():
            with open(self._path(key, "txt"), "a", encoding="utf-8") as fh, open(self._path(key, "nos"), "ab") as fn:
                fh.write("".join(text + "\n" for text, _ in parts))
                fn.write(b"".join(nos.astype(np.int64).tobytes() for _, nos in parts))
            self._spilled.add(key)
        self._mem.clear()
        self._size = 0

    def _path(self, key: int, kind: str) -> str:
        import os

        return os.path.join(self._tmp.name, f"{key}.{kind}")

    @property
    def span(self) -> tuple[float, float] | None:
        """(lo, hi) for one intensity lookup of the whole input, or None when there is no time or
        it spans more than MAX_SPAN (jobs decades apart: each window then looks up its own)."""
        return (self.lo, self.hi) if 0 <= self.hi - self.lo <= MAX_SPAN else None

    def keys(self) -> list[int]:
        keys = sorted(set(self._mem) | self._spilled)
        return [k for k in keys if k != NO_WINDOW] + [k for k in keys if k == NO_WINDOW]

    def table(self, key: int) -> JobTable:
        """The jobs of one window, in input order, with their bad lines (special jobs set aside)."""
        body, nos = self._lines(key)
        if self.specials:
            body, nos = self._set_aside(body, nos)
        return read_table(body, nos, self.header, self.names, self.zone)

    def _lines(self, key: int) -> tuple[list[str], list[int]]:
        nos: list[int] = []
        body: list[str] = []
        if key in self._spilled:
            with open(self._path(key, "txt"), encoding="utf-8", newline="") as fh:
                body = fh.read().split("\n")[:-1]
            nos = np.fromfile(self._path(key, "nos"), dtype=np.int64).tolist()
        for text, more in self._mem.get(key, []):
            body.extend(text.split("\n"))
            nos.extend(more.tolist())
        return body, nos

    def _set_aside(self, body: list[str], nos: list[int]) -> tuple[list[str], list[int]]:
        """The special jobs' lines out of a window, into `special_lines`."""
        c = self.header.col["JobIDRaw"]
        keep_b, keep_n = [], []
        for line, no in zip(body, nos, strict=True):
            parts = line.split("|", c + 1)
            if len(parts) > c and parts[c] in self.specials:
                self.special_lines.append((line, no))
            else:
                keep_b.append(line)
                keep_n.append(no)
        return keep_b, keep_n

    def collect_specials(self) -> None:
        """Set the special jobs' lines aside without reading the windows as tables (a parent whose
        worker processes read the windows: their `special_lines` stayed in them)."""
        self.special_lines = []
        for key in self._special_keys:
            self._set_aside(*self._lines(key))

    def special_histories(self, ledger=None) -> list:
        """The special jobs as carbond.accounting.JobHistory: each line a run (the latest the job's
        record), its `Suspended` seconds, and the suspend intervals and GPU indices a read-only
        ledger (carbond.accounting.LedgerView) recorded."""
        from .accounting import JobHistory
        from .slurm import Run, parse_elapsed

        lines = sorted(self.special_lines, key=itemgetter(1))
        header = self._header_line
        c_susp = self.header.col.get("Suspended")
        runs: dict[str, list[tuple[Job, float]]] = {}
        out: list = []
        for item, (line, _no) in zip(read_sacct([header, *(ln for ln, _ in lines)], self.zone), lines, strict=True):
            if isinstance(item, BadLine):
                out.append(item)
                continue
            secs = parse_elapsed(line.split("|")[c_susp]) if c_susp is not None else 0.0
            runs.setdefault(item.job_id, []).append((item, secs))
        for job_id, rs in runs.items():
            rs.sort(key=lambda r: (r[0].start is None, r[0].start or 0.0))
            final = rs[-1][0]
            ran = tuple(Run(job_id, "", j.start, j.end, j.nodes, int(sum(j.cpus)), secs) for j, secs in rs)
            sus = tuple(ledger.suspended(job_id)) if ledger is not None and any(secs > 0 for _, secs in rs) else ()
            ids = ledger.gpu_indices(job_id) if ledger is not None and final.gpus else ()
            out.append(JobHistory(replace(final, gpu_ids=ids) if ids else final, ran, sus))
        return out

    def windows(self) -> Iterator[JobTable]:
        """Every window's table in time order (jobs without a start last), dropping each once read."""
        for key in self.keys():
            table = self.table(key)
            self._mem.pop(key, None)
            yield table

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> TimeBuckets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
