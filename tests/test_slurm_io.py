"""carbond.slurm: parsing captured Slurm 22.05 output, the commands it runs, and the real thing."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from carbond import token
from carbond.config import SlurmConfig
from carbond.errors import CarbondError, SlurmError
from carbond.slurm import (
    JobNotInDatabase,
    SlurmCommandError,
    SlurmIO,
    SlurmPermissionError,
    parse_json,
    parse_parsable,
    parse_version,
    write_target,
)

DATA = Path(__file__).parent / "data" / "sacct"


def data(name: str) -> str:
    return (DATA / name).read_bytes().decode()


class FakeRunner:
    """subprocess.run stand-in: answers by the command's first words, records every call."""

    def __init__(self, answers: dict[str, tuple[int, str, str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, args, *, capture_output, env, timeout, check):
        assert capture_output and not check and timeout > 0
        self.calls.append((list(args), env))
        key = "json" if "--json" in args else Path(args[0]).name
        rc, out, err = self.answers[key]
        return subprocess.CompletedProcess(args, rc, out.encode(), err.encode())


def io_with(answers, **kw) -> tuple[SlurmIO, FakeRunner]:
    runner = FakeRunner(answers)
    return SlurmIO(SlurmConfig(sacct="/opt/slurm/bin/sacct", sacctmgr="sacctmgr", concurrency=4),
                   runner=runner, env={"PATH": "/usr/bin", "SLURM_TIME_FORMAT": "standard"}, **kw), runner


# --- parsing captured output ----------------------------------------------------------------

def by_id(facts):
    return {f.job.job_id: f for f in facts}


def test_parsable_known_answers():
    jobs = by_id(parse_parsable(data("jobs.txt")))
    assert sorted(jobs, key=int) == ["1", "2", "3", "4", "5", "6", "7", "8", "315", "316"]
    two = jobs["2"]
    assert (two.job.start, two.job.end, two.job.nodes, two.job.cpus) == (1795240063.0, 1795240066.0,
                                                                          ("n1", "n2", "n3"), (1.0, 1.0, 1.0))
    assert (two.job.partition, two.job.account, two.job.user, two.cluster) == ("debug", "root", "root", "capcl")
    assert two.admin_comment == "js1:abc `q` `s` a b  |pipe|;semi {`k`:1}"  # 22.05's mangling, as stored
    assert jobs["4"].comment == "User said \"hi\" it's |pipe| $(id) `uname`\nsecond line"
    assert jobs["7"].job.display_id == "3_1" and jobs["7"].comment == "hello world"
    assert jobs["8"].system_comment == "sys comment" and jobs["8"].field("system_comment") == "sys comment"
    assert jobs["1"].field("admin_comment") == "carbond:co2e_g=12.3,energy_kwh=0.0456"
    assert jobs["5"].state == "FAILED" and jobs["5"].job.cpus == (2.0,) and jobs["5"].ended


def test_never_started_running_and_pending():
    jobs = by_id(parse_parsable(data("jobs.txt")))
    cancelled = jobs["6"]  # sacct shows Start == End == cancel time, NodeList "None assigned"
    assert (cancelled.state, cancelled.job.start, cancelled.job.end, cancelled.job.nodes) == (
        "CANCELLED", None, 1795240062.0, ())
    assert cancelled.ended
    running, pending = jobs["315"], jobs["316"]
    assert running.job.start == 1795240630.0 and running.job.end is None and not running.ended
    assert pending.job.start is None and pending.job.end is None and not pending.ended


def test_json_and_parsable_give_the_same_facts():
    assert by_id(parse_json(data("jobs.json"))) == by_id(parse_parsable(data("jobs.txt")))


def test_rows_forged_in_a_user_comment_are_detected():
    with pytest.raises(SlurmError, match="does not split"):
        parse_parsable(data("forged-row.txt"))
    io, runner = io_with({"sacct": (0, data("forged-row.txt"), ""), "json": (0, data("forged-row.json"), "")})
    facts = io.read_jobs(["4", "314", "317"])
    assert [("--json" in a) for a, _ in runner.calls] == [False, True]
    assert facts["317"].job.nodes == ("n1",) and facts["317"].job.cpus == (1.0,)
    assert facts["317"].comment.startswith("c\x1f317\n317\x1f") and facts["317"].comment.endswith("FAKE")
    assert facts["4"].comment.endswith("second line")


def test_default_pipe_delimiter_is_detected_as_ambiguous():
    with pytest.raises(SlurmError, match="does not split"):
        parse_parsable(data("jobs-pipe.txt"), delimiter="|")


def test_json_with_slurm_time_format_is_an_error_not_an_empty_answer():
    with pytest.raises(SlurmError, match="end_time"):
        parse_json(data("json-with-time-format.json"))


def test_version():
    assert parse_version(data("sacctmgr-version.out")) == (22, 5, 8)
    assert parse_version("slurm 23.02.1\n") == (23, 2, 1)
    with pytest.raises(SlurmError):
        parse_version("nope")


# --- commands --------------------------------------------------------------------------------

def test_read_jobs_is_one_call_with_epoch_times():
    io, runner = io_with({"sacct": (0, data("jobs.txt"), "")})
    facts = io.read_jobs(["1", "2", "2", "404"])
    assert len(runner.calls) == 1
    args, env = runner.calls[0]
    assert args[:6] == ["/opt/slurm/bin/sacct", "-X", "-a", "-P", "-n", "--delimiter=\x1f"]
    assert args[args.index("-j") + 1] == "1,2,404"
    assert args[-2:] == ["-o", "JobIDRaw,JobID,State,Start,End,NodeList,AllocTRES,Partition,Account,User,"
                                "Cluster,AdminComment,SystemComment,Comment,JobIDRaw"]
    assert env["SLURM_TIME_FORMAT"] == "%s" and env["TZ"] == "UTC" and env["PATH"] == "/usr/bin"
    assert "1" in facts and io.last_contact is not None


def test_read_jobs_json_runs_without_slurm_time_format():
    io, runner = io_with({"json": (0, data("jobs.json"), "")}, read_format="json", cluster="capcl")
    facts = io.read_jobs(["2"])
    args, env = runner.calls[0]
    assert args[:3] == ["/opt/slurm/bin/sacct", "--json", "-X"] and args[4:6] == ["-M", "capcl"]
    assert "SLURM_TIME_FORMAT" not in env
    assert facts["2"].job.nodes == ("n1", "n2", "n3")


def test_a_comment_holding_the_delimiter_falls_back_to_json():
    io, runner = io_with({"sacct": (0, data("unit-separator-in-comment.txt"), ""),
                          "json": (0, data("unit-separator-in-comment.json"), "")})
    facts = io.read_jobs(["20", "21"])
    assert [("--json" in a) for a, _ in runner.calls] == [False, True]
    assert facts["20"].admin_comment == "a\x1fb" and facts["21"].admin_comment == ""


def test_sacct_failure_names_the_command_and_stderr():
    io, _ = io_with({"sacct": (1, "", "sacct: error: Problem talking to the database: Connection refused")})
    with pytest.raises(SlurmCommandError) as err:
        io.read_jobs(["1"])
    assert err.value.cmd[0] == "/opt/slurm/bin/sacct" and "Connection refused" in err.value.stderr
    assert "/opt/slurm/bin/sacct -X" in str(err.value) and "exit 1" in str(err.value)
    assert err.value.retryable


def test_jobs_ended_between_cuts_the_window_exactly():
    io, runner = io_with({"sacct": (0, data("ended-between.txt"), "")})
    facts = io.jobs_ended_between(1795240064, 1795240066)  # [05:47:44, 05:47:46)
    args, env = runner.calls[0]
    assert args[args.index("-S") + 1] == "2026-11-21T05:47:43" and args[args.index("-E") + 1] == "2026-11-21T05:47:47"
    assert "--state=BF,CA,CD,DL,F,NF,OOM,PR,TO" in args and "-a" in args and env["TZ"] == "UTC"
    assert sorted(facts) == ["1", "7", "8"]


def test_write_comment_command_and_outcomes():
    io, runner = io_with({"sacctmgr": (0, data("sacctmgr-modified.out"), "")}, cluster="capcl")
    io.write_comment("1", "admin_comment", "my text carbond:co2e_g=1")
    args, _ = runner.calls[0]
    assert args == ["sacctmgr", "-i", "modify", "job", "where", "jobid=1", "cluster=capcl", "set",
                    "AdminComment=my text carbond:co2e_g=1"]
    io.write_comment("1", "system_comment", "x")
    io.write_comment("1", "comment", "y")
    assert [a[-1] for a, _ in runner.calls[1:]] == ["SystemComment=x", "Comment=y"]
    with pytest.raises(CarbondError, match="unknown comment field"):
        io.write_comment("1", "AdminComment", "x")


def test_array_and_het_jobs_are_written_by_their_jobid():
    facts = by_id(parse_parsable(data("het-and-array.txt")))
    assert by_id(parse_json(data("het-and-array.json"))) == facts
    assert [write_target(facts[k]) for k in ("7", "3", "311", "312")] == ["3_1", "3_3", "311+0", "311+1"]
    assert write_target(by_id(parse_parsable(data("jobs.txt")))["1"].job) == "1"
    io, runner = io_with({"sacctmgr": (0, data("sacctmgr-modified.out"), "")})
    results = io.write_many([(facts["3"], "admin_comment", "x"), ("42", "admin_comment", "y")])
    assert [a[5] for a, _ in runner.calls] == ["jobid=3_3", "jobid=42"] and results == {"3": None, "42": None}


def test_a_write_that_hit_a_whole_array_is_an_error():
    io, _ = io_with({"sacctmgr": (0, data("sacctmgr-array-id.out"), "")})
    with pytest.raises(SlurmCommandError, match="modified 3 jobs") as err:
        io.write_comment("3", "admin_comment", "x")
    assert not err.value.retryable


def test_read_jobs_returns_only_the_jobs_asked_for():
    io, _ = io_with({"sacct": (0, data("het-and-array.txt"), "")})
    assert sorted(io.read_jobs(["3", "311+1"])) == ["3", "312"]  # sacct also listed 7, 8 and 311


def test_write_to_a_job_slurmdbd_does_not_know_is_retryable():
    io, _ = io_with({"sacctmgr": (1, data("sacctmgr-nothing.out"), data("sacctmgr-nothing.err"))})
    with pytest.raises(JobNotInDatabase) as err:
        io.write_comment("99999", "admin_comment", "x")
    assert err.value.retryable and "job 99999" in str(err.value) and "jobid=99999" in str(err.value)


def test_write_without_operator_level_is_not_retryable():
    io, _ = io_with({"sacctmgr": (1, data("sacctmgr-denied.out"), data("sacctmgr-denied.err"))})
    with pytest.raises(SlurmPermissionError) as err:
        io.write_comment("1", "admin_comment", "x")
    assert not err.value.retryable and "Operator" in str(err.value)
    assert "doesn't have privilege" in err.value.stderr


def test_timeout_and_missing_binary_are_slurm_errors():
    def slow(args, **kw):
        raise subprocess.TimeoutExpired(args, kw["timeout"])

    io = SlurmIO(SlurmConfig(), runner=slow, timeout=0.5)
    with pytest.raises(SlurmCommandError, match="timed out"):
        io.read_jobs(["1"])
    io = SlurmIO(SlurmConfig(sacctmgr="/nonexistent/sacctmgr"))
    with pytest.raises(SlurmCommandError, match="/nonexistent/sacctmgr"):
        io.write_comment("1", "admin_comment", "x")


def test_write_many_is_bounded_and_reports_per_job():
    lock, state = threading.Lock(), {"now": 0, "peak": 0}
    modified = data("sacctmgr-modified.out")

    def runner(args, **kw):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.1)
        with lock:
            state["now"] -= 1
        job = args[5].split("=")[1]
        if job == "13":
            return subprocess.CompletedProcess(args, 1, data("sacctmgr-nothing.out").encode(), b"")
        return subprocess.CompletedProcess(args, 0, modified.encode(), b"")

    io = SlurmIO(SlurmConfig(concurrency=4), runner=runner)
    t0 = time.monotonic()
    results = io.write_many([(str(i), "admin_comment", "v") for i in range(12)] + [("13", "comment", "v")])
    elapsed = time.monotonic() - t0
    assert state["peak"] == 4
    assert 0.3 <= elapsed < 1.0  # 13 calls of 0.1 s, 4 at a time: 4 rounds
    assert [k for k, v in results.items() if v is None] == [str(i) for i in range(12)]
    assert isinstance(results["13"], JobNotInDatabase)
    assert io.write_many([]) == {}


# --- the real cluster -----------------------------------------------------------------------

def real_io(slurm, **kw) -> SlurmIO:
    return SlurmIO(SlurmConfig(), env=slurm.env, **kw)


def finished_jobs(slurm, n: int) -> list[str]:
    """n finished jobs (an array, so one submission), as JobIDRaw."""
    array = slurm.sbatch(["-a", f"1-{n}", "-n1", "-o", "/dev/null", "-J", "carbond-io"], "true")
    deadline = time.monotonic() + 120
    while True:  # slurmdbd completes a task's record a little after slurmctld ends it: ask sacct
        rows = slurm.sacct_rows(array, ["JobIDRaw", "JobID", "State", "Partition"])
        if len(rows) == n and all(r["State"] == "COMPLETED" and "_" in r["JobID"] and r["Partition"] for r in rows):
            return [r["JobIDRaw"] for r in rows]
        assert time.monotonic() < deadline, f"array {array}: {rows}\n{slurm.log_tail()}"
        time.sleep(0.5)


@pytest.mark.slurm
def test_real_read_write_and_read_back(slurm):
    io = real_io(slurm)
    (job_id,) = finished_jobs(slurm, 1)
    facts = io.read_jobs([job_id])[job_id]
    assert facts.ended and facts.state == "COMPLETED" and len(facts.job.nodes) == 1 and facts.job.cpus == (1.0,)
    assert facts.job.start is not None and facts.job.end >= facts.job.start
    assert real_io(slurm, read_format="json").read_jobs([job_id])[job_id] == facts

    other = "other-tool v=1; see |docs|\tdone"
    io.write_comment(facts, "admin_comment", other)
    t = token.format_token({"co2e_g": 1.25, "energy_kwh": 0.00321, "method": "measured"})
    facts = io.read_jobs([job_id])[job_id]
    merged = token.merge(facts.admin_comment, t)
    io.write_comment(facts, "admin_comment", merged)
    io.write_comment(facts, "admin_comment", merged)  # a repeated write (crash before ack) is fine
    back = io.read_jobs([job_id])[job_id].admin_comment
    assert back == other + " " + t
    assert token.parse(back)["co2e_g"] == 1.25
    assert token.merge(back, t) == back

    in_window = io.jobs_ended_between(facts.job.end, facts.job.end + 1)
    assert job_id in in_window and in_window[job_id].admin_comment == back


@pytest.mark.slurm
def test_real_sacctmgr_mangles_what_survives_sacctmgr_rejects(slurm):
    io = real_io(slurm)
    (job_id,) = finished_jobs(slurm, 1)
    assert io.version() >= (22, 5)
    foreign = 'JS1:H4sIAbC "q" it\'s'
    assert not token.survives_sacctmgr(foreign, io.lowercases())
    facts = io.read_jobs([job_id])[job_id]
    io.write_comment(facts, "system_comment", foreign)
    stored = io.read_jobs([job_id])[job_id].system_comment
    if io.lowercases():
        assert stored == "js1:h4siabc `q` it`s"  # what 22.05 does: the reason carbond will not rewrite it
    else:
        assert stored != foreign or token.survives_sacctmgr(foreign, False)
    ok = "lowercase text | with ünïcode ÄÖ"  # non-ASCII is not lowercased
    assert token.survives_sacctmgr(ok, io.lowercases())
    io.write_comment(facts, "comment", ok)
    assert io.read_jobs([job_id])[job_id].comment == ok


@pytest.mark.slurm
def test_real_unknown_job_is_not_in_database(slurm):
    with pytest.raises(JobNotInDatabase):
        real_io(slurm).write_comment("987654321", "admin_comment", "x")
    assert real_io(slurm).read_jobs(["987654321"]) == {}


@pytest.mark.slurm
def test_real_write_many_overlaps(slurm):
    io = real_io(slurm)
    ids = finished_jobs(slurm, 8)
    facts = io.read_jobs(ids)
    assert sorted(facts) == sorted(ids) and all("_" in f.job.display_id for f in facts.values())
    singles = []
    for job_id in ids[:2]:
        t0 = time.monotonic()
        io.write_comment(facts[job_id], "admin_comment", "warmup")
        singles.append(time.monotonic() - t0)
    t0 = time.monotonic()
    results = io.write_many([(facts[j], "admin_comment", f"carbond:co2e_g={i}") for i, j in enumerate(ids)],
                            concurrency=8)
    parallel = time.monotonic() - t0
    assert all(v is None for v in results.values()), results
    if statistics.median(singles) > 0.1:  # 22.05: ~0.27 s of waiting per write, so they overlap
        assert parallel < 8 * statistics.median(singles) / 2, (parallel, singles)
    else:  # 24.11+: ~10-30 ms each, mostly CPU on this 2-core machine: just not slower than serial
        assert parallel < 8 * statistics.median(singles) * 2 + 0.5, (parallel, singles)
    facts = io.read_jobs(ids)
    assert [token.parse(facts[j].admin_comment)["co2e_g"] for j in ids] == [float(i) for i in range(8)]


@pytest.mark.slurm
def test_real_hostile_comment_is_read_exactly(slurm):
    """A user comment with quotes, $(...), backticks, |, newlines and a forged \\x1f row."""
    fake = "987654321"  # an id no test cluster reaches
    hostile = f"it's \"q\" $(id) `id` |p|\nnext\x1f{fake}\n{fake}\x1f{fake}\x1fCOMPLETED\x1f1\x1f2\x1fn9\x1fcpu=64"
    job_id = slurm.sbatch(["-n1", "-o", "/dev/null", "--comment", hostile], "true")
    slurm.wait_sacct(job_id, ["State"], lambda r: r["State"] == "COMPLETED", timeout=60)
    facts = real_io(slurm).read_jobs([job_id, fake])
    assert sorted(facts) == [job_id]
    assert facts[job_id].comment == hostile and facts[job_id].job.nodes[0].startswith("n")
