"""Rendering footprints for people (a compact table) and for programs (JSON lines)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable
from itertools import chain
from operator import attrgetter
from typing import BinaryIO, TextIO

import numpy as np

from .footprint import FULL, Accounting, Batch, JobFootprint, JobMeta, footprints, notes, numbers, significant
from .times import iso, iso_many, iso_parts

# Average UK petrol car, DEFRA 2023 conversion factors: ~170 gCO2e per km.
G_PER_CAR_KM = 170.0


_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False, allow_nan=False)
_PERIOD = (b'{"start":"%s%s","end":"%s%s","energy_kwh":%.12g,"intensity_g_per_kwh":%s,"intensity_kind":"%s",'
           b'"co2e_g":%.12g}')
_NODE = b'{"node":%s,"energy_kwh":%.12g,"share":%s}'
_HEAD = (b'{"job_id":%s,"status":"ok","energy_kwh":%.12g,"co2e_g":%.12g,"operational_g":%.12g,"embodied_g":%s,'
         b'"intensity_g_per_kwh":%s,"pue":%s,"method":"%s","coverage":%s,"start":"%s%s","end":"%s%s","nodes":[')
_MID, _TAIL = b'],"periods":[', b"]}"
"""A plain job's line: _HEAD, its _NODE rows, _MID, its _PERIOD rows, _TAIL (times are written
as their hour and the rest: times.iso_parts). Each '%.12g' is a number `_g12` checked '%.12g'
writes as repr does; a job with another number there is written from '%s' templates, with repr."""
_PUE = b'"pue":%s'
"""Written into each batch's _HEAD (one value for the batch), so not one of its fields."""
_FIELDS = {t: (t.replace(_PUE, b"").count(b"%"), g) for t, g in ((_HEAD, (1, 2, 3)), (_NODE, (1,)), (_PERIOD, (4, 7)))}
"""Each template's number of fields, and where its '%.12g' are among them."""


def write_json(fps: Iterable[JobFootprint], out: TextIO) -> int:
    """One JSON object per line (JobFootprint.to_dict); returns the count."""
    return _write_lines((_ENCODER.encode(fp.to_dict()) for fp in fps), out)


def write_json_batches(batches: Iterable[Batch], out: TextIO | BinaryIO) -> int:
    """The same lines as write_json, formatted straight from each batch's arrays.

    A million half-hour periods would otherwise be a million objects, then dicts, then encoder
    calls. Jobs with an error or a note go through to_dict, the reference for the format.
    (carbond.segments spreads the work over the cores, formatting included.) The lines are
    ASCII bytes: a text `out` is written through its binary buffer when it has one.
    """
    write = _bytes_writer(out)
    n = 0
    for b in batches:
        text, count = format_batch(b)
        write(text)
        n += count
    return n


def _bytes_writer(out: TextIO | BinaryIO) -> Callable[[bytes], object]:
    if not isinstance(out, io.TextIOBase):
        return out.write
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        return lambda data: out.write(data.decode("ascii"))
    out.flush()
    return buffer.write


def format_batch(b: Batch) -> tuple[bytes, int]:
    """A batch's JSON lines, and how many.

    The whole batch is one bytes '%' of one template: a template per line (a plain job's made
    for its numbers of nodes and periods, b'%s' for a line made by to_dict) and every value in
    one flat tuple. Bytes formatting copies the text between fields with memcpy and makes no
    string per row, no tuple per row and no joins: the floor of the output is '%.12g' itself.
    """
    if b.acc is None or b.alloc is None:
        lines = [_ENCODER.encode(s.to_dict()) for s in b.slots if isinstance(s, JobFootprint)]
        return ("\n".join(lines) + "\n").encode() if lines else b"", len(lines)
    if not b.slots:
        return b"", 0
    job = np.array(b.slots)  # all indices, the usual batch: one call
    if job.dtype.kind != "i":
        job = np.fromiter((s if isinstance(s, int) else -1 for s in b.slots), np.int64, len(b.slots))
    bulk = job >= 0
    bulk[bulk] = _plain(b.acc, b.metas)[job[bulk]]
    templates, flat, base = _bulk(b, job, bulk)
    slow = None
    for k in np.flatnonzero(~bulk).tolist():
        slot = b.slots[k]
        if isinstance(slot, int):
            slow = slow if slow is not None else list(footprints(b.acc, b.alloc, b.metas, b.pue))
            slot = slow[slot]
        flat[base[k]] = _ENCODER.encode(slot.to_dict()).encode()
    return b"\n".join(templates) % tuple(flat.tolist()) + b"\n", len(b.slots)


