#!/usr/bin/env python3
"""`carbond report` over a month of 200,000 jobs, and the learned power model's error on held-out jobs.

    python3 bench/bench_report.py                     # builds a 200k-job ledger in --workdir, times the report
    python3 bench/bench_report.py --heldout DIR       # also: estimate error against bench_footprint's month
                                                      # (DIR holds jobs.sacct and out.jsonl, e.g. /tmp/carbond-bench)

Target (issue 8): a month of 200,000 jobs reported in under a second. The ledger is written
through carbond.ledger.Ledger and carbond.ledger_columns.record_details, as the daemon does
(so the per-day rollup is filled; a range off whole days is timed too, summed from the jobs);
the report is timed in-process (`summary.totals`, best of --repeat) and as a whole command
(`python -m carbond report`, start-up included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from carbond.estimate import learn_power, size_bin  # noqa: E402
from carbond.ledger import ACCOUNTED, WRITTEN, Entry, Ledger  # noqa: E402
from carbond.ledger_columns import Details, connect, record_details, record_unattributed  # noqa: E402
from carbond.summary import totals  # noqa: E402

MONTH_START = 1704067200  # 2024-01-01T00:00:00Z
N_JOBS = 200_000


def build(workdir: Path, n: int) -> None:
    rng = np.random.default_rng(8)
    end = MONTH_START + np.sort(rng.uniform(0, 30 * 86400, n))
    dur = np.clip(rng.lognormal(np.log(2400), 1.2, n), 60, 2 * 86400)
    cpus = rng.choice([1, 2, 4, 64], n, p=[0.5, 0.3, 0.19, 0.01])
    gpus = np.where(rng.random(n) < 0.1, rng.integers(1, 5, n), 0)
    energy = (4.0 * cpus + 200.0 * gpus) * dur
    emb = 0.02 * dur / 3600 * cpus
    op = energy / 3.6e6 * rng.uniform(80, 250, n)
    accounts = [f"acct{i}" for i in range(50)]
    users = [f"user{i}" for i in range(400)]
    u_idx = rng.integers(0, 400, n)
    a_idx = u_idx % 50  # a user works in one account
    entries, details = [], []
    for i in range(n):
        part, cls = ("gpu", "gpu") if gpus[i] else ("cpu", "cpu")
        jid = str(1_000_000 + i)
        entries.append(Entry(jid, WRITTEN if i % 3 else ACCOUNTED, float(energy[i]), float(op[i] + emb[i]), part,
                             accounts[a_idx[i]], users[u_idx[i]], float(end[i])))
        details.append(Details(jid, float(end[i] - dur[i]), float(op[i]), float(emb[i]), "measured", 1.0, cls,
                               float(cpus[i]), float(gpus[i]), float(200.0 * gpus[i] * dur[i]), "actual", 0.0))
    led = Ledger(workdir, "bench")
    led.record_many(entries)
    led.close()
    record_details(workdir, "bench", details)
    db = connect(workdir)
    slots = MONTH_START + 1800 * np.arange(30 * 48)
    record_unattributed(db, "bench", [(f"cpu-p-{k}", int(s), "cpu", "cpu", 1e5) for k in range(1, 201) for s in slots])
    db.close()


def heldout(month: Path) -> None:
    """Fit W/CPU on jobs ending in the first 20 days, predict the measured energy of the rest: one
    model for all, and (as `carbond estimate` does) one per job size class."""
    rows = {}
    with open(month / "jobs.sacct", encoding="utf-8") as fh:
        header = next(fh).rstrip("\n").split("|")
        col = {k: i for i, k in enumerate(header)}
        for line in fh:
            f = line.rstrip("\n").split("|")
            tres = dict(x.split("=", 1) for x in f[col["AllocTRES"]].split(",") if "=" in x)
            rows[f[col["JobIDRaw"]]] = (float(f[col["Start"]]), float(f[col["End"]]), float(tres.get("cpu", 0)),
                                        float(tres.get("gres/gpu", 0)))
    data = []
    with open(month / "out.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            if d.get("status") == "ok" and d.get("method") == "measured" and d["job_id"] in rows:
                s, e, c, g = rows[d["job_id"]]
                if e > s and c > 0:
                    data.append((e, e - s, c, g, d["energy_kwh"] * 3.6e6))
    a = np.array(data)
    cut = MONTH_START + 20 * 86400
    train, test = a[a[:, 0] < cut], a[a[:, 0] >= cut]
    w_cpu, w_gpu = learn_power(train[:, 2], train[:, 3], train[:, 1], train[:, 4])
    _print("one model", (w_cpu * test[:, 2] + w_gpu * test[:, 3]) * test[:, 1], test, len(train))
    print(f"  ({w_cpu:.3f} W/CPU, {w_gpu:.3f} W/GPU)")
    pred = np.zeros(len(test))
    tb, sb = size_bin(train[:, 2] + train[:, 3]), size_bin(test[:, 2] + test[:, 3])
    for b in np.unique(sb):
        rows = train[tb == b] if (tb == b).sum() >= 5 else train
        a, g = learn_power(rows[:, 2], rows[:, 3], rows[:, 1], rows[:, 4])
        pred[sb == b] = (a * test[sb == b, 2] + g * test[sb == b, 3]) * test[sb == b, 1]
    _print("by size class", pred, test, len(train))


def _print(what: str, pred, test, n_train: int) -> None:
    err = np.abs(pred - test[:, 4]) / test[:, 4]
    print(f"estimate ({what}, fitted on {n_train:,} measured jobs of days 1-20) against {len(test):,} held-out "
          f"jobs of days 21-30: per-job abs error median {100 * np.median(err):.1f} %, p90 "
          f"{100 * np.quantile(err, 0.9):.1f} %; total energy {100 * (pred.sum() - test[:, 4].sum()) / test[:, 4].sum():+.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/carbond-bench-report")
    ap.add_argument("--jobs", type=int, default=N_JOBS)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--heldout", help="bench_footprint's workdir (jobs.sacct, out.jsonl)")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "ledger.sqlite").exists():
        t = time.perf_counter()
        build(work, args.jobs)
        print(f"ledger of {args.jobs:,} jobs built in {time.perf_counter() - t:.1f} s")
    db = connect(work, readonly=True)
    for by in (["account"], ["user"], ["partition", "month"], ["node_class", "day"], ["account", "user", "month"]):
        best = min((_time(lambda by=by: totals(db, "bench", by)) for _ in range(args.repeat)), key=lambda x: x[0])
        lines = totals(db, "bench", by)
        print(f"report --by {','.join(by)}: {best[0] * 1000:.0f} ms wall ({best[1] * 1000:.0f} ms CPU) in-process, "
              f"{len(lines)} lines, "
              f"{sum(x.jobs for x in lines):,} jobs")
    odd = (MONTH_START + 3600, MONTH_START + 30 * 86400)  # not on whole days: summed from the jobs table
    best = min((_time(lambda: totals(db, "bench", ["account"], *odd)) for _ in range(args.repeat)), key=lambda x: x[0])
    print(f"report --by account over a range off whole days (no rollup): {best[0] * 1000:.0f} ms wall "
          f"({best[1] * 1000:.0f} ms CPU) in-process")
    db.close()
    cfg = work / "carbond.yaml"
    cfg.write_text(f"cluster: bench\nstate_dir: {work}\n")
    cmd = [sys.executable, "-m", "carbond", "--config", str(cfg), "report", "--by", "account,month"]
    t = time.perf_counter()
    r0 = os.times()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    r1 = os.times()
    cpu = (r1.children_user + r1.children_system) - (r0.children_user + r0.children_system)
    print(f"whole command `carbond report --by account,month`: {time.perf_counter() - t:.2f} s wall, "
          f"{cpu:.2f} s CPU (start-up included); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.heldout:
        heldout(Path(args.heldout))


def _time(fn) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


if __name__ == "__main__":
    main()
