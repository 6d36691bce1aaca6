"""carbond.accounting: one way from a job's facts to its footprint, in bounded groups for history."""

from carbond.accounting import JobHistory, account, account_in_windows
from carbond.footprint import JobFootprint
from carbond.jobs import Job
from carbond.slurm import Run

DAY = 86400.0


class Engine:
    """Energy = seconds x 1 W per job, and every call's span recorded: it must stay within the window."""

    def __init__(self, window=None):
        self.window, self.calls = window, []

    def account(self, jobs):
        jobs = list(jobs)
        lo, hi = min(j.start for j in jobs), max(j.end for j in jobs)
        assert self.window is None or hi - lo <= self.window, (hi - lo, self.window)
        self.calls.append(len(jobs))
        return [JobFootprint(j.job_id, "ok", energy_kwh=(j.end - j.start) / 3.6e6, co2e_g=0.0, start=j.start, end=j.end)
                for j in jobs]


def test_groups_stay_within_the_window_and_results_keep_the_input_order():
    items = []
    for i in range(40):
        start = (i * 7919 % 40) * DAY / 4  # out of order, over ten days
        job = Job(str(i), start, start + 3600, ("n1",), (1.0,))
        runs = (Run(str(i), "", start - 7200, start - 3600, ("n2",), 1, 0.0), Run(str(i), "", start, start + 3600,
                                                                                    ("n1",), 1, 0.0))
        items.append(JobHistory(job, runs if i % 3 == 0 else ()))
    whole = account(Engine(), items)
    engine = Engine(window=DAY)
    got = account_in_windows(engine, items, DAY)
    assert [fp.job_id for fp in got] == [h.job.job_id for h in items]
    assert [fp.energy_kwh for fp in got] == [fp.energy_kwh for fp in whole]
    assert len(engine.calls) > 5 and sum(engine.calls) == sum(len(h.runs) or 1 for h in items)
