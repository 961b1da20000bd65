"""The judging of ``verify-shutdown`` on observations built by hand: each check's edge
cases (the end-to-end tests run the real thing)."""

from __future__ import annotations

import json
import sys
from typing import Any

from drainwatch.agent.verify_checks import judge, passed
from drainwatch.agent.verify_health import HealthSample
from drainwatch.agent.verify_load import LOAD, NEW_CONNECTION, Request
from drainwatch.agent.verify_options import HealthCheck, HttpLoad, VerifyOptions
from drainwatch.agent.verify_render import document, render_text
from drainwatch.agent.verify_run import Observation

T = 1_800_000_000.0  # the signal
HTTP = HttpLoad("http://127.0.0.1:8000/x", "127.0.0.1", 8000, "GET", None, ())
HEALTH = HealthCheck("http", "http://127.0.0.1:8080/healthz", "", 8080)


def observed(**changes: Any) -> Observation:
    options = VerifyOptions(
        command=(sys.executable, "server.py"), http=HTTP, health=HEALTH, budget=10.0
    )
    base = Observation(options, 4242, T - 3, T - 2, signal_at=T, exited_at=T + 2, exit_code=0)
    base.requests = [
        Request(LOAD, "http", "200", T - 1, T + 1),
        Request(LOAD, "http", "200", T - 0.5, T + 1.5),
        Request(NEW_CONNECTION, "http", "200", T + 0.1, T + 1.6),
    ]
    base.health = [HealthSample(T - 2, True, "HTTP 200", T + 1.9)]
    base.business = [
        HealthSample(T - 2, True, "listening", T + 0.9),
        HealthSample(T + 1.0, False, "not listening", T + 2),
    ]
    base.report = {"violations": [], "channels_with_residual": []}
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def statuses(observation: Observation) -> dict[str, str]:
    return {check.name: check.status for check in judge(observation)}


def test_a_clean_observation_passes_everything() -> None:
    """Requests in flight and new ones succeed, health outlives the port, exit 0."""
    checks = judge(observed())
    assert passed(checks)
    assert {check.status for check in checks} == {"PASS"}


def test_no_request_in_flight_at_the_signal_fails_as_untested() -> None:
    """A drain nobody was in the middle of proves nothing: it fails with the hint."""
    only_before = [Request(LOAD, "http", "200", T - 1, T - 0.5)]
    checks = {check.name: check for check in judge(observed(requests=only_before))}
    assert checks["in_flight_completed"].passed is False
    assert "not tested" in checks["in_flight_completed"].summary
    assert checks["new_requests_accepted"].passed is False


def test_a_cut_request_fails_with_its_status() -> None:
    """One of two in-flight requests reset: the statuses are counted in the summary."""
    requests = [
        Request(LOAD, "http", "200", T - 1, T + 1),
        Request(LOAD, "http", "ServerDisconnectedError", T - 0.5, T + 0.2),
        Request(NEW_CONNECTION, "http", "204", T + 0.1, T + 0.3),
    ]
    checks = {check.name: check for check in judge(observed(requests=requests))}
    assert checks["in_flight_completed"].passed is False
    assert "1 of 2" in checks["in_flight_completed"].summary
    assert "ServerDisconnectedError 1" in checks["in_flight_completed"].summary
    assert checks["new_requests_accepted"].passed is True  # 204 is a success


def test_health_down_while_the_port_still_listened_fails() -> None:
    """Health seen down at +0.2 s, the business port seen listening at +0.9 s."""
    health = [
        HealthSample(T - 2, True, "HTTP 200", T + 0.1),
        HealthSample(T + 0.2, False, "connection refused", T + 2),
    ]
    checks = {check.name: check for check in judge(observed(health=health))}
    order = checks["health_until_business_closed"]
    assert order.passed is False and order.rules == ("health_closed_before_business",)
    assert "went down at +0.20 s" in order.summary
    assert "still seen listening at +0.90 s" in order.summary


