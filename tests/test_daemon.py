"""The daemon's own logic that needs no cluster (the loop itself is tested end to end in test_e2e)."""

import pytest
from test_spool import GOOD, record_text

from carbond.daemon import RecordContradicts, _with_record, complete
from carbond.jobs import Job
from carbond.spool import parse_record

RECORD = record_text(dict(GOOD, job_id="202", array_job_id="202", array_task_id="1")).encode()


def test_an_incomplete_sacct_record_is_waited_out_never_replaced_by_the_epilog_record():
    # What sacct can show for about a second after the end: batch host only, no partition, raw id.
    rec = parse_record(RECORD, "/spool/202_1-202.job")
    early = Job("202", 1699999000.0, 1700000000.0, ("n1",), (4.0,), display_id="202")
    assert not complete(early, rec)  # the daemon waits (at most settle_seconds after the end)
    final = Job("202", 1699999000.0, 1700000000.0, ("n1", "n2", "n3"), (4 / 3,) * 3, partition="debug",
                account="physics", user="alice", display_id="202_1")
    assert complete(final, rec)
    job = _with_record(final, rec)
    assert job.nodes == ("n1", "n2", "n3") and job.cpus == (2.0, 1.0, 1.0)  # narrowed: exact CPUs per node
    assert (job.partition, job.account, job.user) == ("debug", "physics", "alice")
    assert job.display_id == "202_1"  # sacctmgr must address the task, never the whole array
    assert (job.start, job.end) == (final.start, final.end)  # times stay Slurm's


def test_a_record_without_nodes_keeps_what_sacct_knows():
    empty = dict(nodes="", cpus_per_node="", array_job_id="", array_task_id="")
    rec = record_text(dict(GOOD, job_id="202", **empty)).encode()
    sacct = Job("202", 1.0, 2.0, ("n1",), (1.0,), partition="debug", display_id="202")
    assert _with_record(sacct, parse_record(rec, "/spool/202.job")) == Job(
        "202", 1.0, 2.0, ("n1",), (1.0,), partition="debug", account="physics", user="alice", display_id="202"
    )


def test_a_forged_array_id_is_a_contradiction_never_a_write_target():
    # issue 16: the record's `777_3` for a job whose sacct JobID is 1239 sent 1239's token to 777_3
    rec = parse_record(record_text(dict(GOOD, job_id="1239", array_job_id="777", array_task_id="3")).encode(),
                       "/spool/1239.job")
    sacct = Job("1239", 1.0, 2.0, ("n1",), (2.0,), partition="debug", user="alice", display_id="1239")
    with pytest.raises(RecordContradicts, match="777_3"):
        _with_record(sacct, rec)
    other_task = Job("1239", 1.0, 2.0, ("n1",), (2.0,), partition="debug", user="alice", display_id="1234_5")
    with pytest.raises(RecordContradicts, match="1234_5"):
        _with_record(other_task, rec)
    plain = parse_record(record_text(dict(GOOD, job_id="1239", array_job_id="", array_task_id="")).encode(),
                         "/spool/1239.job")
    assert _with_record(other_task, plain).display_id == "1234_5"  # sacct's own id, never the raw one


def test_a_forged_record_never_moves_a_footprint_to_other_nodes_users_accounts_or_partitions():
    # issue 16: node counts differed, so the record's 64 nodes, user, account and partition won
    forged = parse_record(record_text(dict(GOOD, job_id="300", array_job_id="", array_task_id="",
                                           nodes="n[1-64]", cpus_per_node="2(x64)", partition="gpu",
                                           account="other", user="mallory")).encode(), "/spool/300.job")
    sacct = Job("300", 1.0, 2.0, ("n1",), (2.0,), partition="debug", account="physics", user="alice",
                display_id="300")
    with pytest.raises(RecordContradicts, match="mallory"):
        _with_record(sacct, forged)
    same_user = parse_record(record_text(dict(GOOD, job_id="300", array_job_id="", array_task_id="",
                                              nodes="n[1-64]", cpus_per_node="2(x64)", partition="gpu",
                                              account="other")).encode(), "/spool/300.job")
    job = _with_record(sacct, same_user)
    assert (job.nodes, job.cpus, job.partition, job.account, job.user) == (
        ("n1",), (2.0,), "debug", "physics", "alice")
    assert not complete(sacct, same_user)  # waited out first: it may be slurmdbd's first second


def test_exact_cpus_per_node_only_when_they_add_up_to_slurmdbds():
    rec = parse_record(record_text(dict(GOOD, job_id="9", array_job_id="", array_task_id="", nodes="n[1-2]",
                                        cpus_per_node="63,1")).encode(), "/spool/9.job")
    sacct = Job("9", 1.0, 2.0, ("n1", "n2"), (2.0, 2.0), partition="debug", user="alice", display_id="9")
    assert _with_record(sacct, rec).cpus == (2.0, 2.0)


def test_a_het_component_must_be_slurmdbds():
    v2 = {"start_time": "", "end_time": "", "het_job_id": "1238", "het_job_offset": "1", "sluid": ""}
    rec = parse_record(record_text(dict(GOOD, job_id="1239", array_job_id="", array_task_id="", **v2),
                                   head="carbond-spool 2").encode(), "/spool/1239.job")
    ok = Job("1239", 1.0, 2.0, ("n1",), (2.0,), partition="debug", user="alice", display_id="1238+1")
    assert _with_record(ok, rec).display_id == "1238+1"
    with pytest.raises(RecordContradicts):
        _with_record(Job("1239", 1.0, 2.0, ("n1",), (2.0,), partition="debug", display_id="1239"), rec)
