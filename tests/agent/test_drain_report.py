"""Drain reports: merging out-of-order records into a waterfall, the kept history, the
/api/v1/report endpoint, and ``drainwatch report`` against a real agent."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from drainwatch.agent.http_api import build_app
from drainwatch.agent.report_cli import BAR_WIDTH, render_report, run_report
from drainwatch.agent.report_store import DrainReports
from drainwatch.agent.state_json import state_document
from prometheus_client import CollectorRegistry

from tests.agent.shutdowns import SIGTERM, T0, FakeTime, SdkProcess, good_shutdown, make_state
from tests.processes import run_target, running_agent

BUDGET = 30.0


def fed_good_shutdown(sdk: SdkProcess, clock: FakeTime) -> DrainReports:
    """An agent that heard a whole correct shutdown, with one stale snapshot arriving last."""
    state, feed = make_state(clock)
    reports = DrainReports(state, BUDGET, clock=clock)
    sdk.at(0).listener_opened("grpc", "business", 50051)
    feed.send("a", sdk.records())
    stale = sdk.records()  # packed before the signal by the reporter thread...
    good_shutdown(sdk)
    feed.send("a", sdk.records())
    feed.send("a", stale)  # ...and delivered after everything else
    state.disconnected("a")
    return reports


def test_out_of_order_records_still_give_the_waterfall_in_time_order(
    sdk: SdkProcess, clock: FakeTime
) -> None:
    """Steps are ordered by start, offsets are from the signal, the stale snapshot is ignored."""
    reports = fed_good_shutdown(sdk, clock)
    clock.now = T0 + 100
    reports.refresh()
    [report] = reports.reports()
    assert report.complete and not report.killed and report.verdict == "OK"
    assert report.signal == ("SIGTERM", T0 + 10)
    document = report.to_json()
    rows = [(step["name"], step["kind"], step["start_offset"]) for step in document["steps"]]
    assert rows == [
        ("drain", "step", pytest.approx(0.0)),
        ("readiness_off", "step", pytest.approx(0.01)),
        ("propagation_wait", "step", pytest.approx(0.02)),
        ("grpc", "listener", pytest.approx(5.03)),
        ("health", "listener", pytest.approx(6.2)),
        ("exit", "exit", pytest.approx(6.5)),
    ]
    grpc = document["steps"][3]
    assert (grpc["role"], grpc["port"], grpc["duration"]) == (
        "business",
        50051,
        pytest.approx(1.07),
    )
    assert document["drain_seconds"] == pytest.approx(6.0)  # signal -> in flight reached zero
    assert document["shutdown_seconds"] == pytest.approx(6.5)  # signal -> exit
    assert document["readiness_off"]["offset"] == pytest.approx(0.01)
    assert document["inflight_at_exit"] == {"grpc": 0, "http": 0, "websocket": 0}


def test_requests_are_counted_from_the_start_of_the_shutdown(
    sdk: SdkProcess, clock: FakeTime
) -> None:
    """Outcomes before the signal are left out; the ones during the drain are shown."""
    state, feed = make_state(clock)
    reports = DrainReports(state, BUDGET, clock=clock)
    sdk.finish(sdk.start("grpc", "/pay.Payments/Charge", 5))
    feed.send("a", sdk.records())
    late = sdk.start("grpc", "/pay.Payments/Charge", 3)
    sdk.at(1).note_signal(SIGTERM)
    feed.send("a", sdk.records())  # the signal event carries the counters of that moment
    sdk.finish(late[:2])
    sdk.finish(late[2:], "aborted_at_shutdown")
    sdk.finish(sdk.start("grpc", "/pay.Payments/Charge"))  # accepted while draining
    sdk.exit(2)
    feed.send("a", sdk.records())
    state.disconnected("a")
    [report] = reports.document()["reports"]
    [charge] = report["requests"]
    assert report["requests_counted_from"] == "shutdown"
    assert charge["outcomes"] == {
        "ok": 3,
        "error": 0,
        "cancelled": 0,
        "aborted_at_shutdown": 1,
        "rejected_draining": 0,
    }
    assert charge["started_during_drain"] == 1
    assert report["inflight_at_exit"]["grpc"] == 1  # the aborted one


def test_a_killed_process_is_reported_killed_with_its_last_counts(
    sdk: SdkProcess, clock: FakeTime
) -> None:
    """Disconnected without an exit record: killed, a killed row, in flight from the last report."""
    state, feed = make_state(clock)
    reports = DrainReports(state, BUDGET, clock=clock)
    sdk.start("grpc", "/pay.Payments/Charge", 2)
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(1.5).listener_opened("grpc", "business", 50051)
    feed.send("a", sdk.records())
    clock.now = T0 + 32
    state.disconnected("a")
    [report] = reports.document()["reports"]
    assert report["killed"] and report["complete"]
    assert report["ended"] == T0 + 32 and report["exited"] is None
    assert report["steps"][-1]["kind"] == "killed"
    assert (report["inflight_at_exit"], report["inflight_at_exit_source"]) == (
        {"grpc": 2},
        "last_report",
    )
    rules = {violation["rule"] for violation in report["violations"]}
    assert rules == {"readiness_not_failed_first", "inflight_at_exit", "drain_exceeded_budget"}


def test_no_report_until_a_shutdown_begins_then_one_in_progress(
    sdk: SdkProcess, clock: FakeTime
) -> None:
    """A running process has no report; after the signal it has one, not yet complete."""
    state, feed = make_state(clock)
    reports = DrainReports(state, BUDGET, clock=clock)
    feed.send("a", sdk.records())
    assert reports.document()["reports"] == []
    sdk.at(1).note_signal(SIGTERM)
    feed.send("a", sdk.records())
    clock.now = T0 + 3
    [report] = reports.document()["reports"]
    assert (report["complete"], report["phase"], report["verdict"]) == (False, "signalled", "OK")
    assert report["shutdown_seconds"] == pytest.approx(2.0)  # live: signal -> now


def test_history_keeps_the_last_finished_reports_and_survives_forgetting(
    spawn: Callable[[], SdkProcess], clock: FakeTime
) -> None:
    """keep=3: five restarts leave the three newest reports, newest first, after expiry."""
    state, feed = make_state(clock)
    reports = DrainReports(state, BUDGET, keep=3, clock=clock)
    for generation in range(5):
        process = spawn()
        process.at(generation * 100).note_signal(SIGTERM)
        process.exit(generation * 100 + 1)
        feed.send(f"gen-{generation}", process.records())
        state.disconnected(f"gen-{generation}")
        reports.refresh()
    clock.now = T0 + 10_000
    state.expire(retention_seconds=300)
    assert state.services["checkout"].instances == {}
    kept = reports.reports(everything=True)
    assert [report.instance for report in kept] == ["gen-4", "gen-3", "gen-2"]
    assert [report.instance for report in reports.reports()] == ["gen-4"]
    assert reports.reports(service="nope") == []


def test_the_json_report_carries_violations_with_offsets_and_runbooks(
    sdk: SdkProcess, clock: FakeTime
) -> None:
    """Each violation has rule, explanation, time, offset from the signal and runbook path."""
    state, feed = make_state(clock)
    reports = DrainReports(state, BUDGET, clock=clock)
    sdk.at(0).listener_opened("grpc", "business", 50051)
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(3).listener_stop_started("grpc")
    sdk.exit(4)
    feed.send("a", sdk.records())
    state.disconnected("a")
    [report] = reports.document()["reports"]
    first = report["violations"][0]
    assert first == {
        "rule": "readiness_not_failed_first",
        "explanation": first["explanation"],
        "at": T0 + 3,
        "offset": pytest.approx(2.0),
        "runbook": "docs/runbooks/readiness_not_failed_first.md",
    }
    assert report["verdict"] == "2 violations"  # and exited_before_stop_completed


def test_state_document_carries_the_merged_shutdown_and_requests(
    sdk: SdkProcess, clock: FakeTime
) -> None:
    """/api/v1/state shows each process's merged shutdown record and its request counters."""
    state, feed = make_state(clock)
    sdk.start("grpc", "/pay.Payments/Charge")
    sdk.at(1).note_signal(SIGTERM)
    feed.send("a", sdk.records())
    [instance] = state_document(state)["services"][0]["instances"]
    assert instance["shutdown"]["phase"] == "signalled"
    assert instance["shutdown"]["signals"] == [{"signal": "SIGTERM", "at": T0 + 1}]
    assert instance["requests"][0]["active"] == 1
    instance["shutdown"]["phase"] = "edited"  # a copy: the state is untouched
    assert state.services["checkout"].instances["a"].shutdown["phase"] == "signalled"  # type: ignore[index]