def test_health_down_after_the_port_closed_passes() -> None:
    """Health goes down at +1.5 s, after the port was last seen listening at +0.9 s."""
    health = [
        HealthSample(T - 2, True, "HTTP 200", T + 1.4),
        HealthSample(T + 1.5, False, "connection refused", T + 2),
    ]
    assert statuses(observed(health=health))["health_until_business_closed"] == "PASS"


def test_the_agents_order_verdict_fails_the_check_when_probes_missed_it() -> None:
    """Too fast for the probes: the agent's health_closed_before_business still counts."""
    report = {
        "violations": [
            {"rule": "health_closed_before_business", "explanation": "health first"},
        ],
        "channels_with_residual": [],
    }
    checks = {check.name: check for check in judge(observed(report=report))}
    assert checks["health_until_business_closed"].passed is False
    assert "the agent saw it: health first" in checks["health_until_business_closed"].summary
    assert checks["no_violations"].rules == ("health_closed_before_business",)


def test_without_a_health_endpoint_the_order_check_is_skipped() -> None:
    """No --health-url: not judged by probes, and not a failure."""
    options = VerifyOptions(command=("x",), http=HTTP)
    base = observed()
    base.options = options
    base.health = []
    assert statuses(base)["health_until_business_closed"] == "SKIP"
    assert passed(judge(base))


def test_a_kill_at_the_budget_fails_budget_and_exit_code() -> None:
    """Killed at the budget: both checks fail; the agent's stuck threads are quoted."""
    report = {
        "violations": [{"rule": "drain_exceeded_budget", "explanation": "too long"}],
        "channels_with_residual": [],
        "outside": {
            "blocked_threads": [
                {"thread": "drainwatch-reporter", "reason": "event", "site": "x"},
                {
                    "thread": "MainThread",
                    "reason": "lock",
                    "site": "Lock.acquire (app.py:9)",
                    "blocked_seconds": 9.5,
                },
            ]
        },
    }
    checks = {
        check.name: check
        for check in judge(observed(killed=True, exit_code=-9, exited_at=T + 10, report=report))
    }
    budget = checks["exited_within_budget"]
    assert budget.passed is False and "killed with SIGKILL" in budget.summary
    assert "MainThread in lock at Lock.acquire (app.py:9) for 9.5 s" in budget.summary
    assert "drainwatch-reporter" not in budget.summary
    assert checks["exit_code_zero"].passed is False


def test_no_report_fails_violations_and_skips_channels() -> None:
    """A command that never reported (not Python): the agent's checks cannot pass."""
    checks = {check.name: check for check in judge(observed(report=None))}
    assert checks["no_violations"].passed is False
    assert "only Python processes report" in checks["no_violations"].summary
    assert checks["channels_drained"].passed is None


def test_readiness_hint_for_http_without_a_readiness_url() -> None:
    """readiness_not_failed_first on an HTTP service probed without --readiness-url."""
    report = {
        "violations": [{"rule": "readiness_not_failed_first", "explanation": "late"}],
        "channels_with_residual": [{"name": "orders", "depth": 3}],
    }
    checks = {check.name: check for check in judge(observed(report=report))}
    assert "--readiness-url" in (checks["no_violations"].fix or "")
    assert checks["channels_drained"].passed is False
    assert "orders (3 item(s))" in checks["channels_drained"].summary


def test_the_text_and_json_reports_carry_every_check() -> None:
    """The readable report ends with the verdict; the JSON round-trips and lists requests
    around the signal only."""
    observation = observed(
        killed=True, exit_code=-9, output_tail=("Traceback", "boom"), report=None
    )
    checks = judge(observation)
    text = render_text(observation, checks)
    assert text.splitlines()[-1].startswith("verify-shutdown: FAIL")
    assert "exited_within_budget" in text and "| boom" in text
    assert "(no drain report" in text
    data = json.loads(json.dumps(document(observation, checks)))
    assert data["verdict"] == "fail" and data["killed"] is True
    assert {check["name"] for check in data["checks"]} >= {"in_flight_completed", "exit_code_zero"}
    assert all(request["end_offset"] > 0 for request in data["requests"])
