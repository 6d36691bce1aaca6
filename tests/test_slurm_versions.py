"""carbond.slurm's parsers on output captured from each real Slurm series the project tests.

tests/data/<series>/ is written by scripts/capture-slurm-outputs on a testbed of that series
(22.05 host, 24.11 Debian 13 root, 26.05 Debian sid root); ids.env names its jobs. Every
series must give the same facts from `sacct -P` and `sacct --json`, and every sacctmgr answer
must be classified the same way whatever words the series uses for it.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from carbond import token
from carbond.config import SlurmConfig
from carbond.errors import SlurmError
from carbond.slurm import (
    DENIED,
    MODIFIED,
    NOT_IN_DB,
    UNSUPPORTED,
    JobNotInDatabase,
    SlurmCommandError,
    SlurmIO,
    SlurmPermissionError,
    SlurmUnsupported,
    classify_modify,
    parse_json,
    parse_parsable,
    parse_version,
)

DATA = Path(__file__).parent / "data"
SERIES = sorted(p.name for p in DATA.iterdir() if (p / "ids.env").is_file())


def test_every_tested_series_is_captured():
    assert SERIES == ["22.05", "24.11", "26.05"]


class Capture:
    def __init__(self, series: str) -> None:
        self.dir = DATA / series
        self.ids: dict[str, str] = {}
        for line in (self.dir / "ids.env").read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                self.ids[key] = shlex.split(value)[0] if value else ""
        self.version = parse_version((self.dir / "sacctmgr-version.out").read_text())

    def text(self, name: str) -> str:
        return (self.dir / name).read_bytes().decode()

    def answer(self, name: str) -> tuple[int, str, str]:
        stem = name.rsplit(".", 1)[0]
        return int(self.text(stem + ".rc")), self.text(name), self.text(stem + ".err")

    def pairs(self, key: str) -> dict[str, str]:
        """`8_1=15 8_2=8` -> {"8_1": "15", "8_2": "8"} (display id -> raw id)."""
        line = next(v for k, v in (ln.partition("=")[::2] for ln in (self.dir / "ids.env").read_text().splitlines())
                    if k == key)
        return dict(item.split("=") for item in shlex.split(line)[0].split())


@pytest.fixture(params=SERIES)
def cap(request) -> Capture:
    return Capture(request.param)


def by_id(facts):
    return {f.job.job_id: f for f in facts}


def test_version_is_read(cap):
    assert cap.version[:2] == tuple(int(x) for x in cap.dir.name.split("."))
    assert cap.version == parse_version(cap.ids["VERSION"])


def test_parsable_and_json_give_the_same_facts(cap):
    parsable = by_id(parse_parsable(cap.text("jobs.txt")))
    assert by_id(parse_json(cap.text("jobs.json"))) == parsable
    assert len(parsable) == 10  # single, multi, 2 array tasks, 2 het components, failed, quoted, held, running


def test_every_job_kind_has_the_right_facts(cap):
    jobs = by_id(parse_json(cap.text("jobs.json")))
    ids = cap.ids
    single, multi = jobs[ids["SINGLE"]], jobs[ids["MULTI"]]
    assert single.ended and single.state == "COMPLETED" and single.job.cpus == (1.0,) and len(single.job.nodes) == 1
    assert single.job.start is not None and single.job.end >= single.job.start
    assert multi.job.nodes == ("n1", "n2", "n3") and multi.job.cpus == (1.0, 1.0, 1.0)
    assert (multi.job.partition, multi.job.account, multi.job.user, multi.cluster) == ("debug", "acct1", "root", "testcl")
    for display, raw in cap.pairs("ARRAY_TASKS").items():
        assert jobs[raw].job.display_id == display and jobs[raw].ended
    het = cap.pairs("HET_COMPONENTS")
    assert sorted(het) == [f"{ids['HET']}+0", f"{ids['HET']}+1"]
    assert [sum(jobs[het[k]].job.cpus) for k in sorted(het)] == [1.0, 2.0]
    assert all(jobs[raw].job.display_id == display for display, raw in het.items())
    assert jobs[ids["FAILED"]].state == "FAILED" and jobs[ids["FAILED"]].ended
    held = jobs[ids["CANCELLED_PENDING"]]  # 22.05 shows Start == End, 24.11+ Start None; JSON 0 or NO_VAL
    assert (held.state, held.job.start, held.job.nodes, held.ended) == ("CANCELLED", None, (), True)
    running = jobs[ids["RUNNING"]]
    assert running.state == "RUNNING" and running.job.start is not None and running.job.end is None
    assert not running.ended
    quoted = jobs[ids["QUOTED"]]
    assert quoted.comment == "User said \"hi\" it's |pipe| $(id) `uname`\nsecond line"


def test_a_comment_holding_the_delimiter_is_ambiguous_and_json_reads_it(cap):
    with pytest.raises(SlurmError, match="does not split"):
        parse_parsable(cap.text("sep-in-comment.txt"))
    jobs = by_id(parse_json(cap.text("sep-in-comment.json")))
    assert jobs[cap.ids["SEP"]].comment == "a\x1fb"
    assert sorted(jobs) == sorted([cap.ids["SEP"], cap.ids["SINGLE"]])


@pytest.mark.parametrize(("name", "outcome"), [
    ("sacctmgr-modified.out", MODIFIED),
    ("sacctmgr-unchanged.out", MODIFIED),  # a repeated write (crash before ack) is a success
    ("sacctmgr-mixed-case.out", MODIFIED),
    ("sacctmgr-nothing.out", NOT_IN_DB),
    ("sacctmgr-denied.out", DENIED),
])
def test_sacctmgr_answers_are_classified(cap, name, outcome):
    assert classify_modify(*cap.answer(name)) == outcome


def test_energy_tres_is_settable_from_25_11_only(cap):
    answer = classify_modify(*cap.answer("sacctmgr-energy.out"))
    stored = cap.text("energy-stored.txt")
    if cap.version >= (25, 11):
        assert answer == MODIFIED and "energy=4321" in stored
        assert classify_modify(*cap.answer("sacctmgr-energy-unknown.out")) == NOT_IN_DB
    else:
        assert answer == UNSUPPORTED and "energy=" not in stored


def test_what_sacctmgr_stores_matches_the_token_rules(cap):
    lowercases = cap.version < (23, 2)
    sent_quoted = "Other Tool:AbC \"q\" 's' a|b carbond:co2e_g=2"
    sent_plain = "Other Tool:AbC a|b carbond:co2e_g=2"
    stored_quoted = cap.text("mixed-case-stored.txt").rstrip("\n")
    stored_plain = cap.text("mixed-plain-stored.txt").rstrip("\n")
    # Quotes become backticks on every series: carbond never rewrites such a field.
    assert "`q` `s`" in stored_quoted and not token.survives_sacctmgr(sent_quoted, lowercases)
    # Mixed case survives from 23.02 on, and the token rules know it.
    assert (stored_plain == sent_plain) == token.survives_sacctmgr(sent_plain, lowercases)
    assert (stored_plain == sent_plain.lower()) == lowercases
    # The token merged into the stored field is found and replaced in place, case kept.
    merged = token.merge(stored_plain, token.format_token({"co2e_g": 3.5, "energy_kwh": 0.01, "method": "measured"}))
    assert merged.startswith(stored_plain.split("carbond:")[0]) and token.parse(merged)["co2e_g"] == 3.5


class Replay:
    """subprocess.run stand-in answering sacctmgr with one captured answer."""

    def __init__(self, answer: tuple[int, str, str]) -> None:
        self.answer = answer
        self.calls: list[list[str]] = []

    def __call__(self, args, **kw):
        self.calls.append(list(args))
        rc, out, err = self.answer
        return subprocess.CompletedProcess(args, rc, out.encode(), err.encode())


@pytest.mark.parametrize(("name", "error"), [
    ("sacctmgr-nothing.out", JobNotInDatabase),
    ("sacctmgr-denied.out", SlurmPermissionError),
    ("sacctmgr-array-id.out", SlurmCommandError),
])
def test_write_comment_raises_by_outcome(cap, name, error):
    io = SlurmIO(SlurmConfig(sacctmgr="sacctmgr"), runner=Replay(cap.answer(name)))
    with pytest.raises(error) as err:
        io.write_comment("1", "admin_comment", "x")
    assert type(err.value) is error
    assert err.value.retryable == (error is JobNotInDatabase)


def test_write_energy_tres_command_and_outcomes(cap):
    runner = Replay(cap.answer("sacctmgr-energy.out"))
    io = SlurmIO(SlurmConfig(sacctmgr="sacctmgr"), runner=runner, cluster="testcl")
    if cap.version >= (25, 11):
        io.write_energy_tres("1234_5", 4321.4)
    else:
        with pytest.raises(SlurmUnsupported) as err:
            io.write_energy_tres("1234_5", 4321.4)
        assert not err.value.retryable
    assert runner.calls == [["sacctmgr", "-i", "modify", "job", "where", "jobid=1234_5", "cluster=testcl", "set",
                             "tres=energy=4321"]]
    versioned = SlurmIO(SlurmConfig(sacctmgr="sacctmgr"), runner=Replay((0, cap.text("sacctmgr-version.out"), "")))
    assert versioned.supports_energy_tres() == (cap.version >= (25, 11))


def test_json_integer_spellings_of_every_data_parser():
    from carbond.slurm import NO_VAL, _int

    assert [_int(v) for v in (7, "7", None, 0)] == [7, 7, None, 0]
    assert _int({"set": True, "infinite": False, "number": 7}) == 7
    assert _int({"set": False, "infinite": False, "number": 0}) is None
    assert _int({"set": True, "infinite": True, "number": 0}) is None
    assert _int(NO_VAL) is None and _int(NO_VAL + 1) is None and _int(True) is None


def test_json_of_an_unexpected_shape_is_a_slurm_error_naming_the_job():
    with pytest.raises(SlurmError, match="job 5: unexpected shape"):
        parse_json('{"jobs": [{"job_id": 5, "state": {"current": ["COMPLETED"]}, "time": "soon"}]}')
    with pytest.raises(SlurmError, match="no JSON object"):
        parse_json("[]")
