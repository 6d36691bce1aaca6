"""`carbond show`: what a user reads for each kind of job (the read from Slurm is tested end to end)."""

from carbond.jobs import Job
from carbond.show import _text, _why_none
from carbond.slurm import JobFacts
from carbond.token import parse


def facts(start, end, state="COMPLETED"):
    return JobFacts(Job("7", start, end, ("n1",), (1.0,)), state)


def test_jobs_without_a_token_say_whether_one_will_come():
    assert _why_none(facts(None, 100.0, "CANCELLED")) == (True, "never ran (state CANCELLED): no footprint.")
    final, why = _why_none(facts(100.0, 100.0))
    assert final and "less than a second" in why
    final, why = _why_none(facts(100.0, 160.0))
    assert not final and why.startswith("not accounted yet")


def test_footprint_text_has_the_numbers_and_a_relatable_equivalent():
    values = parse("other carbond:co2e_g=850,energy_kwh=4.25,gkwh=200,cov=0.5")
    text = _text("7", facts(0.0, 7200.0), values, 1.2)
    assert "Energy: 4.25 kWh" in text and "Carbon footprint: 850 g CO2e (about 5.0 km" in text
    assert "Method: mixed (50% of node time measured)" in text and "Wall-clock time: 2.00 h" in text
    assert "PUE: 1.2" in text


# -- show() over a stand-in for sacct's answer (what sacct really returns is tested end to end) --
import io  # noqa: E402
import json  # noqa: E402
import sqlite3  # noqa: E402

import pytest  # noqa: E402

from carbond.config import Config, SlurmConfig  # noqa: E402
from carbond.show import _ledger_pues, show  # noqa: E402


class Sacct:
    """What SlurmIO.read_jobs(groups=True) returns for `sacct -j ids`: the jobs and their siblings."""

    def __init__(self, *facts):
        self.facts = facts
        self.asked = []

    def read_jobs(self, ids, groups=False):
        self.asked.append(list(ids))
        assert groups
        wanted = set(ids)
        return {f.job.job_id: f for f in self.facts
                if {f.job.job_id, f.job.label, f.job.label.split("_")[0].split("+")[0]} & wanted}


def task(raw, shown, token="carbond:co2e_g=10,energy_kwh=0.05,gkwh=200,pue=1.1", state="COMPLETED"):
    return JobFacts(Job(raw, 0.0, 60.0, ("n1",), (1.0,), display_id=shown), state, admin_comment=token)


ARRAY = (task("100", "100_3"), task("101", "100_1"), task("102", "100_2", token=""),
         task("103", "100_[4-5]", token="", state="PENDING"))


def run_show(ids, *facts, as_json=False, cfg=None):
    out = io.StringIO()
    code = show(cfg or Config(), ids, as_json=as_json, out=out, slurm=Sacct(*facts))
    return code, out.getvalue()


def test_an_array_id_shows_every_task_under_its_own_id():
    code, out = run_show(["100"], *ARRAY)
    assert code == 1  # 100_2 is not accounted yet and 100_[4-5] has not run
    assert [ln for ln in out.splitlines() if ln.startswith(("Job ID:", "Job "))] == [
        "Job ID: 100_1 (JobIDRaw 101)",
        "Job 100_2: not accounted yet (state COMPLETED); carbond writes its footprint a few seconds after the job ends.",
        "Job ID: 100_3 (JobIDRaw 100)",
        "Job 100_[4-5]: has not ended (state PENDING); carbond writes its footprint a few seconds after it ends.",
    ]


def test_one_task_by_its_id_or_raw_id_is_that_task_only():
    for ask in ("100_3", "101"):
        code, out = run_show([ask], *ARRAY)
        assert code == 0 and out.count("Job ID:") == 1
    assert "Job ID: 100_1 (JobIDRaw 101)" in run_show(["101"], *ARRAY)[1]


