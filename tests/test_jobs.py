import pytest

from carbond.errors import JobInputError
from carbond.jobs import BadLine, Job, read_sacct

HEADER = "JobIDRaw|JobID|Start|End|NodeList|AllocTRES|Partition|Account|User\n"


def test_reads_epoch_table_and_skips_steps():
    lines = [
        HEADER,
        "101|101|1700000000|1700003600|n[1-2]|billing=4,cpu=4,gres/gpu=2,mem=8G,node=2|gpu|proj|alice\n",
        "101.batch|101.batch|1700000000|1700003600|n1|cpu=2|||\n",
        "102|100_2|Unknown|Unknown|None assigned||cpu|proj|bob\n",
    ]
    jobs = list(read_sacct(lines))
    assert jobs[0] == Job("101", 1700000000.0, 1700003600.0, ("n1", "n2"), (2.0, 2.0), 2, "gpu", "proj", "alice", "101",
                          mem_gb=8.0)
    assert jobs[1].start is None and jobs[1].nodes == () and jobs[1].display_id == "100_2"
    assert len(jobs) == 2


def test_local_times_and_bad_lines_are_reported_not_dropped():
    lines = [
        "JobIDRaw|Start|End|NodeList|AllocTRES\n",
        "1|2024-10-27T01:10:00|2024-10-27T01:50:00|n1|cpu=1\n",
        "2|2024-03-31T01:30:00|2024-03-31T03:00:00|n1|cpu=1\n",
        "3|1700000000|1700000100|n[1-|cpu=1\n",
        "4|1700000000|1700000100|n1\n",
    ]
    out = list(read_sacct(lines, "Europe/London"))
    assert isinstance(out[0], Job) and "ambiguous" in out[0].warnings[0]
    assert [type(o) for o in out[1:]] == [BadLine, BadLine, BadLine]
    assert "does not exist" in out[1].error and out[1].line_no == 3
    assert "unclosed" in out[2].error
    assert "expected 5 fields" in out[3].error


def test_missing_columns_name_the_fix():
    with pytest.raises(JobInputError, match="AllocTRES"):
        list(read_sacct(["JobIDRaw|Start|End|NodeList\n"]))


def _table_jobs(lines, window=86400.0, zone=None, limit=8 << 20):
    """Jobs and bad lines back out of the columnar reader, window by window."""
    import math

    from carbond.jobs import TimeBuckets

    out = []
    with TimeBuckets(lines, window, zone, limit=limit) as buckets:
        for t in buckets.windows():
            for j in range(len(t)):
                lo, hi = t.node_offsets[j], t.node_offsets[j + 1]
                cpus = tuple(float(c) for c in t.row_cpus[lo:hi])
                out.append(Job(str(t.job_id[j]), None if math.isnan(t.start[j]) else float(t.start[j]),
                               None if math.isnan(t.end[j]) else float(t.end[j]), t.nodes_of(j), cpus,
                               int(t.gpus[j]), str(t.partition[j]), str(t.account[j]), str(t.user[j]),
                               str(t.display_id[j]), t.warnings.get(j, ()),
                               mem_gb=float(t.mem_gb[j]) if t.mem_gb is not None else 0.0))
            out.extend(t.bad)
    return out


@pytest.mark.parametrize("limit", [1, 8 << 20])  # spilled to disk after every block, or kept in memory
def test_columnar_reader_reads_what_read_sacct_reads(limit):
    lines = [
        HEADER,
        "101|101|1700000000|1700003600|n[1-2]|billing=4,cpu=4,gres/gpu=2,mem=8G,node=2|gpu|proj|alice\n",
        "101.batch|101.batch|1700000000|1700003600|n1|cpu=2|||\n",
        "102|100_2|Unknown|Unknown|None assigned||cpu|proj|bob\n",
        "103|103|1700090000|1700093600|n[1-|cpu=1|a|b|c\n",
        "104|104|1700090000|1700093600|n1\n",
        "105|105|1699900000|1700000100|n3|cpu=3|a|b|c\n",
        "106|106|1700000000|1700003600|n1|cpu=1|a|b\x1e\r|c\x85\u2028\n",  # line breaks to str.splitlines, not to sacct
    ]
    got = _table_jobs(lines, limit=limit)
    want = list(read_sacct(lines))
    assert sorted(map(repr, got)) == sorted(map(repr, want))
    # Window order: 105 started the day before 101; the bad lines follow their window, 102 (no start) is last.
    assert [x.job_id for x in got] == ["105", "101", "106", "103", "104", "102"]


def test_columnar_reader_reads_local_times_with_their_warnings():
    lines = [
        "JobIDRaw|Start|End|NodeList|AllocTRES\n",
        "1|2024-10-27T01:10:00|2024-10-27T01:50:00|n1|cpu=1\n",
        "2|2024-03-31T01:30:00|2024-03-31T03:00:00|n1|cpu=1\n",
    ]
    got = _table_jobs(lines, zone="Europe/London")
    want = list(read_sacct(lines, "Europe/London"))
    assert got[0] == want[0] and "ambiguous" in got[0].warnings[0]
    assert isinstance(got[1], BadLine) and got[1].line_no == 3 and "does not exist" in got[1].error