def _plain(acc: Accounting, metas: list[JobMeta]) -> np.ndarray:
    """The jobs accounted without any note (no warning, GPU row, stale or forecast intensity,
    unknown energy or grams): the ones formatted straight from the arrays."""
    if any(map(attrgetter("warnings"), metas)) or any(map(attrgetter("gpu"), metas)):
        noted = np.fromiter((bool(m.warnings) or m.gpu for m in metas), bool, len(metas))
    else:
        noted = np.zeros(len(metas), bool)
    stale, forecast = notes(acc)
    return ~(noted | stale | forecast | np.isnan(acc.energy_j) | np.isnan(acc.operational_g))


def _bulk(b: Batch, job: np.ndarray, bulk: np.ndarray) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Each slot's template; the values of all lines, flat, the plain jobs' filled in; where each
    slot's values begin (a slot that is not `bulk` has one, its line, left to the caller)."""
    acc, alloc = b.acc, b.alloc
    assert acc is not None and alloc is not None
    nn, npd = np.diff(acc.row_offsets), np.diff(acc.period_offsets)
    jobs = job[bulk]
    n_head, n_node, n_period = (_FIELDS[t][0] for t in (_HEAD, _NODE, _PERIOD))
    size = np.ones(job.size, np.int64)
    size[bulk] = n_head + n_node * nn[jobs] + n_period * npd[jobs]
    base = np.cumsum(size) - size
    flat = np.empty(int(size.sum()), dtype=object)
    at = np.full(nn.size, -1, np.int64)
    at[jobs] = base[bulk]
    rows = np.flatnonzero(at[alloc.row_job] >= 0)
    row_job = alloc.row_job[rows]
    periods = np.flatnonzero(at[acc.period_job] >= 0)
    period_job = acc.period_job[periods]
    x = numbers(acc, alloc)
    groups = [
        (_HEAD, jobs, at[jobs], _head_columns(b, x)),
        (_NODE, rows, at[row_job] + n_head + n_node * (rows - acc.row_offsets[row_job]), _node_columns(b, x)),
        (_PERIOD, periods,
         at[period_job] + n_head + n_node * nn[period_job] + n_period * (periods - acc.period_offsets[period_job]),
         [*_times(acc.period_start, iso_many), *_times(acc.period_end, iso_many), x["p_kwh"],
          _texts(x["p_intensity"]), _ascii(acc.period_kind), x["p_g"]]),
    ]
    odd = np.zeros(nn.size, bool)
    for (template, pick, where, cols), owner in zip(groups, (jobs, row_job, period_job), strict=True):
        for k, col in enumerate(cols):
            flat[where + k] = _pick(col, pick)
        g = _FIELDS[template][1]
        odd[owner[~np.logical_and.reduce([_g12(cols[k][pick]) for k in g])]] = True
    if odd.any():
        for (template, pick, where, cols), owner in zip(groups, (jobs, row_job, period_job), strict=True):
            mine = np.flatnonzero(odd[owner])
            for k in _FIELDS[template][1]:
                flat[where[mine] + k] = list(map(_repr_or_null, cols[k][pick[mine]].tolist()))
    return _templates(repr(b.pue).encode(), bulk, nn[jobs], npd[jobs], odd[jobs]), flat, base


def _templates(pue: bytes, bulk: np.ndarray, nodes: np.ndarray, periods: np.ndarray, odd: np.ndarray) -> list[bytes]:
    """Each slot's template: a plain job's made once per shape (its nodes, periods and whether
    it is odd), b'%s' for the others."""
    shapes, inverse = np.unique((nodes * (1 << 20) + periods) * 2 + odd, return_inverse=True)
    made = np.empty(shapes.size, dtype=object)
    made[:] = [_template(pue, int(k) >> 21, (int(k) >> 1) & ((1 << 20) - 1), bool(k & 1)) for k in shapes]
    out = np.full(bulk.size, b"%s", dtype=object)
    out[bulk] = made[inverse]
    return out.tolist()


