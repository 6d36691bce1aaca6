#!/usr/bin/env python3
"""Start-up of small inputs (issue 9): the wall time of whole `carbond` commands, run N times.

Starts its own Debian victoria-metrics on a free loopback port, imports a day of one node's
power, and times a one-job `carbond footprint --jobs J --json` (CSV intensity), `carbond --help`
and `carbond check-config`, beside `python -c pass` and `python -c "import numpy, yaml,
http.client"`: the floor a one-job footprint cannot go below. With `--repo DIR` the carbond of
another checkout is timed too, interleaved run by run with this one (the machine is noisy).
The byte-code of both checkouts is compiled first, as an installed package's is.

    python3 bench/bench_startup.py [--runs 20] [--repo /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from fixtures_vm import VMServer  # noqa: E402

T0 = 1_704_067_200  # 2024-01-01T00:00:00Z


def setup(work: Path, server: VMServer) -> tuple[Path, Path]:
    import numpy as np

    t = T0 + np.arange(0, 86400, 30.0)
    server.import_series("n1", t, 200 + 50 * np.sin(t / 3000))
    server.flush()
    rows = ["from,to,intensity"] + [f"{_iso(T0 + k * 1800)},{_iso(T0 + (k + 1) * 1800)},{150 + k}" for k in range(48)]
    (work / "ci.csv").write_text("\n".join(rows) + "\n")
    cfg = work / "carbond.yaml"
    cfg.write_text(f"state_dir: {work / 'state'}\nvictoriametrics:\n  url: {server.url}\n"
                   f"intensity:\n  provider: csv\n  path: {work / 'ci.csv'}\n"
                   "nodes:\n  - match: n1\n    cpus: 64\n")
    jobs = work / "one.sacct"
    jobs.write_text("JobIDRaw|JobID|Start|End|NodeList|AllocTRES|Partition|Account|User\n"
                    f"1|1|{T0 + 3600}|{T0 + 7200}|n1|cpu=8|p|a|u\n")
    return cfg, jobs


def _iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def wall(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-500:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    ap.add_argument("--repo", type=Path, help="another checkout, timed interleaved with this one")
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="carbond-startup-") as tmp, VMServer() as server:
        work = Path(tmp)
        cfg, jobs = setup(work, server)
        checkouts = {"this": ROOT, **({"other": args.repo.resolve()} if args.repo else {})}
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        for code in checkouts.values():
            subprocess.run([py, "-m", "compileall", "-q", str(code / "carbond")], env=env, check=True,  # noqa: S603
                           stdout=subprocess.DEVNULL)
        commands: dict[str, tuple[list[str], Path]] = {
            "python -c pass": ([py, "-c", "pass"], ROOT),
            "import numpy, yaml, http.client": ([py, "-c", "import numpy, yaml, http.client"], ROOT),
        }
        for name, code in checkouts.items():
            carbond = [py, "-m", "carbond", "--config", str(cfg)]
            commands[f"{name}: footprint, one job"] = ([*carbond, "footprint", "--jobs", str(jobs), "--json"], code)
            commands[f"{name}: --help"] = ([py, "-m", "carbond", "--help"], code)
            commands[f"{name}: check-config"] = ([*carbond, "check-config"], code)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for cmd, code in commands.values():
            wall(cmd, env, code)  # warm the page cache
        for _ in range(args.runs):
            for name, (cmd, code) in commands.items():
                times[name].append(wall(cmd, env, code))
    print(f"{'command':<36} {'min':>7} {'median':>7} {'max':>7}  (ms, {args.runs} runs, interleaved)")
    for name, ts in times.items():
        ms = [1000 * x for x in ts]
        print(f"{name:<36} {min(ms):7.0f} {statistics.median(ms):7.0f} {max(ms):7.0f}")


if __name__ == "__main__":
    main()