def test_het_job_id_shows_every_component():
    code, out = run_show(["311"], task("311", "311+0"), task("312", "311+1"))
    assert code == 0 and "Job ID: 311+0 (JobIDRaw 311)" in out and "Job ID: 311+1 (JobIDRaw 312)" in out


@pytest.mark.parametrize("bad", ["abc", "12a", "1_", "-5", "1;id", "1 2", ""])
def test_a_non_numeric_job_id_is_not_a_valid_job_id_and_never_reaches_sacct(bad):
    sacct = Sacct(task("7", "7"))
    out = io.StringIO()
    code = show(Config(), [bad, "7"], out=out, slurm=sacct)
    assert code == 1 and f"Job {bad}: not a valid job id" in out.getvalue() and "Job ID: 7" in out.getvalue()
    assert sacct.asked == [["7"]]


def test_json_lines_carry_the_task_ids_and_the_pue():
    code, out = run_show(["100", "zz"], *ARRAY, as_json=True)
    rows = [json.loads(ln) for ln in out.splitlines()]
    assert [r["job_id"] for r in rows] == ["100_1", "100_2", "100_3", "100_[4-5]", "zz"]
    assert rows[0]["pue"] == 1.1 and rows[0]["footprint"]["co2e_g"] == 10 and rows[0]["raw_id"] == "101"
    assert rows[4]["error"].startswith("not a valid job id") and code == 1


def make_ledger(path, with_pue=True):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE jobs (cluster TEXT, job_id TEXT, state TEXT" + (", pue REAL" if with_pue else "") + ")")
    db.execute("INSERT INTO jobs VALUES ('c1', '42', 'written'" + (", 1.45" if with_pue else "") + ")")
    db.execute("INSERT INTO jobs VALUES ('c2', '43', 'written'" + (", 1.9" if with_pue else "") + ")")
    db.commit()
    db.close()


def test_pue_is_the_one_the_job_was_accounted_with_never_the_config_default(tmp_path):
    cfg = Config(cluster="c1", state_dir=str(tmp_path), pue=1.7)
    old_token = "carbond:co2e_g=10,energy_kwh=0.05,gkwh=200"  # written before tokens carried pue
    # token first
    assert "PUE: 1.1\n" in run_show(["42"], task("42", "42"), cfg=cfg)[1]
    # no ledger here (a login node): said so, not the config's 1.7
    out = run_show(["42"], task("42", "42", token=old_token), cfg=cfg)[1]
    assert "PUE: not recorded" in out and "PUE: 1.7" not in out
    # the ledger's, for this cluster
    make_ledger(tmp_path / "ledger.sqlite")
    assert "PUE: 1.45\n" in run_show(["42"], task("42", "42", token=old_token), cfg=cfg)[1]
    assert "PUE: not recorded" in run_show(["43"], task("43", "43", token=old_token), cfg=cfg)[1]


def test_a_ledger_without_the_pue_column_or_unreadable_is_no_error(tmp_path):
    make_ledger(tmp_path / "ledger.sqlite", with_pue=False)
    assert _ledger_pues(Config(cluster="c1", state_dir=str(tmp_path)), ["42"]) == {}
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "ledger.sqlite").write_text("not a database")
    assert _ledger_pues(Config(cluster="c1", state_dir=str(tmp_path / "x")), ["42"]) == {}
    assert _ledger_pues(Config(cluster="c1", state_dir=str(tmp_path / "absent")), ["42"]) == {}


def test_any_field_finds_the_token_wherever_the_site_put_it():
    f = JobFacts(Job("9", 0.0, 60.0, ("n1",), (1.0,)), "COMPLETED", comment="mine carbond:co2e_g=3,energy_kwh=0.01")
    out = io.StringIO()
    assert show(Config(slurm=SlurmConfig()), ["9"], out=out, slurm=Sacct(f), any_field=True) == 0
    assert "Carbon footprint: 3 g" in out.getvalue()
    assert show(Config(), ["9"], out=io.StringIO(), slurm=Sacct(f)) == 1  # admin_comment only: not there


