"""Rendering footprints for people (a compact table) and for programs (JSON lines)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import TextIO

from .footprint import FULL, Batch, JobFootprint, columns, footprints, is_plain, significant
from .times import iso, iso_many

# Average UK petrol car, DEFRA 2023 conversion factors: ~170 gCO2e per km.
G_PER_CAR_KM = 170.0


_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False, allow_nan=False)
_PERIOD = '{{"start":"{}","end":"{}","energy_kwh":{},"intensity_g_per_kwh":{},"intensity_kind":"{}","co2e_g":{}}}'
_NODE = '{{"node":{},"energy_kwh":{},"share":{}}}'
_JOB = ('{{"job_id":{},"status":"ok","energy_kwh":{},"co2e_g":{},"operational_g":{},"embodied_g":{},'
        '"intensity_g_per_kwh":{},"pue":{},"method":"{}","coverage":{},"start":"{}","end":"{}",'
        '"nodes":[{}],"periods":[{}]}}')


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
    text = [(_json_few if k in _FEW else _json_num)(getattr(c, k)) for k in ("p_kwh", "p_intensity", "p_g", "row_kwh", "share")]
    periods = list(map(_PERIOD.format, c.p_start, c.p_end, text[0], text[1], c.p_kind, text[2]))
    kwh, total_g, op_g = (_json_num(x) for x in (c.kwh, c.total_g, c.op_g))
    emb_g, cov = _json_few(c.emb_g), _json_few(c.cov)
    mean_i = _json_num(c.mean_i)
    starts, ends = _iso_each(b.alloc.start), _iso_each(b.alloc.end)
    methods = _methods(c.cov)
    row_kwh, share = text[3], text[4]
    slow = None
    pue = _json_num([b.pue])[0]
    po, ro = c.period_offsets, c.row_offsets
    node_text: dict[str, str] = {}
    for slot in b.slots:
        if not isinstance(slot, int):
            yield _ENCODER.encode(slot.to_dict())
            continue
        i, meta = slot, b.metas[slot]
        if not is_plain(c, i, meta):
            slow = slow if slow is not None else list(footprints(b.acc, b.alloc, b.metas, b.pue, c))
            yield _ENCODER.encode(slow[i].to_dict())
            continue
        r0, r1 = ro[i], ro[i + 1]
        if r1 - r0 == 1:
            name = meta.nodes[0]
            quoted = node_text.get(name)
            if quoted is None:
                quoted = node_text[name] = _ENCODER.encode(name)
            nodes = _NODE.format(quoted, row_kwh[r0], share[r0])
        else:
            nodes = ",".join(map(_NODE.format, map(_ENCODER.encode, meta.nodes), row_kwh[r0:r1], share[r0:r1]))
        jid = meta.job_id
        yield _JOB.format(
            f'"{jid}"' if _PLAIN_ID(jid) else _ENCODER.encode(jid), kwh[i], total_g[i], op_g[i], emb_g[i],
            mean_i[i], pue, methods[i], cov[i], starts[i], ends[i], nodes, ",".join(periods[po[i] : po[i + 1]]),
        )


_PLAIN_ID = re.compile(r"[0-9A-Za-z_.+-]*\Z").match
"""Job ids JSON writes as they are (Slurm's are digits, `_` and `+`)."""


def _iso_each(epochs) -> list[str]:
    """iso() of each value (whole seconds unless that value has a fraction), vectorised when all are whole."""
    import numpy as np

    if np.all(epochs == np.floor(epochs)):
        return iso_many(epochs)
    return [iso(t) for t in epochs.tolist()]


def _methods(cov: list[float | None]) -> list[str]:
    """method_of() for a whole column."""
    import numpy as np

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
    import numpy as np

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
    import numpy as np

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