def _template(pue: bytes, nodes: int, periods: int, exact: bool) -> bytes:
    head = _HEAD.replace(_PUE, b'"pue":' + pue.replace(b"%", b"%%"))
    t = head + b",".join([_NODE] * nodes) + _MID + b",".join([_PERIOD] * periods) + _TAIL
    return t.replace(b"%.12g", b"%s") if exact else t


def _pick(col: list | np.ndarray, index: np.ndarray) -> list | np.ndarray:
    """col[index] (col itself when index is all of it, in order)."""
    if index.size == len(col) and (index.size == 0 or (index[0] == 0 and index[-1] == index.size - 1)):
        return col
    return col[index] if isinstance(col, np.ndarray) else np.array(col, dtype=object)[index]


def _head_columns(b: Batch, x: dict[str, np.ndarray]) -> list:
    assert b.alloc is not None
    ids = _quoted([m.job_id for m in b.metas])
    cov = x["cov"]
    methods = np.where(cov >= FULL, b"measured", np.where(cov <= 0.0, b"estimated", b"mixed")).tolist()
    each = lambda t: [iso(v) for v in t.tolist()]  # noqa: E731  (a fraction: iso writes each time as it is)
    return [ids, x["kwh"], x["total_g"], x["op_g"], _texts(x["emb_g"]), _texts(x["mean_i"], few=False), methods,
            _texts(cov), *_times(b.alloc.start, each), *_times(b.alloc.end, each)]


def _quoted(ids: list[str]) -> list[bytes]:
    """JSON strings of job ids; Slurm's need no escaping, and then one join and one split make them all."""
    if _PLAIN_ID("".join(ids)):
        return ('"' + '"\n"'.join(ids) + '"').encode().split(b"\n") if ids else []
    return [(f'"{j}"' if _PLAIN_ID(j) else _ENCODER.encode(j)).encode() for j in ids]


def _node_columns(b: Batch, x: dict[str, np.ndarray]) -> list:
    names = list(chain.from_iterable(map(attrgetter("nodes"), b.metas)))
    quoted = {n: _ENCODER.encode(n).encode() for n in set(names)}
    return [list(map(quoted.__getitem__, names)), x["row_kwh"], _texts(x["share"])]


def _times(epochs: np.ndarray, fallback: Callable[[np.ndarray], list[str]]) -> tuple[np.ndarray | list, np.ndarray | list]:
    """Two columns, the times' hours and the rest (times.iso_parts), or the whole text and b''."""
    parts = iso_parts(epochs)
    if parts is not None:
        return parts
    return [s.encode() for s in fallback(epochs)], [b""] * epochs.size


def _ascii(labels: np.ndarray) -> list[bytes] | np.ndarray:
    """Short labels (the intensity kinds) as bytes, each distinct one encoded once (a run has
    one provider: usually all the same)."""
    if labels.size and (labels == labels[0]).all():
        return np.full(labels.size, str(labels[0]).encode(), dtype=object)
    made: dict[str, bytes] = {}
    return [made.get(s) or made.setdefault(s, s.encode()) for s in labels.tolist()]


def _g12(x: np.ndarray) -> np.ndarray:
    """Where '%.12g' writes repr: a value of footprint.significant (a double nearest a 12-digit
    decimal), not integral (repr adds '.0'), below 1e12 and not below 1e-10 (see _texts)."""
    x = np.asarray(x, dtype=np.float64)
    magnitude = np.abs(x)
    with np.errstate(invalid="ignore"):
        return (magnitude < 1e12) & (magnitude >= 1e-10) & (x != np.trunc(x))


def _texts(x: np.ndarray, few: bool = True) -> list[bytes] | np.ndarray:
    """JSON numbers as repr writes them (null for NaN) for values of footprint.significant.

    Most go through '%.12g', ~1.7x faster than repr, which writes the same text for a value that
    is the double nearest some 12-digit decimal (what significant makes), unless it is integral
    (repr adds '.0'), at least 1e12 (the notations switch at different points) or below 1e-10
    (significant's scale is no longer an exact power of ten there). Those few go through repr.
    A column of `few` distinct values (CPU shares, a half-hour's intensity) formats each once.
    """
    x = np.asarray(x, dtype=np.float64)
    if few and x.size >= 64:
        uniq, inverse = np.unique(x, return_inverse=True)
        if uniq.size * 4 <= x.size:
            texts = np.empty(uniq.size, dtype=object)
            texts[:] = _texts(uniq, few=False)
            return texts[inverse]
    with np.errstate(invalid="ignore"):
        odd = ~(_g12(x) & (significant(x) == x))
    out = list(map(b"%.12g".__mod__, x.tolist()))
    for i in np.flatnonzero(odd).tolist():
        out[i] = _repr_or_null(float(x[i]))
    return out


