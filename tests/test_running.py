"""A running job: footprint so far up to the newest sample, projected to its time limit."""

import io
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from test_footprint import MIDNIGHT, FakeIntensity

from carbond.config import from_mapping
from carbond.engine import Engine
from carbond.jobs import Job
from carbond.metrics import Metrics
from carbond.running import project, running_emissions, show_running, so_far, time_limit

NOW = MIDNIGHT + 3600 + 45  # the newest sample is at MIDNIGHT + 3600


class Power:
    """400 W until 00:50, then 600 W; samples every 30 s up to MIDNIGHT + 3600."""

    def fetch_power(self, nodes, start, end):
        t = np.arange(MIDNIGHT - 600, MIDNIGHT + 3601, 30.0)
        return {n: (t, np.where(t < MIDNIGHT + 3000, 400.0, 600.0)) for n in nodes}

    def latest_sample(self, nodes, since):
        return {n: MIDNIGHT + 3600.0 for n in nodes}


def engine(**cfg):
    c = from_mapping({"nodes": [{"match": "r1", "cpus": 8}], **cfg})
    return Engine(c, Power(), FakeIntensity(100))


JOB = Job("55", MIDNIGHT, None, ("r1",), (4.0,), partition="p")
RAMP_J = 0.5 * 0.5 * 200 * 30  # the job's half of the 400 -> 600 W ramp over the 30 s before 00:50
SO_FAR_KWH = (200 * 3000 + 300 * 600 + RAMP_J) / 3.6e6


def test_so_far_and_projection_by_hand():
    p = so_far(engine(), JOB, NOW, 3 * 3600.0, Power().latest_sample)
    # half the node: 200 W for 50 min, then 300 W for 10 min (+ the 30 s ramp between the samples)
    so_far_kwh = SO_FAR_KWH
    assert p.measured_until == MIDNIGHT + 3600
    assert p.energy_kwh == pytest.approx(so_far_kwh, rel=1e-9)
    assert p.co2e_g == pytest.approx(so_far_kwh * 100, rel=1e-9)
    assert p.power_w == pytest.approx(300.0, rel=1e-9)  # the last 10 minutes
    # two more hours at 300 W and 100 g/kWh
    assert p.projected_energy_kwh == pytest.approx(so_far_kwh + 0.6, rel=1e-9)
    assert p.projected_co2e_g == pytest.approx((so_far_kwh + 0.6) * 100, rel=1e-9)


def test_project_without_a_limit_or_intensity():
    assert project(1.0, 2.0, 100.0, 10.0, None, 100.0, 1.0, 0.5) == (None, None, None)
    assert project(1.0, 2.0, 3.6e6, 0.0, 1.0, None, 1.0, 0.5) == (2.0, None, 0.5)


def test_projection_includes_the_embodied_co2_of_the_remaining_hours(tmp_path):
    """`show` on a running job: 4 of r1's 8 CPUs, embodied 50 g per node-hour, PUE 1.5, time limit 3 h
    from sacct (a fake that answers only `sacct -X -n -P -j 55 -o Timelimit`)."""
    sacct = tmp_path / "sacct"
    sacct.write_text('#!/bin/sh\n[ "$*" = "-X -n -P -j 55 -o Timelimit" ] || { echo "asked: $*" >&2; exit 9; }\n'
                     "echo 03:00:00\n")
    os.chmod(sacct, 0o755)
    cfg = from_mapping({"nodes": [{"match": "r1", "cpus": 8}], "slurm": {"sacct": str(sacct)}, "pue": 1.5,
                        "embodied": {"g_per_node_hour": 50}})
    eng = Engine(cfg, Power(), FakeIntensity(100))
    buf = io.StringIO()
    show_running(cfg, SimpleNamespace(job=JOB, state="RUNNING"), buf, as_json=True, engine=eng, now=NOW)
    d = json.loads(buf.getvalue())["running"]
    # so far (1 h): operational SO_FAR_KWH x 100 g/kWh x 1.5, embodied 50 g x 4/8 of a node x 1 h = 25 g
    assert d["co2e_g"] == pytest.approx(SO_FAR_KWH * 150 + 25, rel=1e-9)
    # the 2 h left: 300 W = 0.6 kWh x 150 = 90 g, and 50 g x 4/8 x 2 h = 50 g embodied
    assert d["projected_embodied_g"] == pytest.approx(50.0, rel=1e-9)
    assert d["projected_co2e_g"] == pytest.approx(SO_FAR_KWH * 150 + 25 + 90 + 50, rel=1e-9)
    buf = io.StringIO()
    show_running(cfg, SimpleNamespace(job=JOB, state="RUNNING"), buf, engine=eng, now=NOW)
    assert "(50 g embodied for the remaining hours)" in buf.getvalue()


def test_show_running_with_the_time_limit_from_sacct(tmp_path):
    sacct = tmp_path / "sacct"
    sacct.write_text("#!/bin/sh\necho 03:00:00\n")
    os.chmod(sacct, 0o755)
    assert time_limit(str(sacct), "55") == 10800
    cfg = from_mapping({"nodes": [{"match": "r1", "cpus": 8}], "slurm": {"sacct": str(sacct)}})
    eng = Engine(cfg, Power(), FakeIntensity(100))
    facts = SimpleNamespace(job=JOB, state="RUNNING")
    buf = io.StringIO()
    show_running(cfg, facts, buf, as_json=True, engine=eng, now=NOW)
    d = json.loads(buf.getvalue())["running"]
    assert d["time_limit_s"] == 10800 and d["projected_energy_kwh"] == pytest.approx(SO_FAR_KWH + 0.6, rel=1e-9)
    buf = io.StringIO()
    show_running(cfg, facts, buf, engine=eng, now=NOW)
    assert "At its time limit (3.00 h)" in buf.getvalue()


def test_unlimited_time_limit_gives_no_projection(tmp_path):
    sacct = tmp_path / "sacct"
    sacct.write_text("#!/bin/sh\necho UNLIMITED\n")
    os.chmod(sacct, 0o755)
    assert time_limit(str(sacct), "55") is None


def test_running_emissions_gauge():
    jobs = [JOB, Job("56", MIDNIGHT + 1800, None, ("r1",), (4.0,)), Job("57", MIDNIGHT, MIDNIGHT + 60, ("r1",), (4.0,))]
    grams = running_emissions(engine(), jobs, NOW, Power().latest_sample)
    first = SO_FAR_KWH * 100
    second = (200 * 1200 + 300 * 600 + RAMP_J) / 3.6e6 * 100
    assert grams == pytest.approx(first + second, rel=1e-9)
    reg = CollectorRegistry()
    m = Metrics(reg, "c1")
    m.set_running_emissions(grams)
    m.add_unattributed("p", 5.0)
    assert reg.get_sample_value("carbond_running_jobs_emissions_grams", {"cluster": "c1"}) == pytest.approx(grams)
    assert reg.get_sample_value("carbond_unattributed_energy_joules_total", {"cluster": "c1", "partition": "p"}) == 5.0
