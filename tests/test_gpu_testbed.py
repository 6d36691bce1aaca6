"""On the real Slurm testbed (CARBOND_TESTBED_GPUS: n3 has GRES GPUs): a GPU job gets real GPU
indices from Slurm, and its energy is its GPU's measured series plus its CPU share of the rest,
read from a real VictoriaMetrics loaded with dcgm-exporter-shaped series."""

import dataclasses
import json
import uuid

import numpy as np
import pytest
from test_footprint import FakeIntensity
from test_gpus import GJob

from carbond.config import GpuConfig, SlurmConfig, VictoriaConfig, from_mapping
from carbond.engine import Engine
from carbond.gpus import GpuClient
from carbond.idle import close_window
from carbond.slurm import SlurmIO
from carbond.victoria import VictoriaClient

pytestmark = [pytest.mark.slurm, pytest.mark.vm]  # every Slurm series (make test-series)

GPU_W = (250.0, 50.0)
NODE_W = 1000.0


def gpu_node_or_fail(slurm):
    parts = slurm.run(["sinfo", "-h", "-o", "%P %G"]).stdout
    if "gpu:" not in parts:
        pytest.fail(f"the testbed in {slurm.dir} has no GRES GPUs: it was started without "
                    "CARBOND_TESTBED_GPUS (stop it; the fixture starts it with 2 GPUs on n3)")


