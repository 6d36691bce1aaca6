"""Measured GPUs end to end against a real VictoriaMetrics loaded with dcgm-exporter-shaped series,
and TRES weights through the engine."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_footprint import MIDNIGHT, FakeIntensity, FakePower

from carbond.config import GpuConfig, VictoriaConfig, from_mapping
from carbond.engine import Engine
from carbond.gpus import GpuClient
from carbond.jobs import Job
from carbond.token import format_token
from carbond.victoria import VictoriaClient

HOUR = 3600.0
KWH = 3.6e6
GPU_W = [250.0, 50.0, 50.0, 50.0]


@dataclass(frozen=True)
class GJob(Job):
    """A Job with the GPU indices the epilog recorded (SLURM_JOB_GPUS)."""

    gpu_ids: str = ""


def load(vm, node, metric="DCGM_FI_DEV_POWER_USAGE", factor=1.0, job=None, extra=None):
    t = np.arange(MIDNIGHT - 600, MIDNIGHT + HOUR + 601, 15.0)
    vm.import_series(node, t, np.full(t.size, 1000.0))
    lines = []
    for i, w in enumerate(GPU_W):
        labels = {"__name__": metric, "gpu": str(i), "UUID": f"GPU-{node}-{i}", "Hostname": node, **(extra or {})}
        if job and i == 0:
            labels["hpc_job"] = job
        lines.append(json.dumps({"metric": labels, "values": [w / factor] * t.size,
                                 "timestamps": [int(x * 1000) for x in t]}))
    vm.import_lines(lines)
    vm.flush()


def engine(vm, node, gpu: GpuConfig | None = None, **cfg):
    c = from_mapping({"nodes": [{"match": node, "name": "gpu", "cpus": 64, "gpus": 4}], **cfg})
    vc = VictoriaConfig(url=vm.url)
    gpu = gpu or GpuConfig()
    return Engine(c, VictoriaClient(vc), FakeIntensity(100), gpu_power=GpuClient(vc, gpu))


def test_gpu_job_gets_its_gpu_plus_cpu_share_of_the_rest(vm):
    node = vm.node("g")
    load(vm, node)
    eng = engine(vm, node)
    job = GJob("77", MIDNIGHT, MIDNIGHT + HOUR, (node,), (8.0,), gpus=1, gpu_ids="0")
    (fp,) = eng.account([job])
    assert fp.status == "ok", fp.error
    # 250 W (GPU 0) + 8/64 x (1000 - 400) W = 325 W for an hour
    assert fp.energy_kwh == pytest.approx(0.325, rel=1e-9)
    d = fp.to_dict()
    assert d["gpu_energy_kwh"] == pytest.approx(0.25, rel=1e-9)
    assert [n["node"] for n in d["nodes"]] == [node]  # GPUs are inside their node's row, not rows of their own
    token = format_token(fp)
    assert "gpu_kwh=0.25" in token and token == token.lower() and len(token) < 70  # with pue=1 (h4)
    cpu_only = Engine(eng.cfg, eng.power, eng.intensity).account([job])
    assert list(cpu_only)[0].energy_kwh == pytest.approx(0.125, rel=1e-9)  # what carbond did before: 1/8 of the node


def test_job_label_on_the_series_maps_the_gpu(vm):
    node = vm.node("g")
    load(vm, node, job="78")
    eng = engine(vm, node, GpuConfig(job_label="hpc_job"))
    (fp,) = eng.account([Job("78", MIDNIGHT, MIDNIGHT + HOUR, (node,), (8.0,), gpus=1)])
    assert fp.energy_kwh == pytest.approx(0.325, rel=1e-9)
    assert fp.to_dict()["gpu_energy_kwh"] == pytest.approx(0.25, rel=1e-9)


def test_milliwatt_series_with_a_unit_factor(vm):
    node = vm.node("g")
    load(vm, node, metric="nvidia_gpu_power_usage_milliwatts", factor=0.001)
    eng = engine(vm, node, GpuConfig(query="nvidia_gpu_power_usage_milliwatts", unit_factor=0.001))
    (fp,) = eng.account([GJob("79", MIDNIGHT, MIDNIGHT + HOUR, (node,), (8.0,), gpus=1, gpu_ids="0")])
    assert fp.energy_kwh == pytest.approx(0.325, rel=1e-9)


def test_gpu_count_without_indices_takes_its_fraction_of_all_gpus_and_says_so(vm):
    node = vm.node("g")
    load(vm, node)
    (fp,) = engine(vm, node).account([Job("80", MIDNIGHT, MIDNIGHT + HOUR, (node,), (8.0,), gpus=1)])
    # 1/4 of the 400 W of all GPUs + 8/64 x 600 W = 175 W
    assert fp.energy_kwh == pytest.approx(0.175, rel=1e-9)
    assert any("GPU indices unknown" in w for w in fp.warnings)


def test_tres_weights_split_the_node_without_gpu_series():
    cfg = from_mapping({"nodes": [{"match": "w1", "cpus": 64, "gpus": 4, "weights": {"cpu": 5, "gpu": 250}}]})
    power = FakePower({"w1": (MIDNIGHT - 600, MIDNIGHT + HOUR + 600, 1000)})
    job = Job("81", MIDNIGHT, MIDNIGHT + HOUR, ("w1",), (8.0,), gpus=1)
    (fp,) = Engine(cfg, power, FakeIntensity(100)).account([job])
    # (8 x 5 + 1 x 250) / (64 x 5 + 4 x 250) = 290 / 1320 of 1000 W
    assert fp.nodes[0].share == pytest.approx(290 / 1320)
    assert fp.energy_kwh == pytest.approx(1000 * 290 / 1320 / 1000, rel=1e-9)


def test_streamed_and_batched_gpu_jobs_agree_and_cpu_jobs_stay_columnar(vm):
    """Engine.stream (bulk: windows, PowerCache, GPU series per window) gives what Engine.account gives,
    GPU jobs mixed with CPU jobs on the same node and on a node without GPUs, across window edges."""
    from carbond.jobs import JobTable, NodeNames

    node, plain = vm.node("g"), vm.node("c")
    load(vm, node)
    t = np.arange(MIDNIGHT - 600, MIDNIGHT + HOUR + 601, 15.0)
    vm.import_series(plain, t, np.full(t.size, 300.0))
    vm.flush()
    cfg = from_mapping({"nodes": [{"match": node, "name": "gpu", "cpus": 64, "gpus": 4},
                                  {"match": plain, "name": "cpu", "cpus": 64}]})
    vc = VictoriaConfig(url=vm.url)
    eng = Engine(cfg, VictoriaClient(vc), FakeIntensity(100), gpu_power=GpuClient(vc, GpuConfig()))
    jobs = [GJob("90", MIDNIGHT, MIDNIGHT + HOUR, (node,), (8.0,), gpus=1, gpu_ids="0"),
            Job("91", MIDNIGHT + 60, MIDNIGHT + 1800, (plain,), (16.0,)),
            Job("92", MIDNIGHT + 900, MIDNIGHT + 2700, (node,), (16.0,)),
            GJob("93", MIDNIGHT + 1200, MIDNIGHT + HOUR, (node, plain), (8.0, 8.0), gpus=2, gpu_ids="1,2")]
    batched = {fp.job_id: fp for fp in eng.account(jobs)}
    assert batched["90"].energy_kwh == pytest.approx(0.325, rel=1e-9)
    assert batched["92"].to_dict().get("gpu_energy_kwh") is None  # no GPU held: only its CPU share of the rest
    assert batched["92"].energy_kwh == pytest.approx(16 / 64 * 600 * 1800 / KWH, rel=1e-9)
    assert batched["93"].to_dict()["gpu_energy_kwh"] == pytest.approx(100 * 2400 / KWH, rel=1e-9)
    names = NodeNames()
    windows = [JobTable.from_jobs(jobs[:2], names), JobTable.from_jobs(jobs[2:], names)]
    streamed = {fp.job_id: fp for b in Engine(eng.cfg, eng.power, eng.intensity, gpu_power=eng.gpu_power)
                .stream(windows, align=900.0) for fp in b.footprints()}
    for jid, fp in batched.items():
        s = streamed[jid]
        assert s.status == fp.status == "ok"
        assert s.energy_kwh == pytest.approx(fp.energy_kwh, rel=1e-9)
        assert s.co2e_g == pytest.approx(fp.co2e_g, rel=1e-9)
        assert [n.node for n in s.nodes] == [n.node for n in fp.nodes]


@settings(max_examples=40, deadline=None)
@given(jobs=st.lists(st.tuples(st.lists(st.sampled_from(["w1", "w2", "p1"]), min_size=1, max_size=3, unique=True),
                               st.one_of(st.none(), st.integers(1, 64)), st.integers(0, 8)), min_size=1, max_size=6))
def test_vectorised_tres_weights_equal_the_scalar_rule_row_by_row(jobs):
    """The engine splits nodes by weights in one array pass; attribution.weighted_share is the rule
    for one row: they agree on every row, with CPUs known or not, GPUs spread over nodes, and nodes
    of a class without weights (plain CPU share)."""
    from carbond.attribution import weighted_share

    cfg = from_mapping({"nodes": [{"match": "w[1-2]", "cpus": 64, "gpus": 4, "weights": {"cpu": 5, "gpu": 250}},
                                  {"match": "p1", "cpus": 32}]})
    power = FakePower({n: (MIDNIGHT - 600, MIDNIGHT + HOUR + 600, 1000) for n in ("w1", "w2", "p1")})
    batch = [Job(str(i), MIDNIGHT, MIDNIGHT + HOUR, tuple(nodes), (float(c),) * len(nodes) if c else (), gpus=g)
             for i, (nodes, c, g) in enumerate(jobs)]
    for job, fp in zip(batch, Engine(cfg, power, FakeIntensity(100)).account(batch), strict=True):
        assert fp.status == "ok", fp.error
        for i, (node, row) in enumerate(zip(job.nodes, fp.nodes, strict=True)):
            cls = cfg.node_class(node)
            load = min(1.0, job.cpus[i] / cls.cpus) if job.cpus else 1.0
            want = weighted_share(cls, job, i, cls.cpus, load) if cls.weights else load
            assert row.node == node and row.share == pytest.approx(want, rel=1e-12)


def test_newer_dcgm_hostname_label_and_implausible_samples_are_dropped_and_counted(vm):
    """dcgm-exporter 3.3+ names the node `hostname` (older: `Hostname`): both are read. A GPU
    sample above what the node may draw is no measurement: dropped, counted, bridged like a gap."""
    node = vm.node("g")
    t = np.arange(MIDNIGHT - 600, MIDNIGHT + HOUR + 601, 15.0)
    vm.import_series(node, t, np.full(t.size, 1000.0))
    w = np.full(t.size, 250.0)
    w[t.size // 2] = 1e9  # a glitch
    vm.import_lines([json.dumps({"metric": {"__name__": "DCGM_FI_DEV_POWER_USAGE", "gpu": "0", "hostname": node},
                                 "values": w.tolist(), "timestamps": [int(x * 1000) for x in t]})])
    vm.flush()
    c = from_mapping({"nodes": [{"match": node, "name": "gpu", "cpus": 64, "gpus": 1, "max_watts": 2000}]})
    vc = VictoriaConfig(url=vm.url)
    gpu = GpuClient(vc, GpuConfig())
    (fp,) = Engine(c, VictoriaClient(vc), FakeIntensity(100), gpu_power=gpu).account(
        [GJob("95", MIDNIGHT, MIDNIGHT + HOUR, (node,), (8.0,), gpus=1, gpu_ids="0")])
    assert fp.status == "ok", fp.error
    assert fp.gpu_energy_kwh == pytest.approx(0.25, rel=1e-9)  # 250 W bridged over the dropped sample
    assert fp.energy_kwh == pytest.approx(0.25 + 8 / 64 * 0.75, rel=1e-9)
    assert gpu.dropped_samples == 1


def test_energy_counters_give_the_energy_between_two_instants_exactly_resets_included(vm):
    """A node meter that exports joules (RAPL, Redfish energy: `victoriametrics.kind: counter`) and
    dcgm-exporter's TOTAL_ENERGY_CONSUMPTION (mJ since boot: `gpu.kind: counter`, unit_factor 0.001),
    the GPU's reset (a reboot) mid-job: the job's energy is the counters' increments, exactly."""
    node = vm.node("g")
    t = np.arange(MIDNIGHT - 600, MIDNIGHT + HOUR + 601, 30.0)
    rng = np.random.default_rng(7)
    node_w = 800 + 200 * rng.random(t.size - 1)  # the true mean power of each 30 s segment
    node_e = 1e9 + np.concatenate(([0.0], np.cumsum(node_w * 30.0)))
    gpu_w = 200 + 100 * rng.random(t.size - 1)
    gpu_mj = 5e9 + 1000 * np.concatenate(([0.0], np.cumsum(gpu_w * 30.0)))
    reset = t.size // 2
    gpu_mj[reset:] -= gpu_mj[reset - 1] + 1000 * gpu_w[reset - 1] * 30.0  # counter back to 0 at reboot ...
    gpu_mj[reset:] += 1000 * gpu_w[reset - 1] * 30.0  # ... and counting again from the sample before
    vm.import_series(node, t, node_e, metric="node_energy_joules_total", labels={})
    vm.import_lines([json.dumps({"metric": {"__name__": "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "gpu": "0",
                                            "Hostname": node}, "values": gpu_mj.tolist(),
                                 "timestamps": [int(x * 1000) for x in t]})])
    vm.flush()
    c = from_mapping({"nodes": [{"match": node, "name": "gpu", "cpus": 64, "gpus": 1}]})
    vc = VictoriaConfig(url=vm.url, query="node_energy_joules_total", kind="counter")
    gpu = GpuClient(vc, GpuConfig(query="DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", kind="counter", unit_factor=0.001))
    a, b = 20, t.size - 21  # the job runs from sample a to sample b
    (fp,) = Engine(c, VictoriaClient(vc), FakeIntensity(100), gpu_power=gpu).account(
        [GJob("96", float(t[a]), float(t[b]), (node,), (16.0,), gpus=1, gpu_ids="0")])
    assert fp.status == "ok" and fp.coverage == 1.0, fp
    node_j = node_e[b] - node_e[a]
    gpu_j = float(np.sum(gpu_w[a:b] * 30.0))  # the increments, the reset's segment included
    assert fp.gpu_energy_kwh * 3.6e6 == pytest.approx(gpu_j, rel=1e-11)  # the output keeps 12 digits
    assert fp.energy_kwh * 3.6e6 == pytest.approx(gpu_j + 16 / 64 * (node_j - gpu_j), rel=1e-11)


def test_how_the_gpus_were_found_is_in_the_json_and_the_token(vm):
    node = vm.node("g")
    load(vm, node, job="81")
    eng = engine(vm, node, GpuConfig(job_label="hpc_job"))
    by_idx, by_label, by_count = eng.account([
        GJob("80", MIDNIGHT, MIDNIGHT + HOUR, (node,), (8.0,), gpus=1, gpu_ids="1"),
        Job("81", MIDNIGHT, MIDNIGHT + HOUR, (node,), (8.0,), gpus=1),
        Job("82", MIDNIGHT, MIDNIGHT + HOUR, (node,), (8.0,), gpus=1)])
    assert [fp.to_dict()["gpu_found"] for fp in (by_idx, by_label, by_count)] == ["idx", "label", "count"]
    assert "gpu_by" not in format_token(by_idx)
    assert "gpu_by=label" in format_token(by_label) and "gpu_by=count" in format_token(by_count)
