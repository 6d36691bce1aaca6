"""Known answers for the GPU split (footprint.compute) and TRES weights; the idle identity under hypothesis."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbond.attribution import Weights, reconcile, tres_share

HOUR = 3600.0


def gpu_job(node_w: float, gpu_w: list[float | None], frac: list[float], cpu_share: float):
    """One job on one node for an hour, through footprint.compute (the arithmetic every command uses):
    the node meter and its GPUs flat, the job's fraction of each GPU, its CPU share."""
    from carbond.energy import build_trace
    from carbond.footprint import Allocation, GpuRows, compute

    t = np.arange(-600.0, HOUR + 601, 30.0)

    def flat(w):
        return None if w is None else build_trace(t, np.full(t.size, w), 300.0)

    traces = [flat(node_w), *map(flat, gpu_w)]
    gpus = GpuRows(np.zeros(len(gpu_w), np.int64), np.arange(1, len(gpu_w) + 1), np.array(frac, float))
    alloc = Allocation(np.array([0.0]), np.array([HOUR]), np.array([0]), np.array([0]), np.array([cpu_share]),
                       np.array([np.nan]), gpus)
    return compute(alloc, traces, None)


def test_gpu_job_carries_its_gpu_and_its_cpu_share_of_the_rest():
    # 4-GPU node at 1000 W for an hour; GPU 0 busy at 250 W, the others idle at 50 W.
    # The job holds GPU 0 and 8 of 64 CPUs: 250 W + 8/64 * (1000 - 400) W = 325 W.
    acc = gpu_job(1000.0, [250.0, 50.0, 50.0, 50.0], [1, 0, 0, 0], 8 / 64)
    assert acc.energy_j[0] == pytest.approx(325.0 * HOUR)
    assert acc.gpu_energy_j[0] == pytest.approx(250.0 * HOUR)
    # The CPU-only rule would have charged 1/8 of the node: 125 W.
    assert acc.energy_j[0] > 1000.0 * HOUR / 8


def test_gpu_meters_above_the_node_meter_are_scaled_down_to_it():
    acc = gpu_job(300.0, [300.0, 300.0], [1, 0], 0.5)
    assert acc.energy_j[0] == pytest.approx(150.0 * HOUR)  # half the node: its GPU's share, nothing besides
    assert acc.gpu_energy_j[0] == pytest.approx(150.0 * HOUR)


def test_absent_gpu_series_counts_as_zero_not_nan():
    acc = gpu_job(100.0, [None, 40.0], [1, 1], 0.0)
    assert acc.energy_j[0] == pytest.approx(40.0 * HOUR)


def test_tres_weights_split_by_weighted_allocation():
    w = Weights(cpu=5.0, gpu=250.0, mem_gb=0.5)
    # node: 64 CPUs, 4 GPUs, 512 GB -> 320 + 1000 + 256 = 1576; job: 8 CPUs, 1 GPU, 64 GB -> 40 + 250 + 32 = 322
    share = tres_share([8, 64], [1, 0], [64, 0], [64, 64], [4, 4], [512, 512], w)
    assert share[0] == pytest.approx(322 / 1576)
    assert share[1] == pytest.approx(320 / 1576)


def test_tres_without_capacity_is_nan():
    assert np.isnan(tres_share([1], [0], [0], [0], [0], [0], Weights()))[0]


def test_reconcile_report_and_spread_by_hand():
    # one node-half-hour measured 1000 J; two jobs attributed 300 J and 100 J by share (weights 3:1)
    keys = np.array([7])
    rep = reconcile(np.array([7, 7]), np.array([300.0, 100.0]), np.array([3.0, 1.0]), keys, np.array([1000.0]))
    assert rep.unattributed_j.tolist() == [600.0]
    spr = reconcile(np.array([7, 7]), np.array([300.0, 100.0]), np.array([3.0, 1.0]), keys, np.array([1000.0]),
                    policy="spread")
    assert spr.piece_j.tolist() == pytest.approx([750.0, 250.0])
    assert spr.unattributed_j.tolist() == [0.0]


def test_reconcile_scales_jobs_down_to_the_measurement():
    rep = reconcile(np.array([1, 1]), np.array([800.0, 400.0]), np.array([1.0, 1.0]), np.array([1]), np.array([600.0]))
    assert rep.piece_j.tolist() == pytest.approx([400.0, 200.0])
    assert rep.unattributed_j.tolist() == [0.0]


def test_reconcile_rejects_unknown_policy_and_keys():
    with pytest.raises(ValueError, match="report, spread"):
        reconcile(np.array([1]), np.array([1.0]), np.array([1.0]), np.array([1]), np.array([1.0]), policy="share")
    with pytest.raises(ValueError, match="not among"):
        reconcile(np.array([2]), np.array([1.0]), np.array([1.0]), np.array([1]), np.array([1.0]))


finite = st.floats(0.0, 1e7, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    measured=st.lists(finite, min_size=1, max_size=8),
    pieces=st.lists(st.tuples(st.integers(0, 7), finite, st.floats(0.0, 10.0)), max_size=40),
    policy=st.sampled_from(["report", "spread"]),
)
def test_node_energy_is_jobs_plus_unattributed_exactly(measured, pieces, policy):
    keys = np.arange(len(measured)) * 1800
    pk = np.array([keys[k % len(measured)] for k, _, _ in pieces], dtype=keys.dtype)
    pj = np.array([j for _, j, _ in pieces], dtype=float)
    pw = np.array([w for _, _, w in pieces], dtype=float)
    r = reconcile(pk, pj, pw, keys, np.array(measured), policy=policy)
    m = np.array(measured)
    assert np.all(r.unattributed_j >= 0)
    assert np.all(r.piece_j >= 0)
    assert np.all(r.jobs_j <= m * (1 + 1e-12))
    assert np.allclose(r.jobs_j + r.unattributed_j, m, rtol=1e-9, atol=0)
    per_key = np.bincount(np.searchsorted(keys, pk), r.piece_j, minlength=keys.size)
    assert np.allclose(per_key, r.jobs_j, rtol=1e-12, atol=0)
    if policy == "spread":
        # a key whose pieces have weight keeps nothing back
        wsum = np.bincount(np.searchsorted(keys, pk), pw, minlength=keys.size)
        assert np.allclose(r.unattributed_j[wsum > 0], 0.0, atol=1e-6 * max(1.0, m.max()))
