"""etc/prometheus/carbond-alerts.yml is valid for promtool and alerts on every job carbond had to recover."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).resolve().parent.parent / "etc" / "prometheus" / "carbond-alerts.yml"


def test_rules_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install prometheus (Debian ships /usr/bin/promtool)")
    proc = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True,  # noqa: S603
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_recovered_job_fires_an_alert():
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert any("carbond_jobs_recovered_total" in r["expr"] for r in rules)
