"""End to end on every Slurm series tested (22.05 host, 24.11, 26.05: CARBOND_SLURM): what differs.

Het jobs, a `\\x1f` in a user's comment (the `sacct --json` fallback, whose schema changed in
each series), a mixed-case AdminComment that 23.02+ keeps (the token is merged) and 22.05
would lowercase (left alone), quotes that every series turns into backticks (left alone), the
epilog's version 2 record, and the energy TRES write of Slurm 25.11+.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from carbond_stack import ended, running_stack, stopped

from carbond import token
from carbond.config import SlurmConfig
from carbond.slurm import SlurmIO, SlurmUnsupported
from carbond.spool import read_record

pytestmark = [pytest.mark.slurm, pytest.mark.vm]

@pytest.fixture(scope="module")
def stack(slurm, vm, tmp_path_factory):
    with running_stack(slurm, vm.url, tmp_path_factory.mktemp("carbond-series")) as s:
        yield s


@pytest.fixture
def alive(stack):
    """The daemon must be running after the test, whatever the test did."""
    yield stack
    assert stack.proc is not None and stack.proc.poll() is None, \
        f"carbond died (exit {stack.proc.returncode}):\n{stack.log.read_text()[-3000:]}"


def io_for(slurm) -> SlurmIO:
    return SlurmIO(SlurmConfig(sacct=slurm.bin("sacct"), sacctmgr=slurm.bin("sacctmgr")), env=slurm.env)


def wait_skipped(stack, before: float, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and stack.metric_sum("carbond_writes_skipped_total") == before:
        time.sleep(0.3)
    assert stack.metric_sum("carbond_writes_skipped_total") == before + 1, stack.log.read_text()[-2000:]


def test_het_job_components_are_each_accounted(alive, slurm):
    job = slurm.sbatch(["-n1", "-J", "het", ":", "-n2"], "sleep 2")
    toks = alive.wait_tokens(job, count=2)
    assert sorted(toks) == [f"{job}+0", f"{job}+1"]
    assert all(t["co2e_g"] > 0 and t["energy_kwh"] > 0 for t in toks.values())
    # The 2-CPU component held twice the CPUs of the 1-CPU one, on the same nodes' power.
    cpus = {r["JobID"]: r["AllocTRES"] for r in slurm.sacct_rows(job, ["JobID", "AllocTRES"])}
    assert "cpu=1" in cpus[f"{job}+0"] and "cpu=2" in cpus[f"{job}+1"], cpus


def test_unit_separator_in_a_user_comment_is_read_through_json(alive, slurm):
    comment = "before\x1f99999\x1fCOMPLETED\nafter"
    job = slurm.sbatch(["-n1", "-J", "sep", f"--comment={comment}"], "sleep 1")
    tok = alive.wait_tokens(job)[job]
    assert tok["co2e_g"] > 0
    facts = io_for(slurm).read_jobs([job])[job]  # the parsable read is ambiguous: JSON answers
    assert facts.comment == comment and token.parse(facts.admin_comment) == tok


def job_with_admin_comment(slurm, text: str) -> str:
    """A short job whose AdminComment another tool set while it ran."""
    job = slurm.sbatch(["-n1", "-J", "admin"], "sleep 4")
    slurm.wait_state(job, "RUNNING")
    slurm.run(["scontrol", "update", f"jobid={job}", f"AdminComment={text}"])
    return job


def test_mixed_case_admin_comment_gets_the_token_merged_from_23_02(alive, slurm):
    other = "OtherTool:RunID=AbC-42;Mode=Fast"
    before = alive.metric_sum("carbond_writes_skipped_total")
    job = job_with_admin_comment(slurm, other)
    if slurm.version >= (23, 2):  # sacctmgr keeps case: merge, every byte of the other tool kept
        tok = alive.wait_tokens(job)[job]
        admin = io_for(slurm).read_jobs([job])[job].admin_comment
        assert admin.startswith(other + " carbond:") and token.parse(admin) == tok
    else:  # 22.05 would store it lowercased: carbond leaves the field alone and counts it
        ended(slurm, job)
        wait_skipped(alive, before)
        assert io_for(slurm).read_jobs([job])[job].admin_comment == other


def test_quotes_in_admin_comment_are_left_alone_on_every_series(alive, slurm):
    other = 'note "keep" it\'s'
    before = alive.metric_sum("carbond_writes_skipped_total")
    job = job_with_admin_comment(slurm, other)
    ended(slurm, job)
    wait_skipped(alive, before)
    assert io_for(slurm).read_jobs([job])[job].admin_comment == other


def test_epilog_record_carries_what_the_series_hands_it(alive, slurm):
    with stopped(alive):  # read the records before the daemon takes them
        plain = slurm.sbatch(["-n1", "-J", "rec"], "sleep 1")
        het = slurm.sbatch(["-n1", "-J", "rechet", ":", "-n1"], "sleep 1")
        ended(slurm, plain)
        ended(slurm, het)
        spool = Path(slurm.spool_dir)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            recs = {r.display_id: r for r in (read_record(str(p)) for p in spool.glob("*.job"))}
            if {plain, f"{het}+0", f"{het}+1"} <= set(recs):
                break
            time.sleep(0.2)
        assert {plain, f"{het}+0", f"{het}+1"} <= set(recs), sorted(recs)
        rec = recs[plain]
        row = slurm.sacct_fields(plain, ["Start", "End"])
        assert rec.version == 2
        if slurm.version >= (23, 2):
            assert (rec.start_time, rec.end_time) == (int(row["Start"]), int(row["End"]))
        else:
            assert (rec.start_time, rec.end_time) == (None, None)
        assert bool(rec.sluid) == (slurm.version >= (25, 11)), rec.sluid
        assert (recs[f"{het}+1"].het_job_id, recs[f"{het}+1"].het_job_offset) == (het, "1")
        assert recs[f"{het}+1"].job_id != het and recs[f"{het}+0"].job_id == het
    assert alive.wait_tokens(plain)[plain]["co2e_g"] > 0
    assert len(alive.wait_tokens(het, count=2)) == 2


def test_energy_tres_write_from_25_11(slurm):
    job = slurm.sbatch(["-n1", "-J", "tres"], "true")
    ended(slurm, job)
    io = io_for(slurm)
    assert io.supports_energy_tres() == (slurm.version >= (25, 11))
    if not io.supports_energy_tres():
        with pytest.raises(SlurmUnsupported):
            io.write_energy_tres(job, 1234.4)
        return
    io.write_energy_tres(job, 1234.4)
    row = slurm.wait_sacct(job, ["AllocTRES"], lambda r: "energy=" in r["AllocTRES"])
    assert "energy=1234" in row["AllocTRES"].split(","), row
    io.write_energy_tres(job, 1234.4)  # a repeated write (crash before the ledger mark) succeeds
