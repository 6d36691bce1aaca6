"""`carbond estimate --partition` against the real testbed's Slurm: the partition's nodes and their
CPUs from the real `sinfo -M`, the node class from the config, embodied CO2 by the CPUs held."""

import json
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slurm


def estimate(slurm, tmp_path, *args):
    config = tmp_path / "carbond.yaml"
    config.write_text(yaml.safe_dump({
        "cluster": "testcl", "state_dir": str(tmp_path / "state"), "pue": 1.0, "embodied": {"g_per_node_hour": 40},
        "intensity": {"provider": "constant", "value": 100},
        "slurm": {"sacct": slurm.bin("sacct"), "sacctmgr": slurm.bin("sacctmgr")},
        "nodes": [{"match": "n[1-3]", "name": "small", "cpus": 2, "max_watts": 300}]}))
    return slurm.run([sys.executable, "-m", "carbond", "--config", str(config), "estimate", *args],
                     check=False, env={"PYTHONPATH": str(Path(__file__).parent.parent)})


def test_partition_from_the_real_sinfo(slurm, tmp_path):
    p = estimate(slurm, tmp_path, "--partition", "debug", "--cpus", "1", "--time", "2h", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    # 1 of a 2-CPU node for 2 h: 40 g/node-hour x 1/2 x 2 h = 40 g; 300 W / 2 CPUs = 150 W x 2 h = 0.3 kWh x 100
    assert (d["embodied_g"], d["power_w"], d["operational_g"]) == pytest.approx((40.0, 150.0, 30.0), rel=1e-12)
    assert d["how"]["node_class"].startswith("partition debug: nodes n[1-3] (sinfo), node class small")
    p = estimate(slurm, tmp_path, "--partition", "nosuch", "--cpus", "1", "--time", "2h")
    assert p.returncode == 1
    parts = sorted(slurm.run(["sinfo", "-h", "-o", "%R"]).stdout.split())
    assert p.stderr.strip() == f"carbond: unknown partition 'nosuch': Slurm's partitions are {', '.join(parts)}"
