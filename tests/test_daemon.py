"""The daemon's own logic that needs no cluster (the loop itself is tested end to end in test_e2e)."""

from test_spool import GOOD, record_text

from carbond.daemon import _with_record
from carbond.jobs import Job
from carbond.spool import parse_record

RECORD = record_text(dict(GOOD, job_id="202", array_job_id="202", array_task_id="1")).encode()


def test_an_incomplete_sacct_record_is_completed_from_the_epilog_record():
    # What sacct can show for about a second after the end: batch host only, no partition, raw id.
    early = Job("202", 1699999000.0, 1700000000.0, ("n1",), (4.0,), display_id="202")
    job = _with_record(early, parse_record(RECORD, "/spool/202_1-202.job"))
    assert job.nodes == ("n1", "n2", "n3") and job.cpus == (2.0, 1.0, 1.0)
    assert (job.partition, job.account, job.user) == ("debug", "physics", "alice")
    assert job.display_id == "202_1"  # sacctmgr must address the task, never the whole array
    assert (job.start, job.end) == (early.start, early.end)  # times stay Slurm's


def test_a_record_without_nodes_keeps_what_sacct_knows():
    empty = dict(nodes="", cpus_per_node="", array_job_id="", array_task_id="")
    rec = record_text(dict(GOOD, job_id="202", **empty)).encode()
    sacct = Job("202", 1.0, 2.0, ("n1",), (1.0,), partition="debug", display_id="202")
    assert _with_record(sacct, parse_record(rec, "/spool/202.job")) == Job(
        "202", 1.0, 2.0, ("n1",), (1.0,), partition="debug", account="physics", user="alice", display_id="202"
    )
