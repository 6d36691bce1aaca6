"""Pieces of a job over its runs, without suspended intervals; footprints added back together."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from carbond.footprint import JobFootprint
from carbond.jobs import Job
from carbond.runs import combine, pieces
from carbond.slurm import Run


def fp(p, watts=100.0, intensity=200.0, method="measured", coverage=1.0):
    j = p.job
    kwh = watts * (j.end - j.start) * len(j.nodes) / 3.6e6
    return JobFootprint(j.job_id, "ok", energy_kwh=kwh, co2e_g=kwh * intensity, operational_g=kwh * intensity,
                        intensity_g_per_kwh=intensity, method=method, coverage=coverage, start=j.start, end=j.end)


def test_a_plain_job_is_one_piece_under_its_own_id():
    job = Job("1", 100.0, 200.0, ("n1",), (2.0,))
    [p] = pieces(job, [Run("1", "COMPLETED", 100.0, 200.0, ("n1",), 2, 0.0)])
    assert p.job == job and p.scale == 1.0
    assert combine("1", [(p, fp(p))]) == fp(p)


def test_each_run_on_its_own_nodes_and_the_final_one_keeps_the_spool_cpus():
    job = Job("2", 500.0, 600.0, ("n2", "n3"), (2.0, 1.0))
    runs = [Run("2", "REQUEUED", 100.0, 160.0, ("n1",), 3, 0.0), Run("2", "PENDING", None, None, (), 0, 0.0),
            Run("2", "COMPLETED", 500.0, 600.0, ("n2", "n3"), 3, 0.0)]
    ps = pieces(job, runs)
    assert [(p.job.nodes, p.job.cpus, p.job.start) for p in ps] == [(("n1",), (3.0,), 100.0),
                                                                    (("n2", "n3"), (2.0, 1.0), 500.0)]
    total = combine("2", [(p, fp(p)) for p in ps])
    assert total.job_id == "2" and math.isclose(total.energy_kwh, 100 * (60 + 2 * 100) / 3.6e6)
    assert total.start == 100.0 and total.end == 600.0 and total.method == "measured"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 50), st.integers(1, 50)), min_size=1, max_size=5))
def test_recorded_suspends_are_cut_out_exactly(gaps):
    t, intervals = 1000.0, []
    for run_s, sus_s in gaps:
        t += run_s
        intervals.append((t, t + sus_s))
        t += sus_s
    end = t + 10
    suspended = sum(e - s for s, e in intervals)
    job = Job("3", 1000.0, end, ("n1",), (1.0,))
    ps = pieces(job, [Run("3", "COMPLETED", 1000.0, end, ("n1",), 1, suspended)], intervals)
    assert all(p.scale == 1.0 for p in ps)
    assert math.isclose(sum(p.job.end - p.job.start for p in ps), end - 1000.0 - suspended)
    assert all(not (p.job.start < e and s < p.job.end) for p in ps for s, e in intervals)


def test_unknown_intervals_are_charged_pro_rata_and_flagged():
    job = Job("4", 0.0, 100.0, ("n1",), (1.0,))
    [p] = pieces(job, [Run("4", "COMPLETED", 0.0, 100.0, ("n1",), 1, 40.0)], [(10.0, 20.0)])  # 10 of 40 s known
    assert p.scale == 0.6 and "estimated" in p.note
    total = combine("4", [(p, fp(p))])
    assert math.isclose(total.energy_kwh, 0.6 * 100 * 100 / 3.6e6) and total.method != "measured"
    assert total.coverage < 1
