"""Rendering footprints for people (a compact table) and for programs (JSON lines)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TextIO

from .footprint import JobFootprint
from .times import iso

# Average UK petrol car, DEFRA 2023 conversion factors: ~170 gCO2e per km.
G_PER_CAR_KM = 170.0


def write_json(fps: Iterable[JobFootprint], out: TextIO) -> int:
    """One JSON object per line; returns the count written."""
    n = 0
    for fp in fps:
        out.write(json.dumps(fp.to_dict(), separators=(",", ":")))
        out.write("\n")
        n += 1
    return n


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None or x != x else format(x, fmt)


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
        kind = p.intensity_kind + ("*" if p.stale else "")
        out.write(
            f"  {iso(p.start)[:19].replace('T', ' '):<20} {p.energy_kwh:10.4f} "
            f"{_num(p.intensity_g_per_kwh, '7.0f')} {kind:<10} {_num(p.co2e_g, '10.2f')}\n"
        )


def equivalent(grams: float) -> str:
    """A relatable comparison for users (`carbond show`)."""
    km = grams / G_PER_CAR_KM
    if km >= 1:
        return f"about {km:.1f} km in an average petrol car"
    return f"about {km * 1000:.0f} m in an average petrol car"
