"""`carbond backfill` window by window: resumable through the ledger, --rewrite, progress, summary.

Slurm is a fake here (the real one is in test_e2e): it records every token write and can be
interrupted mid-run, which is what these tests need to see.
"""

import io

import pytest
from test_footprint import MIDNIGHT, FakeIntensity, FakePower

from carbond.backfill import backfill
from carbond.config import from_mapping
from carbond.engine import Engine
from carbond.jobs import Job
from carbond.ledger import Ledger
from carbond.slurm import JobFacts
from carbond.token import parse

DAY = 86400.0


class FakeSlurm:
    """Jobs that ended over three days; writes land in the facts, so a rerun sees the tokens."""

    def __init__(self, n=30, interrupt_on_call=None):
        self.facts = {}
        for i in range(n):
            start = MIDNIGHT + i * (3 * DAY / n)
            job = Job(str(100 + i), start, start + 5400, (f"n{i % 3}",), (2.0,), account="a", user="u")
            self.facts[job.job_id] = JobFacts(job, "COMPLETED")
        self.writes = []
        self.calls = 0
        self.interrupt_on_call = interrupt_on_call

    def jobs_ended_between(self, start, end):
        found = {k: f for k, f in self.facts.items() if start <= f.job.end < end}
        self.window = set(found)
        return found

    def read_runs(self, job_ids):
        """Every job ran once (its final record): asked only for jobs of the window being accounted."""
        assert set(job_ids) <= self.window, set(job_ids) - self.window
        return {}

    def lowercases(self):
        return False

    def write_many(self, items, concurrency=None, on_done=None, cancel=None):
        self.calls += 1
        if self.calls == self.interrupt_on_call:
            raise KeyboardInterrupt
        for facts, _field, value in items:
            self.writes.append(facts.job.job_id)
            self.facts[facts.job.job_id] = JobFacts(facts.job, facts.state, admin_comment=value)
            if on_done is not None:
                on_done(facts.job.job_id, None)
        return {}


@pytest.fixture
def cfg(tmp_path):
    return from_mapping({"cluster": "c", "state_dir": str(tmp_path / "state"),
                         "nodes": [{"match": "n[0-2]", "cpus": 4, "idle_watts": 100, "max_watts": 300}]})


def engine(cfg):
    power = FakePower({f"n{i}": (MIDNIGHT - DAY, MIDNIGHT + 5 * DAY, 200) for i in range(3)})
    return Engine(cfg, power, FakeIntensity(100))


def run(cfg, slurm, *, write=True, rewrite=False, progress=None):
    out = io.StringIO()
    code = backfill(cfg, str(MIDNIGHT), str(MIDNIGHT + 4 * DAY), write=write, out=out, rewrite=rewrite,
                    window=DAY, progress_out=progress or io.StringIO(), slurm=slurm, engine=engine(cfg))
    return code, out.getvalue()


def rows(table):
    """Job ids of the table's rows (above the totals line)."""
    return [line.split()[0] for line in table.split("\n\n")[0].splitlines()[1:]]


def test_interrupted_backfill_resumes_with_no_job_twice_and_none_lost(cfg):
    slurm = FakeSlurm(interrupt_on_call=2)  # the second window's writes never happen
    with pytest.raises(KeyboardInterrupt):
        run(cfg, slurm)
    first = list(slurm.writes)
    assert 0 < len(first) < 30
    code, out = run(cfg, slurm)
    assert code == 0
    assert sorted(slurm.writes) == sorted(slurm.facts)  # every job written, each exactly once
    assert all(parse(f.admin_comment)["co2e_g"] > 0 for f in slurm.facts.values())
    with Ledger(cfg.state_dir, "c") as ledger:
        assert ledger.state_counts() == {"written": 30}
    assert set(first).isdisjoint(rows(out)) and len(rows(out)) == 30 - len(first)  # not accounted again
    # and their breakdown for `carbond report`, as the daemon records it: every job once in the rollup
    with Ledger(cfg.state_dir, "c") as ledger:
        assert ledger.read("SELECT COUNT(*), SUM(rolled_up) FROM jobs") == [(30, 30)]
        assert ledger.read("SELECT SUM(jobs) FROM rollup") == [(30,)]


def test_results_stream_in_window_order_with_a_summary(cfg, capsys):
    slurm = FakeSlurm()
    code, out = run(cfg, slurm, write=False)
    assert code == 0 and rows(out) == sorted(slurm.facts, key=lambda k: slurm.facts[k].job.end)
    err = capsys.readouterr().err
    assert "30 job(s) ended in the range, 30 without a carbond token; 30 would be written (dry run" in err
    assert slurm.writes == []


def test_rewrite_republishes_an_unwritable_token(cfg, capsys):
    slurm = FakeSlurm(n=3)
    foreign = "JS1:e30="  # Princeton jobstats' payload: never appended to
    slurm.facts["101"] = JobFacts(slurm.facts["101"].job, "COMPLETED", admin_comment=foreign)
    run(cfg, slurm)
    with Ledger(cfg.state_dir, "c") as ledger:
        assert ledger.get("101").state == "unwritable"
    assert slurm.facts["101"].admin_comment == foreign
    run(cfg, slurm)  # without --rewrite an unwritable job stays as it is
    assert "101" not in slurm.writes
    slurm.facts["101"] = JobFacts(slurm.facts["101"].job, "COMPLETED", admin_comment="")  # the site cleared it
    code, _ = run(cfg, slurm, rewrite=True)
    assert code == 0 and slurm.writes.count("101") == 1
    with Ledger(cfg.state_dir, "c") as ledger:
        entry = ledger.get("101")
        assert entry.state == "written" and parse(slurm.facts["101"].admin_comment) == parse(entry.token)
    assert "re-published 1" in capsys.readouterr().err


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(cfg):
    quiet, tty = io.StringIO(), Tty()
    run(cfg, FakeSlurm(), write=False, progress=quiet)
    run(cfg, FakeSlurm(), write=False, progress=tty)
    assert quiet.getvalue() == ""
    shown = tty.getvalue()
    assert "30 jobs" in shown and "jobs/s" in shown and "ETA" in shown and "100%" in shown


def test_a_write_whose_answer_was_lost_is_marked_written_by_the_next_run_not_by_a_dry_run(cfg):
    slurm = FakeSlurm(n=3)
    run(cfg, slurm)
    with Ledger(cfg.state_dir, "c") as ledger:  # killed after sacctmgr wrote, before its answer was read
        token = ledger.get("101").token
        ledger.mark_pending("101", token)
    writes = len(slurm.writes)
    run(cfg, slurm, write=False)
    with Ledger(cfg.state_dir, "c") as ledger:
        assert ledger.get("101").state == "pending-write"
    run(cfg, slurm)
    with Ledger(cfg.state_dir, "c") as ledger:
        assert ledger.state_counts() == {"written": 3} and ledger.get("101").token == token
    assert len(slurm.writes) == writes  # the token in Slurm is the ledger's: not written again