_PLAIN_ID = re.compile(r"[0-9A-Za-z_.+-]*\Z").match
"""Job ids JSON writes as they are (Slurm's are digits, `_` and `+`)."""


def _repr_or_null(v: float) -> bytes:
    """A number as JSON writes it (repr), NaN (unknown) as null."""
    return b"null" if v != v else repr(v).encode()


def _write_lines(lines: Iterable[str], out: TextIO, chunk: int = 2000) -> int:
    n = 0
    buf: list[str] = []
    for line in lines:
        buf.append(line)
        if len(buf) >= chunk:
            out.write("\n".join(buf) + "\n")
            n += len(buf)
            buf.clear()
    if buf:
        out.write("\n".join(buf) + "\n")
        n += len(buf)
    return n


def _num(x: float | None, fmt: str) -> str:
    """`x` formatted, or `-` in the same width when unknown (so the columns stay aligned)."""
    if x is None or x != x:
        width = fmt.split(".")[0]
        return "-".rjust(int(width) if width.isdigit() else 1)
    return format(x, fmt)


HEADER = f"{'JOBID':<14} {'START (UTC)':<20} {'HOURS':>7} {'NODES':>5} {'kWh':>10} {'gCO2e':>11} {'g/kWh':>6} {'METHOD':<9} {'COVER':>5}  NOTE"


def table_row(fp: JobFootprint) -> str:
    hours = (fp.end - fp.start) / 3600 if fp.start is not None and fp.end is not None else None
    start = iso(fp.start)[:19].replace("T", " ") if fp.start is not None else "-"
    note = fp.error or (fp.status if fp.status != "ok" else "; ".join(fp.warnings))
    return (
        f"{fp.job_id:<14} {start:<20} {_num(hours, '7.2f')} {len(fp.nodes):>5} "
        f"{_num(fp.energy_kwh, '10.4f')} {_num(fp.co2e_g, '11.1f')} {_num(fp.intensity_g_per_kwh, '6.0f')} "
        f"{fp.method:<9} {_num(fp.coverage * 100, '4.0f')}%  {note}"
    )


def write_table(fps: Iterable[JobFootprint], out: TextIO) -> int:
    """A table a person reads at a glance, with a totals line; single jobs also get their periods."""
    out.write(HEADER + "\n")
    n = kwh = grams = 0.0
    bad = 0
    last = None
    for fp in fps:
        out.write(table_row(fp) + "\n")
        n += 1
        last = fp
        if fp.status == "ok" and fp.co2e_g is not None:
            kwh += fp.energy_kwh
            grams += fp.co2e_g
        elif fp.status == "error":
            bad += 1
    if n == 1 and last is not None and last.periods:
        write_periods(last, out)
    out.write(f"\n{int(n)} job(s), {kwh:.3f} kWh, {grams / 1000:.3f} kg CO2e")
    out.write(f" ({bad} not accounted: see NOTE)\n" if bad else "\n")
    return int(n)


def write_periods(fp: JobFootprint, out: TextIO) -> None:
    out.write(f"\n  {'HALF-HOUR (UTC)':<20} {'kWh':>10} {'g/kWh':>7} {'KIND':<10} {'gCO2e':>10}\n")
    for p in fp.periods:
        kind = p.intensity_kind.replace("-stale", "*")
        out.write(
            f"  {p.start[:19].replace('T', ' '):<20} {_num(p.energy_kwh, '10.4f')} "
            f"{_num(p.intensity_g_per_kwh, '7.0f')} {kind:<10} {_num(p.co2e_g, '10.2f')}\n"
        )


def equivalent(grams: float) -> str:
    """A relatable comparison for users (`carbond show`)."""
    km = grams / G_PER_CAR_KM
    if km >= 1:
        return f"about {km:.1f} km in an average petrol car"
    return f"about {km * 1000:.0f} m in an average petrol car"
