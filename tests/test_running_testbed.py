"""`carbond show` on a job that is still running on the real testbed: footprint so far from a real
VictoriaMetrics, projected to the job's time limit as sacct reports it."""

import io
import json
import time
import uuid

import numpy as np
import pytest

from carbond.config import from_mapping
from carbond.show import show

pytestmark = [pytest.mark.slurm, pytest.mark.vm]  # every Slurm series (make test-series)


def test_show_running_job_so_far_and_projected(slurm, vm, monkeypatch, tmp_path):
    jid = slurm.sbatch(["-n", "1", "-c", "1", "--time=5", "-o", f"run-{uuid.uuid4().hex}-%j.out"],
                       "#!/bin/sh\nsleep 120\n")
    try:
        slurm.wait_state(jid, "RUNNING", timeout=60)
        node = slurm.sacct_fields(jid, ["NodeList"])["NodeList"]
        slurm.wait_sacct(jid, ["State", "AllocTRES"], lambda r: r["State"] == "RUNNING" and "cpu=" in r["AllocTRES"])
        start = float(slurm.run(["sacct", "-X", "-n", "-P", "-j", jid, "-o", "Start"],
                                env={"SLURM_TIME_FORMAT": "%s"}).stdout.strip())
        while time.time() < start + 15:  # the job must have run a while for samples past its start
            time.sleep(0.5)
        suite = uuid.uuid4().hex
        now = time.time()
        t = np.arange(now - 3600, now - 1, 2.0)
        vm.import_series(node, t, np.full(t.size, 400.0), metric="carbond_running_e2e", labels={"suite": suite},
                         node_label="node")
        vm.flush()
        cfg = from_mapping({
            "state_dir": str(tmp_path),
            "victoriametrics": {"url": vm.url, "query": f'carbond_running_e2e{{suite="{suite}"}}', "node_label": "node"},
            "intensity": {"provider": "constant", "value": 100},
            "nodes": [{"match": "n[1-3]", "cpus": 2}], "embodied": {"g_per_node_hour": 36},
            "slurm": {"sacct": slurm.bin("sacct"), "sacctmgr": slurm.bin("sacctmgr")},
        })
        monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
        buf = io.StringIO()
        assert show(cfg, [jid], as_json=True, out=buf) == 1  # not final yet
        d = json.loads(buf.getvalue())
        assert "running" in d, d
        r = d["running"]
        assert d["state"] == "RUNNING" and r["time_limit_s"] == 300
        # 1 of 2 CPUs of a 400 W node: 200 W, so far and to the limit
        assert r["power_w"] == pytest.approx(200.0, rel=1e-6)
        assert r["energy_kwh"] == pytest.approx(200.0 * r["elapsed_s"] / 3.6e6, rel=1e-6)
        assert r["projected_energy_kwh"] == pytest.approx(200.0 * 300 / 3.6e6, rel=1e-6)
        # embodied: 36 g per node-hour x 1/2 of the node, so far and for the rest of the 300 s limit
        assert r["co2e_g"] == pytest.approx(200.0 * r["elapsed_s"] / 3.6e6 * 100 + 18 * r["elapsed_s"] / 3600, rel=1e-6)
        assert r["projected_embodied_g"] == pytest.approx(18 * (300 - r["elapsed_s"]) / 3600, rel=1e-6)
        assert r["projected_co2e_g"] == pytest.approx(200.0 * 300 / 3.6e6 * 100 + 18 * 300 / 3600, rel=1e-6)
        buf = io.StringIO()
        show(cfg, [jid], out=buf)
        assert "At its time limit (0.08 h)" in buf.getvalue() and "Energy so far" in buf.getvalue()
    finally:
        slurm.run(["scancel", jid], check=False)
