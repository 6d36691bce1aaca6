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
    assert jobs[0] == Job("101", 1700000000.0, 1700003600.0, ("n1", "n2"), (2.0, 2.0), 2, "gpu", "proj", "alice", "101")
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