# -- the text rendering ---------------------------------------------------------------------------


def test_text_report_draws_each_step_on_the_budget_axis(sdk: SdkProcess, clock: FakeTime) -> None:
    """One line per step with a bar of BAR_WIDTH cells, offsets, and the verdict."""
    reports = fed_good_shutdown(sdk, clock)
    clock.now = T0 + 100
    text = render_report(reports.document()["reports"][0] | {"budget_seconds": BUDGET})
    lines = text.splitlines()
    names = ["SIGTERM", "drain", "readiness_off", "propagation_wait", "grpc", "health", "exit"]
    waterfall = [line for line in lines if line.endswith("|")]
    rows = [next(line for line in waterfall if f" {name} " in line) for name in names]
    assert [lines.index(row) for row in rows] == sorted(lines.index(row) for row in rows)
    for row in rows:
        bar = row[row.index("|") + 1 : row.rindex("|")]
        assert len(bar) == BAR_WIDTH
    assert "grpc (business :50051)" in text
    assert "+5.03 s" in text and "1.07 s" in text
    assert lines[-1] == "  verdict: OK"


def test_text_report_lists_violations_with_their_runbooks(sdk: SdkProcess, clock: FakeTime) -> None:
    """Each violation prints its explanation and docs/runbooks/<rule>.md; unfinished is marked."""
    state, feed = make_state(clock)
    reports = DrainReports(state, BUDGET, clock=clock)
    sdk.at(0).listener_opened("grpc", "business", 50051)
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(3).listener_stop_started("grpc")
    sdk.exit(40)  # beyond the budget: the axis goes past it
    feed.send("a", sdk.records())
    state.disconnected("a")
    text = render_report(reports.document()["reports"][0])
    assert "grpc (business :50051) [unfinished]" in text
    assert "runbook: docs/runbooks/exited_before_stop_completed.md" in text
    assert "runbook: docs/runbooks/drain_exceeded_budget.md" in text
    assert "'|' = budget (30 s)" in text
    assert text.splitlines()[-1] == "  verdict: 3 violations"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_report_command_says_clearly_when_the_agent_is_unreachable() -> None:
    """No agent on the port: exit code 2 and a message naming the URL and the fix."""
    out, err = io.StringIO(), io.StringIO()
    url = f"http://127.0.0.1:{_closed_port()}"
    assert run_report(url, None, False, timeout=2, out=out, err=err) == 2
    assert f"cannot reach the agent at {url}" in err.getvalue()
    assert "--agent http://HOST:PORT" in err.getvalue()
    assert out.getvalue() == ""


