#!/usr/bin/env python3
"""The daemon on the real testbed: job end -> token visible in sacct, and a 1,000-task burst.

    [CARBOND_SLURM=trixie] [CARBOND_TESTBED_DIR=DIR] python3 bench/bench_daemon.py [--jobs 10] [--burst 1000]

It starts (or joins) the single-host Slurm testbed, a VictoriaMetrics, the power feeder (1 s
samples) and `carbond run`, then measures:
  * latency: for --jobs sequential short jobs, sacct End -> the carbond token readable in sacct
    (polled every 0.1 s; End has whole-second resolution);
  * burst: an array of --burst tasks run while carbond is stopped (so they queue in the spool,
    as after an outage), then carbond is started: time to drain, tasks accounted, tokens lost or
    doubled (ledger rows and metrics against sacct), and the daemon's RSS while draining.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from carbond_stack import CarbondStack  # noqa: E402
from fixtures_slurm import acquire, release  # noqa: E402
from fixtures_vm import VMServer  # noqa: E402


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def latency(stack: CarbondStack, slurm, n: int) -> list[float]:
    out = []
    for _ in range(n):
        job = slurm.sbatch(["-n1", "-J", "lat"], "sleep 2")
        while True:
            tok = stack.tokens(job).get(job)
            if tok:
                seen = time.time()
                break
            time.sleep(0.1)
        end = float(slurm.sacct_fields(job, ["End"])["End"])
        out.append(seen - end)
    return out


def burst(stack: CarbondStack, slurm, n: int) -> dict:
    stack.stop()
    # Each task runs a second, so it is accounted and written (a task that ends within the second it
    # started has Start == End in sacct: zero-length, recorded without a token).
    job = slurm.sbatch([f"--array=1-{n}", "-n1", "-J", "burst", "-o", "/dev/null"], "sleep 1")
    t0 = time.monotonic()
    spool = Path(slurm.spool_dir)
    while len(list(spool.glob(f"{job}_*.job"))) < n:
        if time.monotonic() - t0 > 1800:
            raise RuntimeError(f"only {len(list(spool.glob(f'{job}_*.job')))} of {n} spool records after 30 min")
        time.sleep(1)
    ran = time.monotonic() - t0
    time.sleep(2)  # a power sample past the last task's end
    counted = ("written", "unwritable", "pending-write", "accounted")
    before = sum(1 for r in stack.ledger_rows() if r[1] in counted)  # the daemon is down: ask its ledger
    start = time.monotonic()
    stack.start()
    peak = 0.0
    while list(spool.glob(f"{job}_*.job")):
        peak = max(peak, rss_mb(stack.proc.pid)[0])
        time.sleep(0.2)
    drain = time.monotonic() - start
    toks = stack.tokens(job)
    accounted = stack.metrics()[("carbond_jobs_total", (("outcome", "accounted"),))] - before
    rows = [r for r in stack.ledger_rows() if r[0] in {f["JobIDRaw"] for f in slurm.sacct_rows(job, ["JobIDRaw"])}]
    return {
        "tasks": n,
        "array_ran_s": ran,
        "drain_s": drain,
        "with_token": sum(1 for t in toks.values() if t),
        "ledger_rows": len(rows),
        "metrics_accounted_delta": accounted,
        "rss_peak_mb": max(peak, rss_mb(stack.proc.pid)[1]),
        "zero_length": sum(1 for r in rows if r[1] == "zero-length"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--burst", type=int, default=1000)
    args = ap.parse_args()
    # The Slurm series is CARBOND_SLURM (host, trixie, sid), as for the tests.
    slurm = acquire(Path(os.environ.get("CARBOND_TESTBED_DIR") or "/tmp/carbond-testbed"))
    work = Path(tempfile.mkdtemp(prefix="carbond-bench-daemon-"))
    vm = VMServer(data_dir=str(work / "vm")).start()
    stack = CarbondStack(slurm, vm.url, work / "carbond", settle=20)
    try:
        stack.start_feeder(1.0)
        stack.start()
        lat = latency(stack, slurm, args.jobs)
        q = statistics.quantiles(lat, n=10) if len(lat) > 1 else lat
        print(f"job end -> token in sacct: median {statistics.median(lat):.2f} s, max {max(lat):.2f} s, "
              f"p90 {q[-1]:.2f} s over {len(lat)} jobs (feeder samples every 1 s; sacct End is whole seconds)")
        if args.burst:
            b = burst(stack, slurm, args.burst)
            print(f"burst of {b['tasks']} array tasks (run while carbond was stopped, {b['array_ran_s']:.0f} s): "
                  f"drained in {b['drain_s']:.1f} s ({b['tasks'] / b['drain_s']:.0f} jobs/s), "
                  f"{b['with_token']} with a token, {b['zero_length']} zero-length (no token), "
                  f"{b['ledger_rows']} ledger rows, metrics +{b['metrics_accounted_delta']:.0f} accounted, "
                  f"daemon peak RSS {b['rss_peak_mb']:.0f} MB")
    finally:
        stack.close()
        vm.close()
        release(slurm)
    print(f"command: python3 bench/bench_daemon.py --jobs {args.jobs} --burst {args.burst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
