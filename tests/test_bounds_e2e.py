"""Issue 16 on the real testbed: an intensity API answering an implausible value is an outage of
that provider for the real daemon (records wait, none is dead-lettered, nothing negative is
published), and the jobs are accounted once the API answers sensibly again.

Before the fix: an intensity of -250 was written into the token (co2e_g=-75, gkwh=-250) and
other junk (inf, a list) made every affected record a poison record, dead-lettered
within seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from carbond_stack import CarbondStack
from test_e2e_faults import ENDED, assert_metrics_equal_ledger, ledger, metric, report, wait_for
from test_intensity_uk import FakeUK, fmt

pytestmark = [pytest.mark.slurm, pytest.mark.vm]


class Answer(FakeUK):
    """The national API, answering `value` (raw JSON text) for every half-hour."""

    value = "-250"

    def national(self, req):
        slots = self._slots(req.path)
        body = ",".join(f'{{"from":"{fmt(s)}","to":"{fmt(s + 1800)}","intensity":{{"forecast":{self.value},"actual":null}}}}'
                        for s in slots)
        return 200, '{"data":[' + body + "]}"


@pytest.mark.parametrize("bad", ["-250", "[250]"])
def test_implausible_intensity_is_an_outage_not_a_poison_record_nor_a_negative_token(slurm, vm, http_api, tmp_path, bad):
    api = Answer(http_api)
    api.value = bad
    dead_dir = Path(slurm.spool_dir) / "dead"
    dead_before = set(dead_dir.iterdir()) if dead_dir.exists() else set()
    stack = CarbondStack(slurm, vm.url, tmp_path / "w", settle=5)
    text = stack.config.read_text()
    assert "intensity:\n  provider: constant\n  value: 200\n" in text
    stack.config.write_text(text.replace("intensity:\n  provider: constant\n  value: 200\n",
                                         f"intensity:\n  provider: uk-carbon-intensity\n  url: {http_api.url}\n  timeout: 5\n"))
    stack.start_feeder(1.0)
    try:
        stack.start()
        jobs = [slurm.sbatch(["-n1", "-J", f"bounds{i}"], "sleep 1") for i in range(4)]
        for j in jobs:
            slurm.wait_state(j, ENDED)
        t0 = time.monotonic()
        wait_for(lambda: metric(stack, "carbond_loop_errors_total", kind="intensity") > 0 and time.monotonic() - t0 > 10,
                 90, "the implausible answers seen as an intensity outage", stack)
        assert metric(stack, "carbond_loop_errors_total", kind="poison") == 0
        assert not any(stack.tokens(j)[j] for j in jobs)
        assert (set(dead_dir.iterdir()) if dead_dir.exists() else set()) == dead_before
        api.value = "250"  # the API is sane again: every job is accounted, with the right number
        for j in jobs:
            tok = stack.wait_tokens(j, timeout=90)[j]
            assert tok["gkwh"] == 250 and tok["co2e_g"] > 0, tok
        assert all(ledger(stack)[j][3] > 0 for j in jobs)
        assert (set(dead_dir.iterdir()) if dead_dir.exists() else set()) == dead_before
        figures = assert_metrics_equal_ledger(stack)
        report(f"implausible intensity {bad}", jobs=len(jobs), dead_lettered=0, **figures)
        stack.alive()
        assert stack.stop(timeout=25) == 0
    finally:
        stack.close()
