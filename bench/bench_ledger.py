#!/usr/bin/env python3
"""Ledger: insert rate with the running-totals triggers, and what a /metrics scrape costs on a big ledger.

    .venv/bin/python bench/bench_ledger.py [--jobs 1000000]

A scrape reads the running totals (O(partition x account x user groups)); a full scan of the
same ledger is printed beside it for comparison.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from carbond import ledger as L  # noqa: E402
from carbond.metrics import Metrics  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=1_000_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d, L.Ledger(d, "c1") as led:
        t0 = time.perf_counter()
        step = 50_000
        for k in range(0, args.jobs, step):
            led.record_many([L.Entry(str(i), L.WRITTEN, 1.0, 1.0, partition=f"p{i % 5}", account=f"a{i % 50}",
                                     user=f"u{i % 500}") for i in range(k, min(k + step, args.jobs))])
        insert = time.perf_counter() - t0
        reg = CollectorRegistry()
        Metrics(reg, "c1").resume(led)
        t0 = time.perf_counter()
        generate_latest(reg)
        scrape = time.perf_counter() - t0
        t0 = time.perf_counter()
        led.totals(), led.outcome_counts(), led.skipped_counts(), led.recovered_count()
        scan = time.perf_counter() - t0
    print(f"ledger: {args.jobs} jobs inserted in {insert:.1f} s ({args.jobs / insert:,.0f} jobs/s); "
          f"scrape {scrape * 1000:.1f} ms from running totals; full scan {scan:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
