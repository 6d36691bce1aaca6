"""etc/prometheus/carbond-alerts.yml: valid rules, and each alert fires where it must and only there.

promtool (Debian's `prometheus` package, installed by `make deps`) does both checks; the unit tests
are in tests/prometheus/carbond-alerts.test.yml.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "etc" / "prometheus" / "carbond-alerts.yml"
RULE_TESTS = REPO / "tests" / "prometheus" / "carbond-alerts.test.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)  # noqa: S603


def test_rules_are_valid() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_rules_fire_where_they_must() -> None:
    proc = promtool("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test() -> None:
    import yaml

    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    assert alerts == tested
    assert {"CarbondBacklogOld", "CarbondDeadLetters", "CarbondTargetFailing", "CarbondLoopErrors",
            "CarbondJobsRecovered"} <= alerts


def test_a_changed_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests against a rule file with one threshold moved."""
    text = RULES.read_text()
    assert "carbond_backlog_oldest_seconds > 3600" in text
    (tmp_path / "etc" / "prometheus").mkdir(parents=True)
    (tmp_path / "tests" / "prometheus").mkdir(parents=True)
    (tmp_path / "etc" / "prometheus" / "carbond-alerts.yml").write_text(
        text.replace("carbond_backlog_oldest_seconds > 3600", "carbond_backlog_oldest_seconds > 36000"))
    moved = tmp_path / "tests" / "prometheus" / RULE_TESTS.name
    moved.write_text(RULE_TESTS.read_text())
    proc = promtool("test", "rules", str(moved))
    assert proc.returncode != 0
    assert "CarbondBacklogOld" in proc.stdout + proc.stderr


def test_runbook_links_resolve() -> None:
    """Every `docs/operations.md#anchor` an alert points to exists in that page."""
    import re

    page = (REPO / "docs" / "operations.md").read_text()
    anchors = set(re.findall(r'<a id="([a-z-]+)"></a>', page))
    anchors |= {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", page, re.M)}
    linked = set(re.findall(r"docs/operations\.md#([a-z-]+)", RULES.read_text()))
    assert linked and linked <= anchors, linked - anchors


@pytest.mark.parametrize("path", [RULES, RULE_TESTS])
def test_rule_files_exist(path: Path) -> None:
    assert path.is_file()