def test_gpu_job_energy_from_its_gpu_series_plus_cpu_share(slurm, vm):
    gpu_node_or_fail(slurm)
    jid = slurm.sbatch(["-p", "gpu", "--gres=gpu:1", "-c", "1", "-o", f"gpu-{uuid.uuid4().hex}-%j.out"],
                       "#!/bin/sh\necho \"$SLURM_JOB_GPUS\" > gpus-$SLURM_JOB_ID.txt\nsleep 3\n")
    slurm.wait_state(jid, "COMPLETED", timeout=90)
    slurm.wait_sacct(jid, ["End"], lambda r: r["End"] not in ("", "Unknown"))
    held = (slurm.dir / "jobs" / f"gpus-{jid}.txt").read_text().strip()
    assert held in ("0", "1")  # Slurm handed the job a real GPU index
    io = SlurmIO(SlurmConfig(sacct=slurm.bin("sacct"), sacctmgr=slurm.bin("sacctmgr")), env=slurm.env)
    job = next(iter(io.read_jobs([jid]).values())).job
    assert job.nodes == ("n3",) and job.gpus == 1 and job.cpus == (1.0,)

    suite = uuid.uuid4().hex  # our own series, whatever else the shared VictoriaMetrics holds for n3
    t = np.arange(job.start - 600, job.end + 601, 5.0)
    vm.import_series("n3", t, np.full(t.size, NODE_W), metric="carbond_gpu_e2e_node",
                     labels={"suite": suite}, node_label="node")
    vm.import_lines(json.dumps({"metric": {"__name__": "DCGM_FI_DEV_POWER_USAGE", "suite": suite, "Hostname": "n3",
                                           "gpu": str(i), "UUID": f"GPU-{suite[:8]}-{i}"},
                                "values": [w] * t.size, "timestamps": [int(x * 1000) for x in t]})
                    for i, w in enumerate(GPU_W))
    vm.flush()
    vc = VictoriaConfig(url=vm.url, query=f'carbond_gpu_e2e_node{{suite="{suite}"}}', node_label="node")
    cfg = from_mapping({"nodes": [{"match": "n[1-3]", "cpus": 2}]})
    eng = Engine(cfg, VictoriaClient(vc), FakeIntensity(100),
                 gpu_power=GpuClient(vc, GpuConfig(query=f'DCGM_FI_DEV_POWER_USAGE{{suite="{suite}"}}')))
    fields = {f.name: getattr(job, f.name) for f in dataclasses.fields(job) if f.name != "gpu_ids"}
    (fp,) = eng.account([GJob(**fields, gpu_ids=held)])
    assert fp.status == "ok", fp.error
    secs = job.end - job.start
    want_w = GPU_W[int(held)] + 0.5 * (NODE_W - sum(GPU_W))  # its GPU + 1 of 2 CPUs of the rest
    assert fp.energy_kwh == pytest.approx(want_w * secs / 3.6e6, rel=1e-9)
    assert fp.to_dict()["gpu_energy_kwh"] == pytest.approx(GPU_W[int(held)] * secs / 3.6e6, rel=1e-9)

    # and the node closes: measured = the job + unattributed, for every half-hour it touched
    lo, hi = (job.start // 1800) * 1800, -(-job.end // 1800) * 1800
    table, _ = close_window(eng, [GJob(**fields, gpu_ids=held)], lo, hi, all_nodes=["n3"])
    assert np.allclose(table.jobs_j + table.unattributed_j, table.measured_j, rtol=1e-9, atol=0)
    assert sum(table.jobs_j[i].sum() for i in range(len(table.names))) == pytest.approx(fp.energy_kwh * 3.6e6,
                                                                                          rel=1e-9)


def test_mixed_jobs_close_every_node_and_half_hour(slurm, vm, tmp_path):
    """Real jobs on n1..n3 (one holding a GPU), real sacct, real VictoriaMetrics: per node and
    half-hour, measured = jobs + unattributed; recorded in the ledger and read back by the report."""
    import sqlite3
    import time

    from carbond.idle import close_and_record
    from carbond.ledger import Ledger
    from carbond.ledger_columns import connect
    from carbond.summary import totals

    gpu_node_or_fail(slurm)
    ids = [slurm.sbatch(["-w", node, "-c", str(c), "-o", "/dev/null"], "#!/bin/sh\nsleep 2\n")
           for node, c in (("n1", 1), ("n1", 1), ("n2", 2))]
    ids.append(slurm.sbatch(["-p", "gpu", "--gres=gpu:1", "-c", "1", "-o", "/dev/null"],
                            "#!/bin/sh\nsleep 2\n"))
    for jid in ids:
        slurm.wait_state(jid, "COMPLETED", timeout=120)
        slurm.wait_sacct(jid, ["End"], lambda r: r["End"] not in ("", "Unknown"))
    io = SlurmIO(SlurmConfig(sacct=slurm.bin("sacct"), sacctmgr=slurm.bin("sacctmgr")), env=slurm.env)
    last_end = max(f.job.end for f in io.read_jobs(ids).values())
    while time.time() < last_end + 6:  # power samples (every 5 s) must reach past every job's end
        time.sleep(0.2)
    now = time.time()
    lo = int(now // 1800) * 1800 - 1800
    hi = lo + 3600
    suite = uuid.uuid4().hex
    t = np.arange(lo - 600, now, 5.0)
    for k, node in enumerate(("n1", "n2", "n3")):
        vm.import_series(node, t, 300 + 50 * k + 20 * np.sin(t / 300), metric="carbond_idle_e2e",
                         labels={"suite": suite}, node_label="node")
    vm.import_lines(json.dumps({"metric": {"__name__": "DCGM_FI_DEV_POWER_USAGE", "suite": suite, "Hostname": "n3",
                                           "gpu": str(i)}, "values": [w] * t.size,
                                "timestamps": [int(x * 1000) for x in t]}) for i, w in enumerate((90.0, 30.0)))
    vm.flush()
    vc = VictoriaConfig(url=vm.url, query=f'carbond_idle_e2e{{suite="{suite}"}}', node_label="node")
    cfg = from_mapping({"cluster": "testcl", "state_dir": str(tmp_path),
                        "nodes": [{"match": "n[1-2]", "name": "cpu", "cpus": 2},
                                  {"match": "n3", "name": "gpu", "cpus": 2, "gpus": 2}]})
    eng = Engine(cfg, VictoriaClient(vc), FakeIntensity(100),
                 gpu_power=GpuClient(vc, GpuConfig(query=f'DCGM_FI_DEV_POWER_USAGE{{suite="{suite}"}}')))
    Ledger(tmp_path, "testcl").close()
    db = connect(tmp_path)
    table, rows = close_and_record(cfg, eng, io, lo, hi, db)
    assert {"n1", "n2", "n3"} <= set(table.names)  # physical nodes: GPUs are inside their node's meter
    assert np.all(table.unattributed_j >= 0)
    assert np.allclose(table.jobs_j + table.unattributed_j, table.measured_j, rtol=1e-9, atol=0)
    assert table.jobs_j[table.names.index("n1")].sum() > 0 and table.jobs_j[table.names.index("n2")].sum() > 0
    # every node's half-hour is in the ledger, and the report gives back the same total
    assert {(r[0], r[1]) for r in rows} >= {(n, s) for n in ("n1", "n2", "n3") for s in (lo, lo + 1800)}
    by_class = {x.group: x.unattributed_kwh for x in totals(db, "testcl", ["node_class"])}
    assert sum(by_class.values()) * 3.6e6 == pytest.approx(table.unattributed_j.sum(), rel=1e-9)
    assert by_class[("gpu",)] * 3.6e6 == pytest.approx(sum(r[4] for r in rows if r[0] == "n3"), rel=1e-9)
    assert isinstance(db, sqlite3.Connection)
