#!/usr/bin/env python3
"""A deterministic synthetic month for the accounting benchmark.

200 nodes `cpu-p-[1-200]` (64 CPUs, 120 W idle, 450 W busy) with a power sample every 30 s,
loaded into a VictoriaMetrics; 200,000 jobs as a `sacct -P` table (epoch seconds), mostly
short 1-4 CPU jobs sharing nodes plus a few hundred multi-node multi-day jobs; a half-hourly
intensity CSV and the matching carbond config. Node power follows the CPUs the jobs hold,
so the numbers carbond reports are plausible, and a few gaps exercise the estimate path.

    python3 bench/gen_month.py --vm-url http://127.0.0.1:8428 --out /tmp/carbond-bench
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from carbond.hostlist import compress  # noqa: E402

MONTH_START = 1704067200  # 2024-01-01T00:00:00Z
DAYS = 30
STEP = 30
NODES = 200
CPUS = 64
IDLE_W, MAX_W = 120.0, 450.0
N_JOBS = 200_000
N_WIDE = 300
"""Multi-node, multi-day jobs holding whole nodes; the rest are short shared jobs."""
SEED = 20240101
HEADER = "JobIDRaw|JobID|Start|End|NodeList|AllocTRES|Partition|Account|User"
IMPORT_BATCH = 8
"""Nodes per /api/v1/import request (about 14 MB of JSON)."""


def configure(days: int, jobs: int, wide: int) -> None:
    """Another span or density than the month (the 6-month and sparse benchmarks)."""
    global DAYS, N_JOBS, N_WIDE
    DAYS, N_JOBS, N_WIDE = days, jobs, min(wide, jobs)


def node_names() -> list[str]:
    return [f"cpu-p-{i}" for i in range(1, NODES + 1)]


def schedule(rng: np.random.Generator) -> tuple[dict[str, np.ndarray | list], np.ndarray]:
    """Place every job where its CPUs are free (a toy first-fit scheduler, so no node is ever
    overbooked and the CPU shares of the jobs on a node never exceed its energy).

    Returns the jobs sorted by start (Slurm ids grow with time) and the CPUs held per node
    and 30 s slot, from which the node power is derived.
    """
    n_slots = DAYS * 86400 // STEP
    busy = np.zeros((NODES, n_slots), dtype=np.int16)
    starts, ends, nodes, cpus = [], [], [], []

    def place(first: int, width: int, need: int, start: int, dur: int) -> bool:
        a, b = start // STEP, min(n_slots, -(-(start + dur) // STEP))
        block = busy[first : first + width, a:b]
        if block.size and block.max() + need > CPUS:
            return False
        block += need
        starts.append(start)
        ends.append(start + dur)
        nodes.append(list(range(first, first + width)))
        cpus.append(need * width)
        return True

    span = DAYS * 86400
    placed = 0
    while placed < N_WIDE:  # whole nodes, 2-8 of them, 1-3 days
        width, dur = int(rng.integers(2, 9)), int(rng.integers(86400, 3 * 86400))
        placed += place(int(rng.integers(0, NODES - width + 1)), width, CPUS, int(rng.integers(0, span - dur)), dur)
    while placed < N_JOBS:  # short shared jobs: 1-4 CPUs, a minute to 2 days (median 40 min)
        dur = int(np.clip(rng.lognormal(np.log(2400), 1.3), 60, 2 * 86400))
        start = int(rng.integers(0, span - 60))
        dur = min(dur, span - start)
        need = int(rng.choice([1, 1, 2, 2, 4, 4]))
        for _ in range(8):
            if place(int(rng.integers(0, NODES)), 1, need, start, dur):
                placed += 1
                break
    order = np.argsort(np.array(starts), kind="stable")
    jobs = {
        "start": np.array(starts, dtype=np.int64)[order] + MONTH_START,
        "end": np.array(ends, dtype=np.int64)[order] + MONTH_START,
        "nodes": [nodes[i] for i in order],
        "cpus": np.array(cpus, dtype=np.int64)[order],
    }
    return jobs, busy


def power(rng: np.random.Generator, busy: np.ndarray) -> np.ndarray:
    """Integer watts, as BMCs report them: idle floor, near-linear in CPUs held, a little noise."""
    load = busy / CPUS
    w = IDLE_W + (MAX_W - IDLE_W) * load ** 0.9 + rng.normal(0, 4, busy.shape)
    return np.clip(np.rint(w), 90, 500).astype(np.int64)


GAPS = {  # node index -> list of (first slot, slots missing)
    6: [(3 * 2880 + 100, 40)],  # 20 minutes
    41: [(9 * 2880, 240)],  # 2 hours
    112: [(27 * 2880, 3 * 2880)],  # last 3 days: no data at all
    149: [(12 * 2880, 2880)],  # one whole day
    198: [(k * 2880 + 500, 20) for k in range(0, 30, 3)],  # 10 minutes every third day
}


def series_lines(rng: np.random.Generator, watts: np.ndarray) -> Iterator[tuple[str, bytes]]:
    """One /api/v1/import JSON line per node; scrape times jitter by a few hundred ms."""
    n_slots = watts.shape[1]
    for i, name in enumerate(node_names()):
        offset_ms = int(rng.integers(0, STEP * 1000))
        ts = (MONTH_START * 1000 + offset_ms + np.arange(n_slots, dtype=np.int64) * STEP * 1000
              + rng.integers(-300, 300, n_slots))
        keep = np.ones(n_slots, dtype=bool)
        for first, count in GAPS.get(i, []):
            keep[first : first + count] = False
        head = json.dumps({"__name__": "amperageProbeReading", "alias": name,
                           "amperageProbeLocationName": "System Board Pwr Consumption"}, separators=(",", ":"))
        body = '{"metric":' + head + ',"values":['
        line = (body + ",".join(map(str, watts[i][keep].tolist())) + '],"timestamps":['
                + ",".join(map(str, ts[keep].tolist())) + "]}")
        yield name, line.encode()


def load_vm(url: str, lines: Iterable[tuple[str, bytes]]) -> tuple[int, int]:
    """Import the lines IMPORT_BATCH at a time; returns (samples, series)."""
    session = requests.Session()
    samples = series = 0
    it = iter(lines)
    while batch := [ln for _, ln in itertools.islice(it, IMPORT_BATCH)]:
        samples += sum(ln.count(b",", ln.rfind(b'"timestamps"')) + 1 for ln in batch)
        series += len(batch)
        r = session.post(f"{url}/api/v1/import", data=b"\n".join(batch) + b"\n", timeout=300)
        r.raise_for_status()
    session.get(f"{url}/internal/force_flush", timeout=300).raise_for_status()
    return samples, series


def write_sacct(path: Path, jobs: dict) -> None:
    names = node_names()
    parts = ["short", "long"]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(HEADER + "\n")
        for k, (s, e, ns, c) in enumerate(zip(jobs["start"], jobs["end"], jobs["nodes"], jobs["cpus"], strict=True)):
            jid = 1_000_000 + k
            nodelist = names[ns[0]] if len(ns) == 1 else compress([names[n] for n in ns])
            tres = f"billing={c},cpu={c},mem={c * 4000}M,node={len(ns)}"
            part = parts[len(ns) > 1]
            fh.write(f"{jid}|{jid}|{s}|{e}|{nodelist}|{tres}|{part}|acct{k % 17}|user{k % 211}\n")


def write_intensity(path: Path, rng: np.random.Generator) -> None:
    """Half-hourly gCO2e/kWh with a UK-like daily shape and weather, one day either side spare."""
    slots = np.arange(MONTH_START - 86400, MONTH_START + (DAYS + 1) * 86400, 1800)
    hour = (slots % 86400) / 3600
    daily = 40 * np.sin((hour - 11) / 24 * 2 * np.pi) + 25 * np.exp(-((hour - 18) ** 2) / 4)
    weather = np.convolve(rng.normal(0, 25, len(slots) + 47), np.ones(48) / 48 * 6, "valid")
    values = np.clip(170 + daily + weather, 30, 400)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("from,to,intensity\n")
        for s, v in zip(slots, values, strict=True):
            fh.write(f"{_iso(s)},{_iso(s + 1800)},{v:.0f}\n")


def _iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(t)))


def write_config(path: Path, url: str, out: Path) -> None:
    path.write_text(
        "# carbond config for the synthetic benchmark month (written by bench/gen_month.py)\n"
        "cluster: bench\n"
        f"state_dir: {out / 'state'}\n"
        "victoriametrics:\n"
        f"  url: {url}\n"
        "intensity:\n"
        "  provider: csv\n"
        f"  path: {out / 'intensity.csv'}\n"
        "nodes:\n"
        f"  - match: cpu-p-[1-{NODES}]\n"
        f"    cpus: {CPUS}\n"
        f"    idle_watts: {IDLE_W:g}\n"
        f"    max_watts: {MAX_W:g}\n",
        encoding="utf-8",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vm-url", required=True, help="VictoriaMetrics to load, e.g. http://127.0.0.1:8428")
    ap.add_argument("--out", required=True, help="directory for jobs.sacct, intensity.csv, carbond.yaml")
    ap.add_argument("--no-load", action="store_true", help="write the files only (data already in VM)")
    ap.add_argument("--days", type=int, default=DAYS, help="span of power and jobs (default %(default)s)")
    ap.add_argument("--jobs", type=int, default=N_JOBS, help="jobs in all (default %(default)s)")
    ap.add_argument("--wide", type=int, default=N_WIDE, help="of which multi-node multi-day (default %(default)s)")
    args = ap.parse_args(argv)
    configure(args.days, args.jobs, args.wide)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(SEED)
    jobs, busy = schedule(rng)
    write_sacct(out / "jobs.sacct", jobs)
    write_intensity(out / "intensity.csv", rng)
    write_config(out / "carbond.yaml", args.vm_url.rstrip("/"), out)
    print(f"gen_month: {len(jobs['start'])} jobs written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if not args.no_load:
        t1 = time.perf_counter()
        samples, series = load_vm(args.vm_url.rstrip("/"), series_lines(rng, power(rng, busy)))
        print(f"gen_month: {samples} samples of {series} nodes loaded in {time.perf_counter() - t1:.1f} s",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