# -- the HTTP endpoint -----------------------------------------------------------------------------


async def _get(reports: DrainReports, path: str) -> tuple[int, Any]:
    state = reports._state  # the same state the reports read
    app = build_app(state, CollectorRegistry(), lambda: True, reports)
    async with TestClient(TestServer(app)) as client:
        response = await client.get(path)
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("?bogus=1", "unknown query parameter 'bogus'; this endpoint takes: all, service"),
        ("?service=a&service=b", '"service" may be given once'),
        ("?service=" + "s" * 300, '"service" must be 1 to 256 characters'),
        ("?service=", '"service" must be 1 to 256 characters'),
        ("?all=yes", '"all" must be 1, 0, true or false'),
        ("?all=1&all=1", '"all" may be given once'),
    ],
)
def test_report_endpoint_refuses_bad_queries_with_a_reason(
    clock: FakeTime, query: str, reason: str
) -> None:
    """Unknown, repeated, empty or oversized parameters get a 400 naming the problem."""
    state, _ = make_state(clock)
    status, body = asyncio.run(
        asyncio.wait_for(_get(DrainReports(state, clock=clock), "/api/v1/report" + query), 10)
    )
    assert status == 400
    assert body["error"].startswith(reason)


def test_an_error_that_echoes_markup_carries_it_escaped(clock: FakeTime) -> None:
    """A bad value is named in the error as it came, with <, > and & as JSON escapes: the
    body holds no markup, and reads back exactly."""
    state, _ = make_state(clock)
    app = build_app(state, CollectorRegistry(), lambda: True, DrainReports(state, clock=clock))
    hostile = "<script>alert(1)</script>&amp;"

    async def get() -> tuple[int, str]:
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/api/v1/report", params={"all": hostile})
            return response.status, await response.text()

    status, text = asyncio.run(asyncio.wait_for(get(), 10))
    assert status == 400
    assert not {"<", ">", "&"} & set(text)
    assert "\\u003cscript\\u003e" in text
    assert json.loads(text)["error"] == f'"all" must be 1, 0, true or false: {hostile!r}'


