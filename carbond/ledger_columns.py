"""What the ledger keeps beyond the counted totals, for `carbond report` and `carbond estimate`.

The jobs table gains columns by `ALTER TABLE ADD COLUMN` where they are missing, so this works
on a ledger of any age and beside other schema changes (a column someone else already added
is left as it is). Unattributed node energy lives in a table of its own, one row per node and
UTC half-hour. Rows recorded before the migration keep NULLs; the report reads them as
"measured, all operational, no GPUs".

The daemon calls `record_details(ledger.path, ledger.cluster, [Details.of(job, fp, cls)])` right
after `Ledger.record_many` for the jobs it counted (a second connection to the WAL database).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from .ledger import COUNTED, FILENAME, LedgerError, add_columns, check_file, columns_of

COLUMNS = {
    "start_time": "REAL",
    "operational_g": "REAL",
    "embodied_g": "REAL",
    "method": "TEXT",
    "coverage": "REAL",
    "node_class": "TEXT",
    "cpus": "REAL",
    "gpus": "REAL",
    "gpu_energy_j": "REAL",
    "intensity_kind": "TEXT",
    "forecast_energy_j": "REAL",
    "rolled_up": "INTEGER",
    "charged_s": "REAL",
}
"""Column -> SQL type added to `jobs`; every one nullable."""

_UNATTRIBUTED = """
CREATE TABLE IF NOT EXISTS unattributed (
    cluster    TEXT NOT NULL,
    node       TEXT NOT NULL,
    slot       INTEGER NOT NULL,
    partition  TEXT NOT NULL DEFAULT '',
    node_class TEXT NOT NULL DEFAULT '',
    energy_j   REAL NOT NULL,
    PRIMARY KEY (cluster, node, slot)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS unattributed_slot ON unattributed (cluster, slot);
CREATE TABLE IF NOT EXISTS unattributed_daily (
    cluster    TEXT NOT NULL,
    day        INTEGER NOT NULL,
    partition  TEXT NOT NULL,
    node_class TEXT NOT NULL,
    energy_j   REAL NOT NULL,
    PRIMARY KEY (cluster, day, partition, node_class)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup (
    cluster    TEXT NOT NULL,
    day        INTEGER NOT NULL,
    account    TEXT NOT NULL,
    user       TEXT NOT NULL,
    partition  TEXT NOT NULL,
    node_class TEXT NOT NULL,
    jobs       INTEGER NOT NULL,
    energy_j   REAL NOT NULL,
    co2e_g     REAL NOT NULL,
    operational_g REAL NOT NULL,
    embodied_g REAL NOT NULL,
    gpu_energy_j REAL NOT NULL,
    measured_j REAL NOT NULL,
    forecast_energy_j REAL NOT NULL,
    PRIMARY KEY (cluster, day, account, user, partition, node_class)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idle_spread (
    cluster    TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    slot       INTEGER NOT NULL,
    account    TEXT NOT NULL,
    user       TEXT NOT NULL,
    partition  TEXT NOT NULL,
    node_class TEXT NOT NULL,
    energy_j   REAL NOT NULL,
    co2e_g     REAL NOT NULL,
    PRIMARY KEY (cluster, job_id, slot)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_not_rolled_up ON jobs (cluster, end_time) WHERE rolled_up IS NULL;
"""
# `rollup` holds the report's per-day sums: a job enters them once, when its details are recorded
# (`rolled_up` goes from NULL to 1: carbond's own marker, whatever else fills `method`); counted jobs
# not rolled up are summed from `jobs` directly (the partial index finds them), so the report's
# totals always equal the ledger's sums.
DAY = 86400


def migrate(db: sqlite3.Connection) -> list[str]:
    """Add the missing columns and the unattributed table; the columns added (none: up to date)."""
    if not columns_of(db):
        raise LedgerError("the ledger has no jobs table yet (open it with carbond.ledger.Ledger first)")
    added = add_columns(db, COLUMNS.items())
    db.executescript(_UNATTRIBUTED)
    return added


def connect(state_dir: str | Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the ledger in `state_dir`, migrated unless `readonly`."""
    path = Path(state_dir) / FILENAME
    if not check_file(path):  # never let sqlite create an empty file where the ledger belongs
        raise LedgerError(f"no ledger at {path}: the daemon has not accounted any job here yet")
    try:
        uri = f"file:{path}?mode=ro" if readonly else str(path)
        db = sqlite3.connect(uri, uri=readonly, timeout=30, isolation_level=None)
        if not readonly:
            migrate(db)
        return db
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open the ledger {path}: {exc}") from None


@dataclass(frozen=True)
class Details:
    """One counted job's breakdown, as the report and the estimator need it."""

    job_id: str
    start_time: float | None = None
    operational_g: float | None = None
    embodied_g: float | None = None
    method: str | None = None
    coverage: float | None = None
    node_class: str | None = None
    cpus: float | None = None
    gpus: float | None = None
    gpu_energy_j: float | None = None
    intensity_kind: str | None = None
    forecast_energy_j: float | None = None
    charged_s: float | None = None
    """Seconds the job was charged for: its runs without their suspended intervals (`charged_seconds`)."""

    @classmethod
    def of(cls, job: object, fp: object, node_class: str | None = None) -> Details:
        """From a carbond.jobs.Job and its JobFootprint (status ok)."""
        periods = getattr(fp, "periods", ())
        gpu_energy_j = (getattr(fp, "gpu_energy_kwh", None) or 0.0) * 3.6e6
        fc = sum(p.energy_kwh or 0.0 for p in periods if p.intensity_kind.startswith("forecast")) * 3.6e6
        kinds = {p.intensity_kind.removesuffix("-stale") for p in periods}
        return cls(
            job_id=str(getattr(job, "job_id", "")),
            start_time=getattr(job, "start", None),
            operational_g=getattr(fp, "operational_g", None),
            embodied_g=getattr(fp, "embodied_g", None),
            method=getattr(fp, "method", None),
            coverage=getattr(fp, "coverage", None),
            node_class=node_class,
            cpus=float(sum(getattr(job, "cpus", ()) or ())) or None,
            gpus=float(getattr(job, "gpus", 0) or 0),
            gpu_energy_j=gpu_energy_j,
            intensity_kind=kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None),
            forecast_energy_j=fc,
            charged_s=charged_seconds(periods),
        )


def charged_seconds(periods) -> float | None:
    """Wall-clock seconds covered by a footprint's periods (the union of their [start, end]).

    The periods are cut from the pieces the job was accounted as: every run (`sacct -D`), each
    without its recorded suspend intervals, so this is the run time without suspended time
    (end - start of the ledger row is the last run only, suspended seconds included). A run
    charged pro rata (intervals unknown) spans its whole run here: its method is not `measured`.
    None when there are no periods."""
    from .times import parse_time

    chains: list[list[str]] = []  # consecutive periods that meet (same text): only their ends are parsed
    for p in periods:
        if chains and chains[-1][1] == p.start:
            chains[-1][1] = p.end
        else:
            chains.append([p.start, p.end])
    spans = sorted((parse_time(a)[0], parse_time(b)[0]) for a, b in chains)
    if not spans:
        return None
    total, (lo, hi) = 0.0, spans[0]
    for a, b in spans[1:]:
        if a > hi:
            total, lo = total + hi - lo, a
        hi = max(hi, b)
    return total + hi - lo


def record_details(state_dir_or_db: str | Path | sqlite3.Connection, cluster: str, details: Iterable[Details]) -> int:
    """Fill the breakdown of jobs already in the ledger (one transaction); rows updated."""
    db = state_dir_or_db if isinstance(state_dir_or_db, sqlite3.Connection) else None
    own = db is None
    if own:
        p = Path(state_dir_or_db)  # type: ignore[arg-type]
        db = connect(p.parent if p.name == FILENAME else p)
    names = [f.name for f in fields(Details)][1:]
    sets = ", ".join(f"{n}=?" for n in names)
    q = (f"UPDATE jobs SET {sets}, rolled_up=1 WHERE cluster=? AND job_id=? AND rolled_up IS NULL "
         f"AND end_time IS NOT NULL AND state IN ({', '.join('?' * len(COUNTED))})")
    try:
        db.execute("BEGIN IMMEDIATE")
        n = 0
        for d in details:
            values = astuple(d)
            if db.execute(q, (*values[1:], cluster, values[0], *COUNTED)).rowcount:
                n += 1
                db.execute(_ADD, (cluster, values[0]))
        db.execute("COMMIT")
        return n
    except sqlite3.Error as exc:
        db.execute("ROLLBACK")
        raise LedgerError(f"cannot write job details to the ledger: {exc}") from None
    finally:
        if own:
            db.close()


_ADD = """
INSERT INTO rollup SELECT cluster, CAST(end_time / 86400 AS INTEGER), account, user, partition,
    COALESCE(node_class, ''), 1, energy_j, co2e_g, COALESCE(operational_g, co2e_g - COALESCE(embodied_g, 0)),
    COALESCE(embodied_g, 0), COALESCE(gpu_energy_j, 0),
    energy_j * COALESCE(coverage, CASE method WHEN 'estimated' THEN 0.0 ELSE 1.0 END),
    COALESCE(forecast_energy_j, 0)
FROM jobs WHERE cluster=? AND job_id=?
ON CONFLICT DO UPDATE SET jobs=jobs+1, energy_j=energy_j+excluded.energy_j, co2e_g=co2e_g+excluded.co2e_g,
    operational_g=operational_g+excluded.operational_g, embodied_g=embodied_g+excluded.embodied_g,
    gpu_energy_j=gpu_energy_j+excluded.gpu_energy_j, measured_j=measured_j+excluded.measured_j,
    forecast_energy_j=forecast_energy_j+excluded.forecast_energy_j
"""


def record_unattributed(db: sqlite3.Connection, cluster: str,
                        rows: Iterable[tuple[str, int, str, str, float]]) -> None:
    """(node, slot, partition, node_class, joules) per node and half-hour; a re-run replaces.

    The per-day sums the report reads (`unattributed_daily`) are rebuilt for the days touched."""
    rows = list(rows)
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany("INSERT OR REPLACE INTO unattributed VALUES (?, ?, ?, ?, ?, ?)",
                       ((cluster, *r) for r in rows))
        for day in sorted({int(r[1]) // DAY for r in rows}):
            db.execute("DELETE FROM unattributed_daily WHERE cluster=? AND day=?", (cluster, day))
            db.execute("INSERT INTO unattributed_daily SELECT cluster, ?, partition, node_class, SUM(energy_j) "
                       "FROM unattributed WHERE cluster=? AND slot >= ? AND slot < ? GROUP BY partition, node_class",
                       (day, cluster, day * DAY, (day + 1) * DAY))
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        db.execute("ROLLBACK")
        raise LedgerError(f"cannot write unattributed energy to the ledger: {exc}") from None


def after_record(state_dir: str | Path, cfg, pairs, new: Iterable[bool], metrics=None) -> int:
    """The daemon's one call after `Ledger.record_many`: the breakdown of the newly counted jobs into
    the ledger and their GPU energy into the metrics. `pairs`: (Job, JobFootprint) as recorded."""
    details = []
    for (job, fp), is_new in zip(pairs, new, strict=True):
        if not is_new or getattr(fp, "status", "") != "ok":
            continue
        nodes = getattr(job, "nodes", ())
        cls = cfg.node_class(nodes[0]) if nodes else None
        d = Details.of(job, fp, cls.label if cls else "")
        details.append(d)
        if metrics is not None and d.gpu_energy_j:
            metrics.add_gpu(job.partition, job.account, job.user, d.gpu_energy_j)
    return record_details(state_dir, cfg.cluster, details) if details else 0


def metric_totals(read, cluster: str) -> tuple[dict[tuple[str, str, str], float], dict[str, float]]:
    """(partition, account, user) -> GPU joules, and partition -> unattributed joules, for the metrics at
    scrape time; `read(sql, params)` is Ledger.read. Empty while the tables do not exist yet (no
    migration has run: no job details and no closed half-hour recorded)."""
    have = {r[0] for r in read("SELECT name FROM sqlite_master WHERE type='table' AND name IN "
                               "('rollup', 'unattributed_daily')")}
    gpu: dict[tuple[str, str, str], float] = {}
    if "rollup" in have:
        for p, a, u, j in read("SELECT partition, account, user, SUM(gpu_energy_j) FROM rollup WHERE cluster=? "
                               "AND gpu_energy_j > 0 GROUP BY partition, account, user", (cluster,)):
            gpu[(p, a, u)] = float(j)
    idle: dict[str, float] = {}
    if "unattributed_daily" in have:
        for p, j in read("SELECT partition, SUM(energy_j) FROM unattributed_daily WHERE cluster=? GROUP BY partition",
                         (cluster,)):
            idle[p] = float(j)
    return gpu, idle


def record_spread(db: sqlite3.Connection, cluster: str,
                  rows: Iterable[tuple[str, int, str, str, str, str, float, float]]) -> None:
    """`idle: spread`: (job, slot, account, user, partition, node class, joules, grams) a job was given
    of its nodes' idle energy in a half-hour; a re-run replaces. The job's token is not changed."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany("INSERT OR REPLACE INTO idle_spread VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       ((cluster, *r) for r in rows))
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        db.execute("ROLLBACK")
        raise LedgerError(f"cannot write spread idle energy to the ledger: {exc}") from None
