"""Rendering footprints for people (a compact table) and for programs (JSON lines)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import TextIO

import numpy as np

from .footprint import FULL, Batch, Columns, JobFootprint, columns, footprints, is_plain, significant
from .times import iso, iso_distinct

# Average UK petrol car, DEFRA 2023 conversion factors: ~170 gCO2e per km.
G_PER_CAR_KM = 170.0


_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False, allow_nan=False)
_PERIOD = ('{"start":"%s","end":"%s","energy_kwh":%.12g,"intensity_g_per_kwh":%s,"intensity_kind":"%s",'
           '"co2e_g":%.12g}')
_NODE = '{"node":%s,"energy_kwh":%.12g,"share":%s}'
_JOB = ('{"job_id":%s,"status":"ok","energy_kwh":%.12g,"co2e_g":%.12g,"operational_g":%.12g,"embodied_g":%s,'
        '"intensity_g_per_kwh":%s,"pue":%s,"method":"%s","coverage":%s,"start":"%s","end":"%s",'
        '"nodes":[%s],"periods":[%s]}')
"""The bulk lines: each '%.12g' is a number that `_rows` checked '%.12g' writes as repr does."""


def write_json(fps: Iterable[JobFootprint], out: TextIO) -> int:
    """One JSON object per line (JobFootprint.to_dict); returns the count."""
    return _write_lines((_ENCODER.encode(fp.to_dict()) for fp in fps), out)


def write_json_batches(batches: Iterable[Batch], out: TextIO) -> int:
    """The same lines as write_json, formatted straight from each batch's columns.

    A million half-hour periods would otherwise be a million objects, then dicts, then encoder
    calls. Jobs with an error or a note go through to_dict, the reference for the format.
    (carbond.segments spreads the work over the cores, formatting included.)
    """
    n = 0
    for b in batches:
        text, count = format_batch(b)
        out.write(text)
        n += count
    return n


def format_batch(b: Batch) -> tuple[str, int]:
    """A batch's JSON lines as one string, and how many."""
    lines = list(batch_lines(b))
    return ("\n".join(lines) + "\n" if lines else ""), len(lines)


def batch_lines(b: Batch) -> Iterator[str]:
    if b.acc is None or b.alloc is None:
        yield from (_ENCODER.encode(s.to_dict()) for s in b.slots if isinstance(s, JobFootprint))
        return
    c = columns(b.acc, b.alloc)
    jobs = _job_lines(b, c)
    slow = None
    for slot in b.slots:
        if not isinstance(slot, int):
            yield _ENCODER.encode(slot.to_dict())
        elif is_plain(c, slot, b.metas[slot]):
            yield jobs[slot]
        else:
            slow = slow if slow is not None else list(footprints(b.acc, b.alloc, b.metas, b.pue, c))
            yield _ENCODER.encode(slow[slot].to_dict())


def _job_lines(b: Batch, c: Columns) -> list[str]:
    """Every job's line as if it were plain (is_plain decides which are used)."""
    periods = _rows(_PERIOD, [c.p_start, c.p_end, c.p_kwh, _json_few(c.p_intensity), c.p_kind, c.p_g], (2, 5))
    quoted: dict[str, str] = {}
    names = [quoted.get(n) or quoted.setdefault(n, _ENCODER.encode(n)) for m in b.metas for n in m.nodes]
    nodes = _rows(_NODE, [names, c.row_kwh, _json_few(c.share)], (1,))
    ids = [m.job_id for m in b.metas]
    ids = [f'"{j}"' if _PLAIN_ID(j) else _ENCODER.encode(j) for j in ids]
    template = _JOB.replace('"pue":%s', '"pue":' + repr(b.pue))
    return _rows(template, [
        ids, c.kwh, c.total_g, c.op_g, _json_few(c.emb_g), _json_num(c.mean_i), _methods(c.cov), _json_few(c.cov),
        _iso_each(b.alloc.start), _iso_each(b.alloc.end), _groups(nodes, c.row_offsets), _groups(periods, c.period_offsets),
    ], (1, 2, 3))


