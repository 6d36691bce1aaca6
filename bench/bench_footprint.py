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


CASES = {  # name -> gen_month arguments
    "month": ["--days", "30", "--jobs", "200000", "--wide", "300"],
    "6months": ["--days", "182", "--jobs", "1213334", "--wide", "1820"],
    "sparse": ["--days", "90", "--jobs", "1000", "--wide", "2"],
}


def prepare(work: Path, port: int, fresh: bool, gen: list[str] | None = None) -> VMServer:
    """Start VM on the kept data dir; generate and load the month unless already loaded."""
    vm_dir = work / "vm"
    marker = vm_dir / "loaded"
    if fresh and work.exists():
        shutil.rmtree(work)
    vm_dir.mkdir(parents=True, exist_ok=True)
    server = VMServer(data_dir=str(vm_dir), port=port).start()
    gen_args = ["--vm-url", server.url, "--out", str(work), *(gen or [])]
    if marker.exists() and (work / "jobs.sacct").exists():
        # Files are deterministic and kept; only the VM URL in the config changes.
        gen_month.write_config(work / "carbond.yaml", server.url, work)
        return server
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


def bench_cli(work: Path, server: VMServer, code: Path = ROOT, extra: tuple[str, ...] = ()) -> dict:
    """`carbond footprint --jobs` of the data set, with the carbond of checkout `code`."""
    before = server.export_requests()
    cmd = [sys.executable, "-m", "carbond", "--config", str(work / "carbond.yaml"), "footprint",
           "--jobs", str(work / "jobs.sacct"), "--json", "--stats", *extra]
    timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    env = child_env()
    env["PYTHONPATH"] = str(code) + os.pathsep + env["PYTHONPATH"]
    t0 = time.perf_counter()
    with open(work / "out.jsonl", "wb") as out, open(work / "stderr.txt", "w+") as err:
        # cwd too: `python -m` puts the working directory first on sys.path.
        proc = subprocess.Popen(timer + cmd, env=env, stdout=out, stderr=err, cwd=code)  # noqa: S603
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
    cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", stderr))
    stats = [ln for ln in stderr.splitlines() if ln.startswith("carbond:")]
    fetched = re.search(r"([\d,]+) power samples fetched", stats[-1] if stats else "")
    return {
        "cpu_s": cpu,
        "samples": int(fetched.group(1).replace(",", "")) if fetched else None,
        "command": " ".join(cmd),
        "jobs": jobs,
        "seconds": wall,
        "jobs_per_s": jobs / wall,
        "vm_export_requests": server.export_requests() - before,
        "peak_rss_mb": int(rss.group(1)) / 1024 if rss else usage.ru_maxrss / 1024,
        "cli_stats": stats[-1] if stats else "",
    }