def test_an_unknown_id_is_said_to_be_unknown():
    code, out = run_show(["5", "7"], task("7", "7"))
    assert code == 1 and out.startswith("Job 5: not found in Slurm's accounting.\nJob ID: 7\n")


def test_a_running_job_needs_the_whole_config_and_says_why_when_it_cannot_read_it():
    from carbond.errors import ConfigError

    running = JobFacts(Job("300", 0.0, None, ("n1",), (1.0,), display_id="300"), "RUNNING")
    asked = []

    def unreadable():
        asked.append(True)
        raise ConfigError(["cannot read the file: Permission denied"], "/etc/carbond/carbond.yaml")

    out = io.StringIO()
    code = show(Config(), ["300"], out=out, slurm=Sacct(running), full_config=unreadable)
    assert code == 1 and asked == [True]
    assert out.getvalue().startswith("Job 300: running (state RUNNING); footprint so far unavailable:")
    assert "Permission denied" in out.getvalue()
    out = io.StringIO()
    show(Config(), ["300"], as_json=True, out=out, slurm=Sacct(running), full_config=unreadable)
    d = json.loads(out.getvalue())
    assert d["job_id"] == "300" and d["state"] == "RUNNING" and d["footprint"] is None and "Permission" in d["error"]
    # a finished job never loads the whole config
    asked.clear()
    run = show(Config(), ["100_3"], out=io.StringIO(), slurm=Sacct(*ARRAY), full_config=unreadable)
    assert run == 0 and asked == []


def any_field_show(*facts, as_json=False):
    out = io.StringIO()
    code = show(Config(), [f.job.job_id for f in facts], as_json=as_json, out=out, slurm=Sacct(*facts),
                any_field=True)
    return code, out.getvalue()


def owned(raw, comment, admin=""):
    return JobFacts(Job(raw, 0.0, 60.0, ("n1",), (1.0,), display_id=raw), "COMPLETED", admin_comment=admin,
                    comment=comment)


def test_without_the_config_a_footprint_from_the_user_editable_comment_is_marked_as_such():
    # issue 16: the owner could spoof the shown footprint through Comment
    spoof = owned("50", "carbond:co2e_g=1,energy_kwh=0.001,gkwh=5")
    code, out = any_field_show(spoof)
    assert code == 0 and "Source: the job's Comment, which its owner can edit: not verified by carbond" in out
    row = json.loads(any_field_show(spoof, as_json=True)[1])
    assert (row["source"], row["user_editable"]) == ("Comment", True)
    real = owned("51", "carbond:co2e_g=1,energy_kwh=0.001,gkwh=5", admin="carbond:co2e_g=900,energy_kwh=4,gkwh=225")
    code, out = any_field_show(real)  # carbond's own field wins over the owner's
    assert "Carbon footprint: 900 g" in out and "Source:" not in out
    row = json.loads(any_field_show(real, as_json=True)[1])
    assert (row["source"], row["user_editable"], row["footprint"]["co2e_g"]) == ("AdminComment", False, 900)


@pytest.mark.parametrize("token", ["carbond:co2e_g=abc", "carbond:cov=x,co2e_g=1", "carbond:energy_kwh=1e999",
                                   "carbond:co2e_g=1,pue=nan", "carbond:gkwh=-", "carbond:co2e_g=1,gpu_kwh=a-b"])
@pytest.mark.parametrize("as_json", [False, True])
def test_a_malformed_token_in_a_user_editable_field_never_crashes_show(token, as_json):
    # issue 16: the owner could make `show` exit 70 (a crash) for anyone
    code, out = any_field_show(owned("52", token), as_json=as_json)
    assert code == 1 and "malformed carbond token" in out
    code, out = any_field_show(owned("53", token, admin="carbond:co2e_g=900,energy_kwh=4,gkwh=225"), as_json=as_json)
    assert code == 0 and "900" in out
