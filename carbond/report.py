"""Rendering footprints for people (a compact table) and for programs (JSON lines)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TextIO

from .footprint import FULL, Batch, JobFootprint, columns, footprints
from .times import iso, iso_many

if TYPE_CHECKING:
    import numpy as np

# Average UK petrol car, DEFRA 2023 conversion factors: ~170 gCO2e per km.
G_PER_CAR_KM = 170.0


_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False, allow_nan=False)
_PERIOD = ',{{"start":"{}","end":"{}","energy_kwh":{},"intensity_g_per_kwh":{},"intensity_kind":"{}","co2e_g":{}}}'
_NODE = '{{"node":{},"energy_kwh":{},"share":{}}}'
_HEAD = ('{{"job_id":{},"status":"ok","energy_kwh":{},"co2e_g":{},"operational_g":{},"embodied_g":{},'
         '"intensity_g_per_kwh":{},"pue":{},"method":"{}","coverage":{},"start":"{}","end":"{}",'
         '"nodes":[{}],"periods":[')


def write_json(fps: Iterable[JobFootprint], out: TextIO) -> int:
    """One JSON object per line (JobFootprint.to_dict); returns the count."""
    return _write_lines((_ENCODER.encode(fp.to_dict()) for fp in fps), out)


def write_json_batches(batches: Iterable[Batch], out: TextIO, workers: int = 0) -> int:
    """The same lines as write_json, formatted straight from each batch's columns.

    A million half-hour periods would otherwise be a million objects, then dicts, then encoder
    calls. Jobs with an error or a note go through to_dict, the reference for the format.
    With `workers` > 1 batches are formatted in that many forked processes (in order, at most
    two per worker in flight, so memory stays bounded); create no threads before calling.
    """
    if workers > 1:
        return _write_parallel(batches, out, workers)
    n = 0
    for b in batches:
        text, count = format_batch(b)
        out.write(text)
        n += count
    return n


def format_batch(b: Batch) -> tuple[str, int]:
    """A batch's JSON lines as one string, and how many."""
    text = "".join(_batch_pieces(b))
    return text, text.count("\n")


def _write_parallel(batches: Iterable[Batch], out: TextIO, workers: int) -> int:
    import multiprocessing
    from collections import deque

    n = 0
    # fork before the engine starts its threads: the children need nothing but this function.
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending: deque = deque()
        for b in batches:
            pending.append(pool.apply_async(format_batch, (b,)))
            while len(pending) > 2 * workers or (pending and pending[0].ready()):
                text, count = pending.popleft().get()
                out.write(text)
                n += count
        while pending:
            text, count = pending.popleft().get()
            out.write(text)
            n += count
    return n


def batch_lines(b: Batch) -> Iterator[str]:
    """The batch's JSON lines one by one (format_batch, split)."""
    yield from format_batch(b)[0].splitlines()


def _batch_pieces(b: Batch) -> list[str]:
    """The batch's output as pieces that join into its lines, each line ending in a newline.

    Built column-wise so that no Python code runs per job or per period (this is the bulk
    path's floor): every number goes through repr once, every template through one `map`, and
    the pieces are placed with index arithmetic. A plain job is its head, its periods (each
    with a leading comma but the first) and `]}`; any other slot is one whole line from to_dict.
    """
    import numpy as np

    if b.acc is None or b.alloc is None:
        return [_ENCODER.encode(s.to_dict()) + "\n" for s in b.slots if isinstance(s, JobFootprint)]
    c = columns(b.acc, b.alloc)
    idx = np.array([s if isinstance(s, int) else -1 for s in b.slots], dtype=np.int64)
    plain = _plain(b, c)
    slot_plain = np.zeros(idx.size, dtype=bool)
    slot_plain[idx >= 0] = plain[idx[idx >= 0]]
    jp = idx[slot_plain]  # plain jobs, in slot order
    po = np.asarray(c.period_offsets, dtype=np.int64)
    k = (po[1:] - po[:-1])[jp]
    size = np.ones(idx.size, dtype=np.int64)
    size[slot_plain] = 2 + k
    first = np.cumsum(size) - size
    seq = np.empty(int(size.sum()), dtype=object)
    head = first[slot_plain]
    seq[head] = _heads(b, c, jp)
    seq[head + 1 + k] = "]}\n"
    periods = np.array(list(map(_PERIOD.format, c.p_start, c.p_end, *_period_text(c))), dtype=object)
    within = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)
    seq[np.repeat(head + 1, k) + within] = periods[np.repeat(po[jp], k) + within]
    lead = head[k > 0] + 1
    seq[lead] = [p[1:] for p in seq[lead].tolist()]
    other = np.flatnonzero(~slot_plain)
    if other.size:
        slow = list(footprints(b.acc, b.alloc, b.metas, b.pue, c)) if (idx[other] >= 0).any() else []
        seq[first[other]] = [_ENCODER.encode((slow[int(idx[s])] if idx[s] >= 0 else b.slots[s]).to_dict()) + "\n"
                             for s in other.tolist()]
    return seq.tolist()


def _plain(b: Batch, c) -> np.ndarray:
    """Per job: accounted without any note (footprint.is_plain, for the whole batch)."""
    import numpy as np

    noted = np.array([bool(m.warnings or m.gpu) for m in b.metas], dtype=bool)
    acc = b.acc
    return ~(noted | np.asarray(c.stale, dtype=bool) | np.asarray(c.forecast, dtype=bool)
             | np.isnan(acc.energy_j) | np.isnan(acc.operational_g))


def _period_text(c) -> tuple[list[str], list[str], list[str], list[str]]:
    """energy, intensity, kind and CO2e of every period, as JSON text."""
    return _json_num(c.p_kwh), _json_few(c.p_intensity), c.p_kind, _json_num(c.p_g)


def _heads(b: Batch, c, jp) -> list[str]:
    """Each plain job's line up to and including `"periods":[`, for the job indices `jp`."""
    import numpy as np

    def take(values: list) -> list:
        return np.array(values, dtype=object)[jp].tolist()

    metas = b.metas
    ro = np.asarray(c.row_offsets, dtype=np.int64)
    names = [n for m in metas for n in m.nodes]
    quoted = {n: _ENCODER.encode(n) for n in set(names)}
    rows = np.array(list(map(_NODE.format, map(quoted.__getitem__, names), _json_num(c.row_kwh),
                             _json_few(c.share))), dtype=object)
    nodes = rows[np.minimum(ro[:-1], max(rows.size - 1, 0))] if rows.size else np.full(len(metas), "", dtype=object)
    for i in np.flatnonzero(ro[1:] - ro[:-1] != 1).tolist():
        nodes[i] = ",".join(rows[ro[i] : ro[i + 1]].tolist())
    ids = [_quote_id(metas[i].job_id) for i in jp.tolist()]
    pue = [_json_num([b.pue])[0]] * len(ids)
    return list(map(_HEAD.format, ids, take(_json_num(c.kwh)), take(_json_num(c.total_g)), take(_json_num(c.op_g)),
                    take(_json_few(c.emb_g)), take(_json_num(c.mean_i)), pue, take(_methods(c.cov)),
                    take(_json_few(c.cov)), take(_iso_each(b.alloc.start)), take(_iso_each(b.alloc.end)),
                    nodes[jp].tolist()))


def _quote_id(jid: str) -> str:
    return f'"{jid}"' if _PLAIN_ID(jid) else _ENCODER.encode(jid)


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

    from .footprint import significant

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
