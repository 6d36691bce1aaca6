"""One truth on every path, on the real testbed (issue 15).

Real jobs on the Slurm testbed (a GPU job and a CPU job sharing the GPU node n3, a job requeued
from n2 to n1, a job suspended for a while on n2), real power in VictoriaMetrics (the feeder for
the node meters, dcgm-exporter-shaped series for n3's two GPUs whose sum often exceeds the node
meter), carbond driven only through its commands:

- the daemon (`carbond run`) accounts them as they end;
- `backfill --write` (its own ledger and comment field), `footprint --jobs` on `sacct -D` output,
  `show` and `report` give the same per-job numbers;
- each job's energy and the GPU job's GPU energy equal a plain per-sample computation from the
  raw samples VictoriaMetrics exports (docs/accounting.md R1-R5), with the GPU indices carbond
  caught while the job ran;
- per node, jobs + unattributed (`carbond idle`) = the node's own integral, for the GPU node, the
  CPU nodes and a node that ran nothing (n4: configured, fed, not in Slurm).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from carbond_stack import CarbondStack, ended, requeue_onto, wait_for
from fixtures_vm import series_line
from test_gpu_testbed import gpu_node_or_fail

from carbond.token import parse

pytestmark = [pytest.mark.slurm, pytest.mark.vm]

HALF = 1800
MAX_GAP = 300.0
REL = 1e-9


# ---- an independent computation from the raw samples (plain Python, per sample) -----------------

def samples(vm_url: str, selector: str, lo: float, hi: float) -> list[tuple[float, float]]:
    """Every raw sample of the series matching `selector` in [lo, hi], merged, sorted, the last of equal times kept."""
    r = requests.get(f"{vm_url}/api/v1/export", params={"match[]": selector, "start": f"{lo:.3f}",
                                                        "end": f"{hi:.3f}"}, timeout=60)
    r.raise_for_status()
    merged: dict[float, float] = {}
    for line in r.text.splitlines():
        if line.strip():
            d = json.loads(line)
            for t, w in zip(d["timestamps"], d["values"], strict=True):
                merged[t / 1000.0] = float(w)
    return sorted(merged.items())


def integral(points: list[tuple[float, float]], a: float, b: float) -> float:
    """Trapezoids of the linear trace between samples at most MAX_GAP apart, clipped to [a, b]."""
    total = 0.0
    for (t0, w0), (t1, w1) in zip(points, points[1:], strict=False):
        lo, hi = max(a, t0), min(b, t1)
        if t1 - t0 > MAX_GAP or hi <= lo:
            continue
        at = lambda x, t0=t0, w0=w0, t1=t1, w1=w1: w0 + (w1 - w0) * (x - t0) / (t1 - t0)  # noqa: E731
        total += (at(lo) + at(hi)) / 2 * (hi - lo)
    return total


def pieces(a: float, b: float):
    """[a, b] cut at every UTC half-hour."""
    t = a
    while t < b:
        nxt = min(b, (t // HALF + 1) * HALF)
        yield t, nxt
        t = nxt


def reference(stretches, node_pts, gpu_pts, cpu_share: float, held: set[str] | None = None) -> tuple[float, float]:
    """(energy J, own-GPU energy J) of a job over its stretches [(a, b, node)], by docs/accounting.md R4/R5."""
    energy = gpu = 0.0
    for a, b, node in stretches:
        for lo, hi in pieces(a, b):
            n = integral(node_pts[node], lo, hi)
            gpus = {i: integral(p, lo, hi) for i, p in gpu_pts.get(node, {}).items()}
            s = sum(gpus.values())
            k = n / s if s > n and s > 0 else 1.0
            own = k * sum(g for i, g in gpus.items() if held and i in held)
            energy += own + cpu_share * (n - k * s)
            gpu += own
    return energy, gpu


# ---- the stack ---------------------------------------------------------------------------------

class GpuFeeder:
    """dcgm-exporter-shaped samples for n3's GPUs every second, live, until stopped; and n4's meter
    (a configured node Slurm does not know: it runs nothing, its energy is all unattributed)."""

    def __init__(self, vm, suite: str) -> None:
        self.vm, self.suite, self.stop = vm, suite, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.time()
            lines = [json.dumps({"metric": {"__name__": "DCGM_FI_DEV_POWER_USAGE", "suite": self.suite, "Hostname": "n3",
                                            "gpu": str(i), "UUID": f"GPU-{self.suite[:8]}-{i}"},
                                 "values": [w], "timestamps": [int(t * 1000)]})
                     for i, w in enumerate((140 + 100 * np.sin(t / 5), 60.0))]
            self.vm.import_lines([*lines, series_line("n4", [t], [111.0])])
            self.vm.flush()
            self.stop.wait(1.0)


def carbond(stack: CarbondStack, config: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "carbond", "--config", str(config), *args],  # noqa: S603
                          env=stack.env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"carbond {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc.stdout


def ledger_jobs(state: Path, ids) -> dict[str, tuple[float, float, float]]:
    with sqlite3.connect(state / "ledger.sqlite") as db:
        rows = db.execute("SELECT job_id, energy_j, co2e_g, COALESCE(gpu_energy_j, 0) FROM jobs").fetchall()
    return {r[0]: r[1:] for r in rows if r[0] in ids}


def close(a: float, b: float, rel: float = REL) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def test_every_path_gives_the_daemons_numbers_and_the_meter_closes(slurm, vm, tmp_path):
    gpu_node_or_fail(slurm)
    suite = uuid.uuid4().hex
    gpu_cfg = f"gpu:\n  query: 'DCGM_FI_DEV_POWER_USAGE{{suite=\"{suite}\"}}'\n"
    stack = CarbondStack(slurm, vm.url, tmp_path / "a", settle=15, extra_config=gpu_cfg, nodes="n[1-4]",
                         slurm_extra="  suspend_poll_seconds: 1\n")
    feeder = GpuFeeder(vm, suite)
    t_begin = time.time()
    try:
        stack.start_feeder(1.0)
        feeder.thread.start()
        stack.start()
        g = slurm.sbatch(["-p", "gpu", "--gres=gpu:1", "-c", "1", "-J", "gpu"],
                         "#!/bin/sh\necho \"$SLURM_JOB_GPUS\" > gpus-$SLURM_JOB_ID.txt\nsleep 8\n")
        c = slurm.sbatch(["-w", "n3", "-c", "1", "-J", "cpu-on-gpu-node"], "sleep 6")
        r = slurm.sbatch(["-n1", "-w", "n2", "--requeue", "-J", "requeued"], "sleep 6")
        requeue_onto(slurm, r, "n1", stack)
        s = slurm.sbatch(["-n1", "-w", "n2", "-J", "suspended"], "sleep 10")
        slurm.wait_state(s, "RUNNING")
        t0 = time.time()
        wait_for(lambda: time.time() - t0 > 3, 10, "3 s of running", stack)
        slurm.run(["scontrol", "suspend", s])
        slurm.wait_state(s, "SUSPENDED")
        time.sleep(4)
        slurm.run(["scontrol", "resume", s])
        ids = [g, c, r, s]
        for j in ids:
            ended(slurm, j, timeout=180)
        for j in ids:
            stack.wait_tokens(j, timeout=150)
        t_end = time.time()
        daemon = ledger_jobs(stack.state_dir, ids)
        assert sorted(daemon) == sorted(ids)

        # -- the GPU indices were caught while the job ran, and are the ones Slurm gave it
        held = (slurm.dir / "jobs" / f"gpus-{g}.txt").read_text().strip()
        with sqlite3.connect(stack.state_dir / "ledger.sqlite") as db:
            captured = db.execute("SELECT node, indices FROM gpu_indices WHERE job_id=?", (g,)).fetchall()
        assert captured == [("n3", held)]

        # -- every job against the plain computation from the raw samples
        lo, hi = t_begin - 600, t_end + 600
        node_pts = {n: samples(vm.url, f'amperageProbeReading{{alias="{n}"}}', lo, hi) for n in ("n1", "n2", "n3", "n4")}
        gpu_pts = {"n3": {str(i): samples(vm.url, f'DCGM_FI_DEV_POWER_USAGE{{suite="{suite}",gpu="{i}"}}', lo, hi)
                          for i in (0, 1)}}
        runs = {}
        for j in ids:
            out = slurm.run(["sacct", "-D", "-X", "-n", "-P", "-j", j, "-o", "Start,End,NodeList"],
                            env={"SLURM_TIME_FORMAT": "%s"}).stdout.split()
            runs[j] = [(float(a), float(b), n) for a, b, n in (x.split("|") for x in out) if a.isdigit()]
        assert [n for _, _, n in runs[r]] == ["n2", "n1"], runs[r]
        with sqlite3.connect(stack.state_dir / "ledger.sqlite") as db:
            susp = db.execute("SELECT start, end FROM suspends WHERE job_id=?", (s,)).fetchall()
        assert len(susp) == 1 and susp[0][1] is not None
        (sa, sb, sn), = runs[s]
        want = {
            g: reference(runs[g], node_pts, gpu_pts, 0.5, {held}),
            c: reference(runs[c], node_pts, gpu_pts, 0.5),
            r: reference(runs[r], node_pts, gpu_pts, 0.5),
            s: reference([(sa, susp[0][0], sn), (susp[0][1], sb, sn)], node_pts, gpu_pts, 0.5),
        }
        for j in ids:
            assert close(daemon[j][0], want[j][0], 1e-6), (j, daemon[j], want[j])
        assert close(daemon[g][2], want[g][1], 1e-6) and daemon[g][2] > 0, (daemon[g], want[g])
        assert daemon[c][2] == 0.0

        # -- backfill --write: its own ledger (with the daemon's suspend and GPU records), its own field
        state_b = tmp_path / "b"
        state_b.mkdir()
        with sqlite3.connect(stack.state_dir / "ledger.sqlite") as src, \
                sqlite3.connect(state_b / "ledger.sqlite") as dst:
            src.backup(dst)
            dst.execute("DELETE FROM jobs")
        cfg_b = tmp_path / "b.yaml"
        cfg_b.write_text(stack.config.read_text().replace(str(stack.state_dir), str(state_b))
                         .replace("slurm:\n", "slurm:\n  comment_field: system_comment\n", 1))
        out = carbond(stack, cfg_b, "backfill", "--start", str(int(t_begin) - 1), "--end", str(int(t_end) + 1),
                      "--write", "--json")
        backfilled = {d["job_id"]: d for d in map(json.loads, out.splitlines())}
        history = ledger_jobs(state_b, ids)
        for j in ids:
            assert close(history[j][0], daemon[j][0]) and close(history[j][1], daemon[j][1]), (j, history[j], daemon[j])
            assert close(backfilled[j]["energy_kwh"] * 3.6e6, daemon[j][0])
            assert close(history[j][2], daemon[j][2])

        # -- footprint --jobs on sacct -D output, with the same (read-only) ledger
        table = tmp_path / "sacct.txt"
        table.write_text(slurm.run(["sacct", "-D", "-X", "-P", "-j", ",".join(ids), "-o",
                                    "JobIDRaw,JobID,Start,End,NodeList,AllocTRES,Suspended,Partition,Account,User"],
                                   env={"SLURM_TIME_FORMAT": "%s"}).stdout)
        got = {d["job_id"]: d for d in map(json.loads, carbond(stack, cfg_b, "footprint", "--jobs", str(table),
                                                                "--json").splitlines())}
        for j in ids:
            assert close(got[j]["energy_kwh"] * 3.6e6, daemon[j][0], 1e-11 + REL), (j, got[j], daemon[j])
            assert close(got[j]["co2e_g"], daemon[j][1], 1e-11 + REL), (j, got[j], daemon[j])
        assert close(got[g]["gpu_energy_kwh"] * 3.6e6, daemon[g][2])

        # -- show: the token of each job, as the daemon formatted it
        shown = {d["raw_id"]: d for d in map(json.loads, carbond(stack, stack.config, "show", *ids,
                                                                  "--json").splitlines())}
        for j in ids:
            token = parse(slurm.sacct_fields(j, ["AdminComment"])["AdminComment"])
            assert shown[j]["footprint"] == token
            assert close(token["co2e_g"], daemon[j][1], 5e-3) and close(token["energy_kwh"] * 3.6e6, daemon[j][0], 5e-3)

        # -- report: the ledger's totals over the jobs that ended in the range (ours, and any record
        # of an earlier test's job still in the shared spool that this daemon accounted too)
        since = int(t_begin) - 1
        rows = [json.loads(x) for x in carbond(stack, stack.config, "report", "--by", "user", "--start",
                                               str(since), "--json").splitlines()]
        with sqlite3.connect(stack.state_dir / "ledger.sqlite") as db:
            ledger_sum = db.execute("SELECT SUM(energy_j), SUM(co2e_g) FROM jobs WHERE end_time >= ? AND state IN "
                                    "('accounted', 'pending-write', 'written', 'unwritable')", (since,)).fetchone()
        assert ledger_sum[0] >= sum(v[0] for v in daemon.values()) * (1 - 1e-12)
        assert close(sum(x["energy_kwh"] for x in rows) * 3.6e6, ledger_sum[0], 1e-9)
        assert close(sum(x["co2e_g"] for x in rows), ledger_sum[1], 1e-9)

        # -- the meter: per node, jobs + unattributed = its own integral, GPU node, CPU nodes, idle n4
        last_end = max(b for j in ids for _, b, _ in runs[j])
        end = float(int(last_end) + 2)
        wait_for(lambda: time.time() - 16 > end, 60, "the range settled", stack)  # settle_seconds 15
        lo_slot = t_begin // HALF * HALF
        nodes = {d["node"]: d for d in map(json.loads, carbond(stack, stack.config, "idle", "--start",
                                                                str(int(lo_slot)), "--end", str(int(end)),
                                                                "--json").splitlines())}
        assert {"n1", "n2", "n3", "n4"} <= set(nodes)
        for n in ("n1", "n2", "n3", "n4"):
            d = nodes[n]
            meter = integral(samples(vm.url, f'amperageProbeReading{{alias="{n}"}}', lo_slot - 600, end + 600),
                             lo_slot, end) / 3.6e6
            assert close(d["measured_kwh"], meter), (n, d, meter)
            assert close(d["jobs_kwh"] + d["unattributed_kwh"], meter), (n, d, meter)
        assert nodes["n4"]["jobs_kwh"] == 0 and nodes["n4"]["unattributed_kwh"] > 0
        # the jobs' part holds at least their stretches' energy (other tests' jobs may share the half-hour)
        on = {"n1": want[r][0] - reference(runs[r][:1], node_pts, gpu_pts, 0.5)[0],
              "n2": want[s][0] + reference(runs[r][:1], node_pts, gpu_pts, 0.5)[0], "n3": want[g][0] + want[c][0]}
        for n, joules in on.items():
            assert nodes[n]["jobs_kwh"] * 3.6e6 >= joules * (1 - 1e-6), (n, nodes[n], joules)
        def rel(a, b):
            return abs(a - b) / max(abs(a), abs(b), 1e-12)

        meters = {n: integral(samples(vm.url, f'amperageProbeReading{{alias="{n}"}}', lo_slot - 600, end + 600),
                              lo_slot, end) / 3.6e6 for n in ("n1", "n2", "n3", "n4")}
        print("\nFIGURES one-truth paths: " + json.dumps({
            "daemon_vs_reference": max(rel(daemon[j][0], want[j][0]) for j in ids),
            "gpu_vs_reference": rel(daemon[g][2], want[g][1]),
            "backfill_vs_daemon": max(max(rel(history[j][0], daemon[j][0]), rel(history[j][1], daemon[j][1]))
                                      for j in ids),
            "footprint_vs_daemon": max(max(rel(got[j]["energy_kwh"] * 3.6e6, daemon[j][0]),
                                           rel(got[j]["co2e_g"], daemon[j][1])) for j in ids),
            "report_vs_ledger": rel(sum(x["energy_kwh"] for x in rows) * 3.6e6, ledger_sum[0]),
            "meter_closure": max(rel(nodes[n]["jobs_kwh"] + nodes[n]["unattributed_kwh"], meters[n]) for n in meters),
            "measured_vs_raw": max(rel(nodes[n]["measured_kwh"], meters[n]) for n in meters)}))
        print("\nFIGURES one-truth: " + json.dumps({
            "jobs": {j: {"daemon_j": daemon[j][0], "reference_j": want[j][0],
                         "rel": abs(daemon[j][0] - want[j][0]) / max(want[j][0], 1e-12)} for j in ids},
            "gpu_j": [daemon[g][2], want[g][1]],
            "idle": {n: nodes[n] for n in ("n1", "n2", "n3", "n4")}}, default=str))
    finally:
        feeder.stop.set()
        stack.close()
        shutil.rmtree(tmp_path / "b", ignore_errors=True)