def _groups(rows: list[str], offsets: list[int]) -> list[str]:
    """Each job's rows joined by commas (rows[offsets[i]:offsets[i + 1]] for job i)."""
    if len(offsets) == len(rows) + 1 and offsets[-1] == len(rows) and all(map(int.__eq__, offsets, range(len(offsets)))):
        return rows
    join = ",".join
    return [join(rows[a:z]) for a, z in zip(offsets, offsets[1:], strict=False)]


def _rows(template: str, cols: list[list], numbers: tuple[int, ...]) -> list[str]:
    """template % row for each row of the columns; the columns at `numbers` fill its '%.12g'.

    '%.12g' formats in C, with no string per number, and writes what repr writes for the values
    `_g12` accepts; a row with another value in those columns is written with repr (or null).
    """
    ok = np.logical_and.reduce([_g12(cols[k]) for k in numbers])
    if ok.all():
        return list(map(template.__mod__, zip(*cols, strict=True)))
    good = ok.tolist()
    safe = [[v if g else 0.5 for v, g in zip(col, good, strict=True)] if k in numbers else col for k, col in enumerate(cols)]
    out = list(map(template.__mod__, zip(*safe, strict=True)))
    exact = template.replace("%.12g", "%s")
    for i in np.flatnonzero(~ok).tolist():
        out[i] = exact % tuple(_num_or_null(col[i]) if k in numbers else col[i] for k, col in enumerate(cols))
    return out


def _g12(values: list[float | None]) -> np.ndarray:
    """Where '%.12g' writes repr: a value of footprint.significant (a double nearest a 12-digit
    decimal), not integral (repr adds '.0'), below 1e12 and not below 1e-10 (see _json_num)."""
    x = np.array(values, dtype=np.float64)
    magnitude = np.abs(x)
    with np.errstate(invalid="ignore"):
        return (magnitude < 1e12) & (magnitude >= 1e-10) & (x != np.trunc(x))


_PLAIN_ID = re.compile(r"[0-9A-Za-z_.+-]*\Z").match
"""Job ids JSON writes as they are (Slurm's are digits, `_` and `+`)."""


def _iso_each(epochs) -> list[str]:
    """iso() of each value (whole seconds unless that value has a fraction), vectorised when all are whole."""
    if np.all(epochs == np.floor(epochs)):
        return iso_distinct(epochs)
    return [iso(t) for t in epochs.tolist()]


def _methods(cov: list[float | None]) -> list[str]:
    """method_of() for a whole column."""
    coverage = np.array(cov, dtype=np.float64)
    return np.where(coverage >= FULL, "measured", np.where(coverage <= 0.0, "estimated", "mixed")).tolist()


def _json_num(values: list[float | None]) -> list[str]:
    """Floats as JSON writes them (repr), None as null.

    repr is the floor of the bulk output, so most values go through '%.12g', which is ~1.7x
    faster and writes the same text for a value that is the double nearest some 12-digit
    decimal (what footprint.significant makes), unless it is integral (repr adds '.0'), at
    least 1e12 (the notations switch at different points) or below 1e-10 (significant's scale
    is no longer an exact power of ten there). Those few values go through repr.
    """
    if None in values:
        return [_num_or_null(v) for v in values]
    if len(values) < 64:
        return list(map(float.__repr__, values))
    x = np.array(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        magnitude = np.abs(x)
        odd = ~((magnitude < 1e12) & (magnitude >= 1e-10) & (x != np.trunc(x)) & (significant(x) == x))
    out = list(map(_G12, values))
    for i in np.flatnonzero(odd).tolist():
        out[i] = repr(values[i])
    return out


_G12 = "%.12g".__mod__


_FEW = ("p_intensity", "share")
"""Columns with few distinct values (the half-hour's intensity, CPU shares): each is formatted once."""


def _json_few(values: list[float | None]) -> list[str]:
    """_json_num for a column of few distinct values: repr is the floor of the output, so do less of it."""
    if len(values) < 64 or None in values:
        return _json_num(values)
    uniq, inverse = np.unique(np.array(values, dtype=np.float64), return_inverse=True)
    if uniq.size * 4 > len(values):
        return _json_num(values)
    return np.array(_json_num(uniq.tolist()), dtype=object)[inverse].tolist()


def _num_or_null(v: float | None) -> str:
    return "null" if v is None else repr(v)


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
