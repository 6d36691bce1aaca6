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
