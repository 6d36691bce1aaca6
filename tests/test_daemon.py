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


# -- the invariant, over any record and any slurmdbd row (hypothesis) --
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from carbond.spool import SpoolRecord  # noqa: E402

_ids = st.sampled_from(["", "7", "1239", "1234"])
_names = st.sampled_from(["", "alice", "bob"])
_hosts = st.sampled_from(["", "n1", "n[1-2]", "n[1-3]", "n[1-64]", "x[1-2]"])
_cpus = st.sampled_from(["", "1", "2", "2(x2)", "1,3", "2(x64)", "4(x3)"])


@st.composite
def records(draw):
    kind = draw(st.sampled_from(["plain", "array", "het"]))
    array = (draw(_ids.filter(bool)), str(draw(st.integers(0, 4)))) if kind == "array" else ("", "")
    het = (draw(_ids.filter(bool)), str(draw(st.integers(0, 2)))) if kind == "het" else ("", "")
    return SpoolRecord(job_id="1239", array_job_id=array[0], array_task_id=array[1], nodes=draw(_hosts),
                       cpus_per_node=draw(_cpus), partition=draw(st.sampled_from(["", "debug", "gpu"])),
                       account=draw(st.sampled_from(["", "physics", "other"])), user=draw(_names), uid=None,
                       exit_code="", cluster="c", epilog_time=1, path="/s/1239.job", het_job_id=het[0],
                       het_job_offset=het[1])


@st.composite
def slurmdbd(draw):
    nodes = draw(st.sampled_from([("n1",), ("n1", "n2"), ("n2",), ("n1", "n2", "n3")]))
    total = draw(st.integers(1, 8))
    return Job("1239", 1.0, 2.0, nodes, tuple(total / len(nodes) for _ in nodes),
               partition=draw(st.sampled_from(["", "debug"])), account=draw(st.sampled_from(["", "physics"])),
               user=draw(_names), display_id=draw(st.sampled_from(["1239", "1234_3", "1239_0", "1238+1", ""])))


@settings(max_examples=500, deadline=None)
@given(records(), slurmdbd())
def test_a_record_only_ever_narrows_slurmdbds_facts(rec, job):
    try:
        out = _with_record(job, rec)
    except RecordContradicts:
        claimed = rec.display_id != rec.job_id
        assert (claimed and rec.display_id != job.display_id) or (rec.user and job.user and rec.user != job.user)
        return
    assert out.nodes == job.nodes and out.job_id == job.job_id
    assert abs(sum(out.cpus) - sum(job.cpus)) < 1e-9  # CPUs per node only redistributed, never more
    for key in ("partition", "account", "user"):
        assert getattr(out, key) == (getattr(job, key) or getattr(rec, key))
    # the write target is slurmdbd's id of this very job: its task or component, else its raw id
    assert out.display_id == (job.display_id if "_" in job.display_id or "+" in job.display_id else job.job_id)
