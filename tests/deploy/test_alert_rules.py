"""The alert rules pass promtool's checks and unit tests, every alert is unit-tested firing,
and every alert carries severity, summary, description and a runbook that exists and
says what it means, how to confirm and how to fix."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import ROOT, RULES, rules

RULE_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yaml"))
SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: install Debian's 'prometheus' package (.ci/run does)"
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def test_promtool_check_rules_passes() -> None:
    """`promtool check rules` accepts the rule file and counts every rule in it."""
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules alerts/tests/*.yaml` passes."""
    assert RULE_TESTS
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_a_wrong_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: expecting no alert where one fires is reported."""
    test_file = yaml.safe_load(RULE_TESTS[-1].read_text())
    test_file["rule_files"] = [str(RULES)]
    for case in test_file["tests"]:
        for expectation in case.get("alert_rule_test", []):
            expectation["exp_alerts"] = []
    path = tmp_path / "inverted_test.yaml"
    path.write_text(yaml.safe_dump(test_file))
    result = promtool("test", "rules", str(path))
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def _fired_in_tests() -> set[str]:
    fired = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for expectation in case.get("alert_rule_test", []):
                if expectation.get("exp_alerts"):
                    fired.add(expectation["alertname"])
    return fired


def _quiet_in_tests() -> set[str]:
    quiet = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for expectation in case.get("alert_rule_test", []):
                if not expectation.get("exp_alerts"):
                    quiet.add(expectation["alertname"])
    return quiet


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    """Each alert has a promtool case where it fires and one where it does not."""
    names = {rule["alert"] for rule in alerts()}
    assert names - _fired_in_tests() == set()
    assert names - _quiet_in_tests() == set()


def test_every_recording_rule_is_unit_tested() -> None:
    """Each recording rule has a promql_expr_test with an expected sample."""
    tested = {
        expectation["expr"]
        for path in RULE_TESTS
        for case in yaml.safe_load(path.read_text())["tests"]
        for expectation in case.get("promql_expr_test", [])
        if expectation.get("exp_samples")
    }
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    assert recorded - tested == set()


@pytest.mark.parametrize("alert", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_has_severity_summary_description_and_runbook(alert: dict[str, Any]) -> None:
    """Labels and annotations a receiver needs, and a runbook_url to docs/runbooks/<alert>.md
    that exists, explains, confirms and fixes."""
    name = alert["alert"]
    assert name.startswith("Drainwatch")
    assert alert["labels"]["severity"] in SEVERITIES
    annotations = alert["annotations"]
    assert annotations["summary"] and annotations["description"]
    assert annotations["runbook_url"] == f"docs/runbooks/{name}.md"
    runbook = ROOT / annotations["runbook_url"]
    assert runbook.is_file(), runbook
    text = runbook.read_text()
    assert text.startswith(f"# `{name}`")
    assert "**What it means.**" in text
    assert "## Confirm" in text and "## Fix" in text
    assert alert["labels"]["severity"] in text.split("\n")[2]


def test_runbook_links_lead_to_files_that_exist() -> None:
    """Every relative link in the runbooks (to rule runbooks, other docs) resolves."""
    folder = ROOT / "docs" / "runbooks"
    broken = []
    for runbook in folder.glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", runbook.read_text()):
            if not (folder / target).exists():
                broken.append((runbook.name, target))
    assert broken == []


def test_the_alert_runbooks_link_the_rule_runbooks_of_their_violations() -> None:
    """An alert on a violation rule links that rule's runbook."""
    for alert in alerts():
        runbook = (ROOT / alert["annotations"]["runbook_url"]).read_text()
        for rule in re.findall(r'rule=~?"([a-z_|]+)"', alert["expr"]):
            for name in rule.split("|"):
                assert f"]({name}.md)" in runbook, (alert["alert"], name)


def test_every_alert_is_in_the_runbook_index() -> None:
    """docs/runbooks/README.md lists every alert and every violation rule."""
    index = (ROOT / "docs" / "runbooks" / "README.md").read_text()
    for alert in alerts():
        assert f"]({alert['alert']}.md)" in index
    for rule_runbook in (ROOT / "docs" / "runbooks").glob("[a-z]*.md"):
        assert f"]({rule_runbook.name})" in index