def needed_samples(work: Path, max_gap: float = 300.0, step: float = 30.0) -> int:
    """Samples the jobs need: per node, the union of [start - max_gap, end + max_gap] / step."""
    import numpy as np

    from carbond.hostlist import expand

    spans: dict[str, list[tuple[float, float]]] = {}
    with open(work / "jobs.sacct", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            f = line.split("|")
            for node in expand(f[4]):
                spans.setdefault(node, []).append((float(f[2]) - max_gap, float(f[3]) + max_gap))
    total = 0.0
    for iv in spans.values():
        a = np.array(sorted(iv))
        hi = np.maximum.accumulate(a[:, 1])
        starts = np.concatenate(([True], a[1:, 0] > hi[:-1]))
        grp = np.cumsum(starts) - 1
        lo_g = a[starts, 0]
        hi_g = np.maximum.reduceat(a[:, 1], np.flatnonzero(starts))
        total += float(np.sum(hi_g - lo_g))
        del grp
    return int(total / step)


def show(label: str, r: dict) -> None:
    samples = f"{r['samples']:,} samples fetched, " if r.get("samples") is not None else ""
    print(f"{label}: {r['jobs']:,} jobs in {r['seconds']:.2f} s = {r['jobs_per_s']:,.0f} jobs/s "
          f"(CPU {r['cpu_s']:.1f} s), {r['vm_export_requests']} VictoriaMetrics export requests, {samples}"
          f"peak RSS {r['peak_rss_mb']:.0f} MB")


def extrapolate(workdir: Path) -> None:
    """A year of 2,000 nodes from the measured costs: per sample from fetch_power alone (month),
    per job from the rest of the month's run; checked by predicting the 6-month case."""
    got = {c: json.loads((workdir / c / "result.json").read_text()) for c in CASES
           if (workdir / c / "result.json").exists()}
    if "month" not in got or "fetch" not in got["month"]:
        print("extrapolation: needs the month case")
        return
    month, fetch = got["month"], got["month"]["fetch"]
    per_sample = fetch["seconds"] / fetch["samples"]
    per_job = (month["seconds"] - per_sample * month["samples"]) / month["jobs"]
    year_samples, year_jobs = 2000 * 365 * 2880, 20_000_000
    secs = per_sample * year_samples + per_job * year_jobs
    print("\nextrapolation to a year of 2,000 nodes (30 s samples: 2.10 G samples; 20 M jobs):")
    print("| quantity | measured cost | a year of 2,000 nodes |")
    print("|---|---|---|")
    print(f"| per power sample (fetch_power alone) | {per_sample * 1e9:.0f} ns | {per_sample * year_samples / 3600:.2f} h |")
    print(f"| per job (rest of the month's run) | {per_job * 1e6:.1f} us | {per_job * year_jobs / 3600:.2f} h |")
    print(f"| total | | {secs / 3600:.2f} h ({year_jobs / secs:,.0f} jobs/s) |")
    if "6months" in got:
        six = got["6months"]
        guess = per_sample * six["samples"] + per_job * six["jobs"]
        print(f"| check: 6 months predicted / measured | | {guess:.0f} s / {six['seconds']:.0f} s |")
    if "sparse" in got and "6months" in got:
        floor, busy = got["sparse"]["peak_rss_mb"], got["6months"]["peak_rss_mb"]
        print(f"| peak RSS | {floor:.0f} MB (sparse) + {busy - floor:.0f} MB for 200 busy nodes | at most "
              f"{floor + 10 * (busy - floor):.0f} MB (the busy part x 10; the span does not count) |")


def main() -> int:
    ap = argparse.ArgumentParser(description="carbond end-to-end benchmark")
    ap.add_argument("--workdir", default="/tmp/carbond-bench", help="kept data sets, one directory per case "
                    "(default %(default)s)")
    ap.add_argument("--port", type=int, default=0, help="VictoriaMetrics port (default: a free one)")
    ap.add_argument("--fresh", action="store_true", help="regenerate the data sets")
    ap.add_argument("--fetch-only", action="store_true", help="benchmark fetch_power alone (month)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each measurement")
    ap.add_argument("--cases", default="month,6months,sparse", help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--baseline", type=Path, help="another checkout (e.g. main): its month is measured first, "
                    "then this one's, back to back")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    for case in args.cases.split(","):
        work = Path(args.workdir) / case
        server = prepare(work, args.port or 0, args.fresh, CASES[case])
        try:
            if args.fetch_only:
                f = bench_fetch(work)
                print(f"fetch_power: {f['samples']:,} samples of {f['nodes']} nodes in {f['seconds']:.2f} s "
                      f"({f['samples'] / f['seconds'] / 1e6:.1f} M samples/s), {f['requests']} requests, "
                      f"peak RSS {f['peak_rss_mb']:.0f} MB")
                continue
            fetch = bench_fetch(work) if case == "month" else None
            if fetch:
                print(f"fetch_power alone: {fetch['samples']:,} samples in {fetch['seconds']:.2f} s, "
                      f"{fetch['requests']} requests")
            for _ in range(args.repeat):
                if args.baseline and case == "month":
                    show(f"{case} BEFORE ({args.baseline})", bench_cli(work, server, args.baseline))
                r = bench_cli(work, server)
                show(f"{case} AFTER", r)
                if case == "sparse":
                    need = needed_samples(work)
                    print(f"  the jobs need {need:,} samples; fetched {r['samples'] / need:.2f}x that")
            results[case] = r
            (work / "result.json").write_text(json.dumps({**r, "fetch": fetch} if fetch else r))
            print(f"  command: /usr/bin/time -v {r['command']} > {work / 'out.jsonl'}")
        finally:
            server.stop()
    extrapolate(Path(args.workdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
