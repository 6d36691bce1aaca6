"""`carbond report`: totals from the ledger alone, grouped as a site asks for them, in one SQL pass.

No Slurm and no VictoriaMetrics: every figure was fixed when the job was counted. Scope 2
(operational: energy x grid intensity x PUE) and Scope 3 (embodied) stay apart; `measured_share`
is the energy-weighted fraction of node time that was measured; `forecast_share` the fraction
of energy priced at a forecast rather than an actual intensity. Energy no job carries (idle and
unallocated node time) is reported per node class, partition, day or month, and as one
`(unattributed)` line when grouping by account or user, where it belongs to nobody.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TextIO

from .errors import JobInputError
from .ledger import COUNTED, columns_of
from .units import J_PER_KWH

GROUPS = {
    "account": "account",
    "user": "user",
    "partition": "partition",
    "node_class": "COALESCE(node_class, '')",
    "day": "strftime('%Y-%m-%d', end_time, 'unixepoch')",
    "month": "strftime('%Y-%m', end_time, 'unixepoch')",
}
UNATTRIBUTED = "(unattributed)"


@dataclass(frozen=True)
class Line:
    group: tuple[str, ...]
    jobs: int
    energy_kwh: float
    co2e_g: float
    operational_g: float
    """Scope 2."""
    embodied_g: float
    """Scope 3."""
    gpu_energy_kwh: float
    unattributed_kwh: float
    measured_share: float | None
    forecast_share: float | None
    intensity_g_per_kwh: float | None
    """Operational grams per kWh of job energy (PUE included)."""
    spread_kwh: float = 0.0
    """`idle: spread`: idle node energy handed to these jobs by `carbond idle`, already in energy_kwh
    and co2e_g (the jobs' tokens do not have it); counted in the half-hour it was drawn."""


def parse_groups(by: str) -> list[str]:
    keys = [k.strip() for k in by.split(",") if k.strip()]
    bad = [k for k in keys if k not in GROUPS]
    if bad or not keys:
        raise JobInputError(f"--by: unknown grouping {', '.join(bad) or '(none)'}; valid: {', '.join(GROUPS)}")
    return keys


def totals(db: sqlite3.Connection, cluster: str, by: Sequence[str], start: float | None = None,
           end: float | None = None) -> list[Line]:
    """One line per group (jobs that ended in [start, end)), sorted by group, plus unattributed energy."""
    cols = columns_of(db)
    rolled = "rolled_up" in cols and bool(db.execute("SELECT 1 FROM sqlite_master WHERE name='rollup'").fetchone()) \
        and all(t is None or t % 86400 == 0 for t in (start, end))
    rows = _job_rows(db, cols, cluster, by, start, end, only_without_details=rolled)
    if rolled:
        rows += _rollup_rows(db, cluster, by, start, end)
    n = len(by)
    sums: dict[tuple[str, ...], list[float]] = {}
    dated = [i for i, k in enumerate(by) if k in ("day", "month")]
    for r in rows:
        g = ["" if v is None else str(v) for v in r[:n]]
        for i in dated:
            g[i] = _date(r[i], by[i])
        acc = sums.setdefault(tuple(g), [0] * 9)
        for i, v in enumerate(r[n:]):
            acc[i] += v
    for g, (ej, co2) in _spread(db, cluster, by, start, end).items():
        acc = sums.setdefault(g, [0] * 9)
        for i, v in ((1, ej), (2, co2), (3, co2), (6, ej), (8, ej)):  # energy, CO2e, Scope 2, measured, spread
            acc[i] += v
    out: dict[tuple[str, ...], Line] = {}
    for g, (jobs, ej, co2, opg, embg, gpuj, measj, fcj, spj) in sums.items():
        out[g] = Line(g, jobs, ej / J_PER_KWH, co2, opg, embg, gpuj / J_PER_KWH, 0.0,
                      measj / ej if ej else None, fcj / ej if ej else None, opg / (ej / J_PER_KWH) if ej else None,
                      spj / J_PER_KWH)
    for g, kwh in _unattributed(db, cluster, by, start, end).items():
        line = out.get(g) or Line(g, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None, None)
        out[g] = Line(**{**asdict(line), "group": g, "unattributed_kwh": line.unattributed_kwh + kwh})
    return [out[g] for g in sorted(out)]


def _job_rows(db, cols: set[str], cluster: str, by: Sequence[str], start, end, only_without_details: bool):
    """Grouped sums straight from `jobs` (all counted jobs, or only those not in the rollup yet)."""

    def col(name: str, default: str = "NULL") -> str:
        return name if name in cols else default

    cov = f"COALESCE({col('coverage')}, CASE {col('method')} WHEN 'estimated' THEN 0.0 ELSE 1.0 END)"
    emb = f"COALESCE({col('embodied_g')}, 0.0)"
    op = f"COALESCE({col('operational_g')}, co2e_g - {emb})"
    # Days and months are grouped as a whole UTC day number in SQL (formatting a date per row costs
    # more than the rest of the query) and named and rolled up by totals(), over the few grouped rows.
    keys = [GROUPS[k] if (k != "node_class" or "node_class" in cols) else "''" for k in by]
    keys = ["CAST(end_time / 86400 AS INTEGER)" if k in ("day", "month") else s for k, s in zip(by, keys, strict=True)]
    where, args = _range("end_time", cluster, start, end)
    if only_without_details:
        where += " AND rolled_up IS NULL"
    q = (f"SELECT {', '.join(keys)}, COUNT(*), SUM(energy_j), SUM(co2e_g), SUM({op}), SUM({emb}), "
         f"SUM(COALESCE({col('gpu_energy_j')}, 0.0)), SUM(energy_j * {cov}), "
         f"SUM(COALESCE({col('forecast_energy_j')}, 0.0)) FROM jobs "
         f"WHERE {where} AND state IN ({', '.join('?' * len(COUNTED))}) GROUP BY {', '.join(keys)}")
    return db.execute(q, (*args, *COUNTED)).fetchall()


def _rollup_rows(db, cluster: str, by: Sequence[str], start, end):
    """Grouped sums from the per-day rollup (a few rows per user and day, not one per job)."""
    keys = ["day" if k in ("day", "month") else k for k in by]
    where, args = _range("day", cluster, start and start // 86400, end and end // 86400)
    q = (f"SELECT {', '.join(keys)}, SUM(jobs), SUM(energy_j), SUM(co2e_g), SUM(operational_g), SUM(embodied_g), "
         f"SUM(gpu_energy_j), SUM(measured_j), SUM(forecast_energy_j) FROM rollup WHERE {where} "
         f"GROUP BY {', '.join(keys)}")
    return db.execute(q, args).fetchall()


def _spread(db, cluster: str, by: Sequence[str], start, end) -> dict[tuple[str, ...], tuple[float, float]]:
    """(joules, grams) of idle energy spread to jobs (`idle: spread`), per group."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name='idle_spread'").fetchone():
        return {}
    where, args = _range("slot", cluster, start, end)
    q = (f"SELECT account, user, partition, node_class, CAST(slot / 86400 AS INTEGER), SUM(energy_j), SUM(co2e_g) "
         f"FROM idle_spread WHERE {where} GROUP BY 1, 2, 3, 4, 5")
    out: dict[tuple[str, ...], tuple[float, float]] = {}
    for account, user, partition, cls, day, joules, grams in db.execute(q, args).fetchall():
        pick = {"account": account, "user": user, "partition": partition, "node_class": cls,
                "day": _date(day, "day"), "month": _date(day, "month")}
        g = tuple(pick[k] for k in by)
        j0, g0 = out.get(g, (0.0, 0.0))
        out[g] = (j0 + joules, g0 + grams)
    return out


def _date(day: int | None, kind: str) -> str:
    if day is None:
        return ""
    text = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
    return text if kind == "day" else text[:7]


def _range(column: str, cluster: str, start: float | None, end: float | None) -> tuple[str, list]:
    where, args = ["cluster=?"], [cluster]
    if start is not None:
        where.append(f"{column} >= ?")
        args.append(start)
    if end is not None:
        where.append(f"{column} < ?")
        args.append(end)
    return " AND ".join(where), args


def _unattributed(db, cluster: str, by: Sequence[str], start, end) -> dict[tuple[str, ...], float]:
    """Unattributed kWh per group, from the per-day sums (a few rows a day), rolled up here; a range
    that does not fall on UTC days is summed from the node-half-hours instead (slower)."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='unattributed_daily'").fetchone():
        return {}
    if all(t is None or t % 86400 == 0 for t in (start, end)):
        where, args = _range("day", cluster, start and start // 86400, end and end // 86400)
        q = f"SELECT partition, node_class, day, energy_j FROM unattributed_daily WHERE {where}"
    else:
        where, args = _range("slot", cluster, start, end)
        q = (f"SELECT partition, node_class, CAST(slot / 86400 AS INTEGER), SUM(energy_j) FROM unattributed "
             f"WHERE {where} GROUP BY 1, 2, 3")
    out: dict[tuple[str, ...], float] = {}
    for part, cls, day, joules in db.execute(q, args).fetchall():
        pick = {"partition": part, "node_class": cls, "day": _date(day, "day"), "month": _date(day, "month")}
        g = tuple(pick.get(k, UNATTRIBUTED) for k in by)
        out[g] = out.get(g, 0.0) + joules / J_PER_KWH
    return out


HEADERS = ("jobs", "energy_kwh", "co2e_g", "operational_g", "embodied_g", "gpu_energy_kwh", "unattributed_kwh",
           "measured_share", "forecast_share", "intensity_g_per_kwh", "spread_kwh")


def write(lines: list[Line], by: Sequence[str], fmt: str, out: TextIO) -> None:
    if fmt == "json":
        for line in lines:
            d = asdict(line)
            d.update(zip(by, d.pop("group"), strict=True))
            out.write(json.dumps(d) + "\n")
        return
    rows = [[*line.group, *(_num(getattr(line, h)) for h in HEADERS)] for line in lines]
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow([*by, *HEADERS])
        w.writerows(rows)
        return
    head = [*by, "jobs", "kWh", "CO2e g", "Scope2 g", "Scope3 g", "GPU kWh", "unattr. kWh", "measured",
            "forecast", "g/kWh", "spread kWh"]
    table = [head] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        out.write("  ".join(c.ljust(w) if i < len(by) else c.rjust(w) for i, (c, w) in
                            enumerate(zip(r, widths, strict=True))).rstrip() + "\n")


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.6g}"


def report(cfg, by: str = "account", fmt: str = "table", start: str | None = None, end: str | None = None,
           out: TextIO | None = None) -> int:
    """The `carbond report` command: reads the ledger of `cfg.state_dir` read-only."""
    import sys

    from .ledger_columns import connect
    from .times import parse_time

    groups = parse_groups(by)
    a = parse_time(start)[0] if start else None
    b = parse_time(end)[0] if end else None
    db = connect(cfg.state_dir, readonly=True)
    try:
        lines = totals(db, cfg.cluster, groups, a, b)
    finally:
        db.close()
    write(lines, groups, fmt, out or sys.stdout)
    return 0


def run(args, cfg) -> int:
    return report(cfg, args.by, args.fmt, args.start, args.end)