def test_report_endpoint_serves_latest_one_service_or_all(
    spawn: Callable[[], SdkProcess], clock: FakeTime
) -> None:
    """Default: latest per service; ?service= filters; ?all=1 returns the history too."""
    state, feed = make_state(clock)
    reports = DrainReports(state, BUDGET, clock=clock)
    for instance, service, began in (("a", "checkout", 0), ("b", "checkout", 50), ("c", "cart", 9)):
        process = spawn()
        process.at(began).note_signal(SIGTERM)
        process.exit(began + 1)
        feed.send(instance, process.records(), service=service)
        state.disconnected(instance)

    def instances(path: str) -> list[tuple[str, str]]:
        status, body = asyncio.run(asyncio.wait_for(_get(reports, path), 10))
        assert status == 200 and body["budget_seconds"] == BUDGET
        return [(report["service"], report["instance"]) for report in body["reports"]]

    assert instances("/api/v1/report") == [("cart", "c"), ("checkout", "b")]
    assert instances("/api/v1/report?service=checkout") == [("checkout", "b")]
    assert instances("/api/v1/report?all=1") == [
        ("cart", "c"),
        ("checkout", "b"),
        ("checkout", "a"),
    ]
    assert instances("/api/v1/report?service=nope&all=true") == []


# -- end to end: a real agent, a real target, the real command -------------------------------------

BAD_SHUTDOWN = """
import signal, time
import drainwatch
from drainwatch._inflight import REGISTRY
from drainwatch._shutdown import STATE

STATE.listener_opened("grpc", "business", 50051)
STATE.listener_opened("health", "health", 8081)
STATE.set_ready(True)
charge = REGISTRY.stats("grpc", "/pay.Payments/Charge")
REGISTRY.finish(charge, REGISTRY.start(charge), "ok")
stuck = REGISTRY.start(charge)                 # still running when the process exits
STATE.note_signal(signal.SIGTERM)
time.sleep(0.05)
STATE.listener_stop_started("health")          # health first: the post-mortem's mistake
STATE.listener_closed("health")
time.sleep(0.05)
STATE.listener_stop_started("grpc")            # "go grpcServer.GracefulStop()": never awaited
drainwatch.flush(timeout=2)
"""
EXPECTED = {
    "health_closed_before_business",
    "readiness_not_failed_first",
    "exited_before_stop_completed",
    "inflight_at_exit",
}


def _report_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drainwatch", "report", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.e2e
def test_report_command_shows_the_violations_of_a_real_bad_shutdown() -> None:
    """A real target shuts down badly; ``drainwatch report`` and /metrics show each rule."""
    with running_agent() as agent:
        result = run_target(BAD_SHUTDOWN, agent.endpoint)
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # judged once the agent sees the connection close
            samples = agent.scrape()
            if samples.value("drainwatch_shutdown_violations_total", rule="inflight_at_exit"):
                break
            time.sleep(0.05)
        text = _report_command("--agent", agent.url, "--service", "checkout")
        as_json = _report_command("--agent", agent.url, "--json")
        samples = agent.scrape()
    assert text.returncode == 1, text.stderr
    for rule in EXPECTED:
        assert f"x {rule} at " in text.stdout
        assert f"runbook: docs/runbooks/{rule}.md" in text.stdout
        assert samples.value("drainwatch_shutdown_violations_total", rule=rule) == 1
    assert "verdict: 4 violations" in text.stdout
    assert "health (health :8081)" in text.stdout
    assert "grpc (business :50051) [unfinished]" in text.stdout
    assert samples.value("drainwatch_shutdown_violations_total", rule="close_by_non_owner") == 0
    assert samples.value("drainwatch_inflight_at_exit", protocol="grpc") == 1
    [report] = json.loads(as_json.stdout)["reports"]
    assert {violation["rule"] for violation in report["violations"]} == EXPECTED
    assert report["inflight_at_exit_source"] == "exit_record"
    assert as_json.returncode == 1
