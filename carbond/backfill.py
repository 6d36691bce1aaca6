"""`carbond backfill`: account, in bulk, every job that ended in a range and has no carbond token.

The same engine as the daemon (one sacct call, a few VictoriaMetrics requests for the whole
range, cached intensity), the same ledger (a job is counted once, whichever path saw it first).
Without --write nothing is changed: it prints what it would write and a summary.
"""

from __future__ import annotations

import sys

from .config import Config
from .engine import build_engine
from .ledger import Ledger
from .publish import WRITTEN, Publisher
from .report import write_json, write_table
from .slurm import SlurmIO, node_cpu_lookup
from .times import parse_time
from .token import format_token, parse


def backfill(cfg: Config, start: str, end: str, write: bool = False, as_json: bool = False, out=None) -> int:
    out = out or sys.stdout
    lo, _ = parse_time(start)
    hi, _ = parse_time(end)
    slurm = SlurmIO(cfg.slurm, cluster=cfg.cluster or None)
    facts = slurm.jobs_ended_between(lo, hi)
    todo = {k: f for k, f in facts.items() if parse(f.field(cfg.slurm.comment_field)) is None}
    with Ledger(cfg.state_dir, cfg.cluster) as ledger:
        known = ledger.known(todo)
        todo = {k: f for k, f in todo.items() if known.get(k) in (None, "dead", "pending-write")}
        engine, _ = build_engine(cfg, node_cpus=node_cpu_lookup(slurm))
        fps = list(engine.account([f.job for f in todo.values()]))
        (write_json if as_json else write_table)(fps, out)
        ok = [(f, fp) for f, fp in zip(todo.values(), fps, strict=True) if fp.status == "ok"]
        summary = f"backfill: {len(facts)} job(s) ended in the range, {len(todo)} without a carbond token"
        if not write:
            for f, fp in ok[:5]:
                print(f"would write to {f.job.label}: {format_token(fp)}", file=sys.stderr)
            print(f"{summary}; {len(ok)} would be written (dry run: add --write)", file=sys.stderr)
            return 0
        lowercases = slurm.lowercases()
        publisher = Publisher(ledger, slurm, None, cfg.slurm.comment_field, lowercases)
        entries = publisher.record([(f.job, fp) for f, fp in ok])
        pending = [(e, f) for e, (f, _) in zip(entries, ok, strict=True) if e.token]
        results = publisher.write([(ledger.get(e.job_id) or e, f) for e, f in pending])
        written = sum(1 for r in results.values() if r == WRITTEN)
        skipped = sum(1 for r in results.values() if isinstance(r, str) and r.startswith("skipped:"))
        failed = len(results) - written - skipped
        print(f"{summary}; written {written}, left unchanged {skipped}, failed {failed}", file=sys.stderr)
        return 1 if failed else 0
