"""carbond/spool.py: the strict record reader and the daemon's spool operations."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carbond.errors import CarbondError, JobInputError
from carbond.spool import (
    KEYS,
    STALE_TEMP_SECONDS,
    Spool,
    SpoolRecord,
    expand_cpus_per_node,
    job_id_key,
    parse_record,
    read_record,
)

GOOD = {
    "job_id": "1239",
    "array_job_id": "1234",
    "array_task_id": "5",
    "nodes": "n[1-3]",
    "cpus_per_node": "2,1(x2)",
    "partition": "debug",
    "account": "physics",
    "user": "alice",
    "uid": "1000",
    "exit_code": "0:0",
    "cluster": "testcl",
    "epilog_time": "1700000000",
}


def record_text(values: dict[str, str] | None = None, head: str = "carbond-spool 1", tail: str = "end\n") -> str:
    values = GOOD if values is None else values
    return head + "\n" + "".join(f"{k}={v}\n" for k, v in values.items()) + tail


def write(spool: Path, name: str, text: str | bytes, mtime: float | None = None) -> Path:
    path = spool / name
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def spool(tmp_path) -> Path:
    d = tmp_path / "spool"
    d.mkdir()
    return d


def test_parse_good_record():
    rec = parse_record(record_text().encode(), "/s/1234_5-1239.job", inode=7)
    assert rec == SpoolRecord(
        job_id="1239",
        array_job_id="1234",
        array_task_id="5",
        nodes="n[1-3]",
        cpus_per_node="2,1(x2)",
        partition="debug",
        account="physics",
        user="alice",
        uid=1000,
        exit_code="0:0",
        cluster="testcl",
        epilog_time=1700000000,
        path="/s/1234_5-1239.job",
    )
    assert rec.inode == 7
    assert rec.job_id_key == job_id_key(rec) == "1239"  # raw id: what sacctmgr and JobIDRaw use
    assert rec.display_id == "1234_5"
    assert rec.hosts() == ("n1", "n2", "n3") and rec.cpus() == [2, 1, 1]


def test_empty_optional_values():
    values = dict(GOOD, array_job_id="", array_task_id="", nodes="", cpus_per_node="", uid="", exit_code="")
    rec = parse_record(record_text(values).encode(), "/s/9.job", mtime=1700000123.7)
    assert (rec.uid, rec.hosts(), rec.cpus(), rec.display_id) == (None, (), [], "1239")
    rec = parse_record(record_text(dict(values, epilog_time="")).encode(), "/s/9.job", mtime=1700000123.7)
    assert rec.epilog_time == 1700000123  # the file's mtime stands in


def test_values_may_contain_equals_and_unicode():
    rec = parse_record(record_text(dict(GOOD, account="a=b=c", user="zoë")).encode(), "/s/1.job")
    assert (rec.account, rec.user) == ("a=b=c", "zoë")


def _without(key: str) -> dict[str, str]:
    return {k: v for k, v in GOOD.items() if k != key}


BAD = {
    "empty": b"",
    "not a record": b"hello\n",
    "unknown version": record_text(head="carbond-spool 2").encode(),
    "version with spaces": record_text(head="carbond-spool 1 ").encode(),
    "no end line": record_text(tail="").encode(),
    "no final newline": record_text(tail="end").encode(),
    "missing key": record_text(_without("uid")).encode(),
    "unknown key": record_text(dict(GOOD, job_name="x")).encode(),
    "line without =": (record_text(tail="") + "garbage\nend\n").encode(),
    "repeated key": (record_text(tail="") + "uid=0\nend\n").encode(),
    "carriage return": record_text(dict(GOOD, user="a\rb")).encode(),
    "escape": record_text(dict(GOOD, account="\x1b[31m")).encode(),
    "nul": record_text(dict(GOOD, account="a\0b")).encode(),
    "job id letters": record_text(dict(GOOD, job_id="12x")).encode(),
    "job id zero": record_text(dict(GOOD, job_id="0")).encode(),
    "job id empty": record_text(dict(GOOD, job_id="")).encode(),
    "job id shell": record_text(dict(GOOD, job_id="$(id)")).encode(),
    "array half": record_text(dict(GOOD, array_task_id="")).encode(),
    "array letters": record_text(dict(GOOD, array_job_id="x")).encode(),
    "uid": record_text(dict(GOOD, uid="-1")).encode(),
    "exit code": record_text(dict(GOOD, exit_code="1")).encode(),
    "epilog time": record_text(dict(GOOD, epilog_time="soon")).encode(),
    "hostlist": record_text(dict(GOOD, nodes="n[1-3")).encode(),
    "cpus syntax": record_text(dict(GOOD, cpus_per_node="2,(x3)")).encode(),
    "cpus count": record_text(dict(GOOD, cpus_per_node="2(x4)")).encode(),
    "too large": record_text(dict(GOOD, partition="p" * 300_000)).encode(),
    "extra line after end": (record_text() + "uid=0\n").encode(),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_strict_reader_rejects(name):
    with pytest.raises(JobInputError) as exc:
        parse_record(BAD[name], "/spool/1239.job")
    assert "/spool/1239.job" in str(exc.value) and "job 1239" in str(exc.value)


def test_expand_cpus_per_node():
    assert expand_cpus_per_node("2,1(x3)") == [2, 1, 1, 1]
    assert expand_cpus_per_node("4") == [4]
    assert expand_cpus_per_node("72(x2),36") == [72, 72, 36]
    for bad in ("", "x", "2(x0)", "2(3)", "1,,2", "-1", "2(x99999999)"):
        with pytest.raises(JobInputError):
            expand_cpus_per_node(bad)


@given(st.lists(st.tuples(st.integers(0, 512), st.integers(1, 50)), min_size=1, max_size=20))
def test_expand_cpus_per_node_inverts_slurm_run_length(runs):
    text = ",".join(str(c) if n == 1 else f"{c}(x{n})" for c, n in runs)
    assert expand_cpus_per_node(text) == [c for c, n in runs for _ in range(n)]


def test_pending_sorted_bad_files_dead_lettered_temps_ignored(spool):
    write(spool, "20.job", record_text(dict(GOOD, job_id="20", epilog_time="1700000050")), mtime=1700000050)
    write(spool, "10.job", record_text(dict(GOOD, job_id="10", epilog_time="1700000010")), mtime=1700000010)
    write(spool, "11.job", record_text(dict(GOOD, job_id="11", epilog_time="1700000010")), mtime=1700000010)
    write(spool, "30.job", "carbond-spool 9\n", mtime=1700000005)
    write(spool, ".31.4242.tmp", "carbond-spool 1\njob_id=31\n")  # epilog still writing
    write(spool, "README", "not a record")
    records, bad = Spool(spool).pending()
    assert [r.job_id for r in records] == ["10", "11", "20"]
    assert [Path(b.path).name for b in bad] == ["30.job"]
    assert "unknown version" in bad[0].reason and "job 30" in bad[0].reason
    assert not (spool / "30.job").exists()
    assert (spool / "dead" / "30.job").read_text() == "carbond-spool 9\n"
    assert "unknown version" in (spool / "dead" / "30.job.reason").read_text()
    assert (spool / ".31.4242.tmp").exists() and (spool / "README").exists()
    assert Spool(spool).pending() == (records, [])  # reading is idempotent until ack


def test_pending_limit_takes_the_oldest_files(spool):
    for i in range(10):
        write(spool, f"{100 + i}.job", record_text(dict(GOOD, job_id=str(100 + i))), mtime=1700000000 + (9 - i))
    records, _ = Spool(spool).pending(limit=3)
    assert sorted(r.job_id for r in records) == ["107", "108", "109"]


def test_symlink_and_fifo_are_dead_lettered_without_blocking(spool, tmp_path):
    target = tmp_path / "elsewhere.job"
    target.write_text(record_text())
    (spool / "1.job").symlink_to(target)
    os.mkfifo(spool / "2.job")
    t0 = time.monotonic()
    records, bad = Spool(spool).pending()
    assert time.monotonic() - t0 < 2
    assert records == [] and sorted(Path(b.path).name for b in bad) == ["1.job", "2.job"]
    assert target.exists()


def test_ack_removes_once_and_spares_a_replaced_file(spool):
    write(spool, "1239.job", record_text())
    (rec,) = Spool(spool).pending()[0]
    assert Spool(spool).ack(rec) is True
    assert not (spool / "1239.job").exists()
    assert Spool(spool).ack(rec) is False  # already gone: harmless
    write(spool, "1239.job", record_text())
    (rec,) = Spool(spool).pending()[0]
    (spool / "1239.job").rename(spool / "keep")
    write(spool, "1239.job", record_text())  # a new record took the name
    assert Spool(spool).ack(rec) is False
    assert (spool / "1239.job").exists()


def test_dead_letter_keeps_both_of_two_same_names(spool):
    s = Spool(spool)
    for _ in range(2):
        write(spool, "1239.job", record_text())
        (rec,) = s.pending()[0]
        dead = s.dead_letter(rec, "sacct never knew job 1239\nafter 10 tries")
        assert dead.moved and Path(dead.path).parent == spool / "dead"
        reason = Path(dead.path + ".reason").read_text()
        assert reason.startswith("sacct never knew job 1239 after 10 tries\n")
    assert s.dead_count() == 2 and s.backlog()[0] == 0
    assert "1239.job" in {p.name for p in (spool / "dead").iterdir()}


def test_backlog_counts_ready_files_and_oldest_age(spool):
    s = Spool(spool, clock=lambda: 1700000100.0)
    assert s.backlog() == (0, 0.0)
    write(spool, "1.job", record_text(), mtime=1700000040)
    write(spool, "2.job", record_text(), mtime=1700000090)
    write(spool, ".3.99.tmp", "", mtime=1700000000)  # in flight: not backlog
    (spool / "dead").mkdir()
    write(spool / "dead", "4.job", "", mtime=1699999999)
    assert s.backlog() == (2, 60.0)


def test_backlog_is_cheap_enough_to_call_every_second(spool):
    text = record_text()
    for i in range(5000):
        write(spool, f"{i + 1}.job", text)
    s = Spool(spool)
    t0 = time.perf_counter()
    count, _ = s.backlog()
    took = time.perf_counter() - t0
    assert count == 5000 and took < 0.25, took


def test_stale_temp_files_are_swept(spool):
    now = time.time()
    write(spool, ".1.10.tmp", "carbond-spool 1\n", mtime=now - STALE_TEMP_SECONDS - 10)
    write(spool, ".2.11.tmp", "carbond-spool 1\n", mtime=now - 5)
    Spool(spool).pending()
    assert not (spool / ".1.10.tmp").exists() and (spool / ".2.11.tmp").exists()


def test_missing_spool_directory_is_an_error_naming_it(tmp_path):
    s = Spool(tmp_path / "nope")
    for call in (s.backlog, s.pending):
        with pytest.raises(CarbondError, match="nope"):
            call()
    assert s.dead_count() == 0


def test_read_record_file(spool):
    path = write(spool, "1239.job", record_text())
    rec = read_record(str(path))
    assert rec.inode == path.stat().st_ino and rec.path == str(path)
    assert len(KEYS) == len(GOOD)


V2 = {"start_time": "1699999000", "end_time": "1699999990", "het_job_id": "", "het_job_offset": "", "sluid": ""}


def test_version_2_record_adds_times_het_ids_and_sluid():
    rec = parse_record(record_text(dict(GOOD, **V2), head="carbond-spool 2").encode(), "/s/9.job")
    assert (rec.version, rec.start_time, rec.end_time, rec.sluid) == (2, 1699999000, 1699999990, "")
    het = parse_record(record_text(dict(GOOD, array_job_id="", array_task_id="", **dict(
        V2, het_job_id="311", het_job_offset="1", sluid="s27NM80W5BNS00")), head="carbond-spool 2").encode(), "/s/312.job")
    assert (het.display_id, het.het_job_id, het.het_job_offset, het.sluid) == ("311+1", "311", "1", "s27NM80W5BNS00")
    empty = parse_record(record_text(dict(GOOD, **dict(V2, start_time="", end_time="")), head="carbond-spool 2").encode(),
                         "/s/9.job")
    assert (empty.start_time, empty.end_time) == (None, None)


def test_version_1_record_is_still_read_and_has_no_times():
    rec = parse_record(record_text().encode(), "/s/9.job")
    assert (rec.version, rec.start_time, rec.end_time, rec.het_job_id, rec.sluid) == (1, None, None, "", "")


@pytest.mark.parametrize(("changes", "head", "message"), [
    (V2, "carbond-spool 1", "unknown key"),  # v2 keys under a v1 header
    ({}, "carbond-spool 2", "missing keys start_time"),  # a v2 header needs every v2 key
    (dict(V2, end_time="1699998000"), "carbond-spool 2", "before start_time"),
    (dict(V2, het_job_id="311"), "carbond-spool 2", "bad het job ids"),
    (dict(V2, het_job_id="311", het_job_offset="1"), "carbond-spool 2", "both array and het"),
    (dict(V2, sluid="s27-NM"), "carbond-spool 2", "bad sluid"),
    (dict(V2, start_time="soon"), "carbond-spool 2", "bad start_time"),
])
def test_version_2_is_as_strict_as_version_1(changes, head, message):
    with pytest.raises(JobInputError, match=message):
        parse_record(record_text(dict(GOOD, **changes), head=head).encode(), "/s/9.job")

