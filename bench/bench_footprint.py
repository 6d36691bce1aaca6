#!/usr/bin/env python3
"""End-to-end accounting benchmark: a synthetic month in a real VictoriaMetrics, then
`carbond footprint --jobs FILE --json` timed with /usr/bin/time -v (peak RSS).

    python3 bench/bench_footprint.py                # generate (first run ~20 s), fetch + CLI
    python3 bench/bench_footprint.py --fetch-only   # only VictoriaClient.fetch_power
    python3 bench/bench_footprint.py --fresh        # regenerate the data set

The data set (VM data dir, jobs.sacct, intensity.csv, carbond.yaml) is kept in --workdir and
reused by later runs; every process this script starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))
import gen_month  # noqa: E402
from fixtures_vm import VMServer  # noqa: E402

FETCH_SNIPPET = """
import json, resource, sys, time
from carbond.config import load
from carbond.victoria import VictoriaClient
cfg = load(sys.argv[1])
nodes = [f"cpu-p-{i}" for i in range(1, 201)]
c = VictoriaClient(cfg.victoriametrics)
t0 = time.perf_counter()
res = c.fetch_power(nodes, float(sys.argv[2]), float(sys.argv[3]))
secs = time.perf_counter() - t0
print(json.dumps({"seconds": secs, "samples": sum(len(t) for t, _ in res.values()), "nodes": len(res),
                  "requests": c.requests_made, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def prepare(work: Path, port: int, fresh: bool) -> VMServer:
    """Start VM on the kept data dir; generate and load the month unless already loaded."""
    vm_dir = work / "vm"
    marker = vm_dir / "loaded"
    if fresh and work.exists():
        shutil.rmtree(work)
    vm_dir.mkdir(parents=True, exist_ok=True)
    server = VMServer(data_dir=str(vm_dir), port=port).start()
    gen_args = ["--vm-url", server.url, "--out", str(work)]
    if marker.exists():
        gen_args.append("--no-load")  # files are deterministic; only the VM URL may change
    # A child process: a forked child's ru_maxrss starts at its parent's, so the generator's
    # memory must never live in the process that starts the measured ones.
    subprocess.run([sys.executable, str(HERE / "gen_month.py"), *gen_args], env=child_env(), check=True)  # noqa: S603
    marker.touch()
    return server


def bench_fetch(work: Path) -> dict:
    lo = gen_month.MONTH_START - 300
    hi = gen_month.MONTH_START + gen_month.DAYS * 86400 + 300
    out = subprocess.run(  # noqa: S603 - fixed argument list
        [sys.executable, "-c", FETCH_SNIPPET, str(work / "carbond.yaml"), str(lo), str(hi)],
        env=child_env(), check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def bench_cli(work: Path, server: VMServer) -> dict:
    before = server.export_requests()
    cmd = [sys.executable, "-m", "carbond", "--config", str(work / "carbond.yaml"), "footprint",
           "--jobs", str(work / "jobs.sacct"), "--json", "--stats"]
    timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    t0 = time.perf_counter()
    with open(work / "out.jsonl", "wb") as out, open(work / "stderr.txt", "w+") as err:
        proc = subprocess.Popen(timer + cmd, env=child_env(), stdout=out, stderr=err)  # noqa: S603
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, if time -v is missing
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        sys.stderr.write(stderr)
        raise SystemExit(f"carbond footprint failed with exit status {proc.returncode}")
    with open(work / "out.jsonl", "rb") as fh:
        jobs = sum(1 for _ in fh)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    stats = [ln for ln in stderr.splitlines() if ln.startswith("carbond:")]
    return {
        "command": " ".join(cmd),
        "jobs": jobs,
        "seconds": wall,
        "jobs_per_s": jobs / wall,
        "vm_export_requests": server.export_requests() - before,
        "peak_rss_mb": int(rss.group(1)) / 1024 if rss else usage.ru_maxrss / 1024,
        "cli_stats": stats[-1] if stats else "",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description="carbond end-to-end benchmark")
    ap.add_argument("--workdir", default="/tmp/carbond-bench", help="kept data set (default %(default)s)")
    ap.add_argument("--port", type=int, default=0, help="VictoriaMetrics port (default: a free one)")
    ap.add_argument("--fresh", action="store_true", help="regenerate the data set")
    ap.add_argument("--fetch-only", action="store_true", help="benchmark fetch_power alone")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each measurement")
    args = ap.parse_args()
    work = Path(args.workdir)
    server = prepare(work, args.port or 0, args.fresh)
    try:
        for _ in range(args.repeat):
            f = bench_fetch(work)
            print(f"fetch_power: {f['samples']:,} samples of {f['nodes']} nodes in {f['seconds']:.2f} s "
                  f"({f['samples'] / f['seconds'] / 1e6:.1f} M samples/s), {f['requests']} requests, "
                  f"peak RSS {f['peak_rss_mb']:.0f} MB")
        if not args.fetch_only:
            for _ in range(args.repeat):
                r = bench_cli(work, server)
                print(f"footprint: {r['jobs']:,} jobs in {r['seconds']:.2f} s = {r['jobs_per_s']:,.0f} jobs/s, "
                      f"{r['vm_export_requests']} VictoriaMetrics export requests, peak RSS {r['peak_rss_mb']:.0f} MB")
                print(f"  {r['cli_stats']}")
            print(f"  command: /usr/bin/time -v {r['command']} > {work / 'out.jsonl'}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
