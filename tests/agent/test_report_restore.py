"""Drain reports kept in the state directory and read back by a restarted agent."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from drainwatch.agent.config import Limits
from drainwatch.agent.drain_report import DrainReport
from drainwatch.agent.metrics import StateCollector
from drainwatch.agent.report_json import ReportFormatError, report_from_json
from drainwatch.agent.report_persistence import ReportWriter, restore
from drainwatch.agent.report_store import DrainReports
from drainwatch.agent.state import State
from drainwatch.agent.state_dir import StateDir
from prometheus_client import CollectorRegistry, generate_latest

from tests.agent.shutdowns import SIGTERM, T0, FakeTime, SdkProcess, make_state

BUDGET = 30.0


def killed_in_its_drain(sdk: SdkProcess, clock: FakeTime) -> DrainReport:
    """A process SIGKILLed with two requests in flight and the health port closed first."""
    state, feed = make_state(clock)
    reports = DrainReports(state, BUDGET, clock=clock)
    sdk.at(0).listener_opened("grpc", "business", 50051)
    sdk.at(0).listener_opened("health", "health", 8081)
    sdk.start("grpc", "/pay.Payments/Charge", 2)
    sdk.at(10).note_signal(SIGTERM)
    sdk.at(10.1).listener_closed("health")
    feed.send("a", sdk.records())
    clock.now = T0 + 12
    state.disconnected("a")
    clock.now = T0 + 20
    reports.refresh()
    [report] = reports.reports()
    assert report.killed and report.complete and report.violations
    return report


def test_a_report_survives_its_json(sdk: SdkProcess, clock: FakeTime) -> None:
    """Every field a reader sees comes back from the JSON, marked restored."""
    report = replace(killed_in_its_drain(sdk, clock), outside={"target": {"pid": 4242}})
    document = json.loads(json.dumps(report.to_json()))
    back = report_from_json(document)
    assert back.source == "restored"
    assert replace(back, source=report.source) == report
    assert back.to_json() | {"source": "sdk"} == report.to_json()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"pid": "4242"}, "pid"),
        ({"complete": 1}, "complete"),
        ({"started": float("nan")}, "started"),
        ({"steps": [{"name": "x", "kind": "step"}]}, "steps[0].started"),
        ({"steps": "all of them"}, "steps"),
        ({"violations": [{"rule": "rm -rf /", "explanation": "", "at": None}]}, "rule"),
        ({"requests": [{"protocol": "grpc"}]}, "requests[0].method"),
        ({"service": "x" * 10_000}, "service"),
        ({"inflight_at_exit": {"grpc": "2"}}, "inflight_at_exit.grpc"),
        ({"outside": [1, 2]}, "outside"),
    ],
)
def test_a_broken_report_names_its_field(
    sdk: SdkProcess, clock: FakeTime, change: dict[str, Any], field: str
) -> None:
    document = json.loads(json.dumps(killed_in_its_drain(sdk, clock).to_json())) | change
    with pytest.raises(ReportFormatError, match=field.replace("[", r"\[").replace("]", r"\]")):
        report_from_json(document)
    with pytest.raises(ReportFormatError):
        report_from_json([document])


def test_a_restarted_agent_serves_and_counts_the_saved_report(
    sdk: SdkProcess, clock: FakeTime, tmp_path: Path
) -> None:
    """Written by the writer thread, read back into a new store: served and on /metrics."""
    report = killed_in_its_drain(sdk, clock)
    writer = ReportWriter(StateDir(tmp_path, keep=5))
    writer.start()
    writer.offer(report)
    assert writer.flush(5.0)
    writer.stop()

    state = State(Limits(), default_service="agent-default", wall_clock=clock, clock=clock)
    reports = DrainReports(state, BUDGET, clock=clock)
    assert restore(StateDir(tmp_path, keep=5), reports) == 1
    [served] = reports.document()["reports"]
    assert served["source"] == "restored" and served["killed"]
    assert served["violations"] == report.to_json()["violations"]
    registry = CollectorRegistry()
    registry.register(StateCollector(state, reports))
    exposition = generate_latest(registry).decode()
    for violation in report.violations:
        line = (
            f'drainwatch_shutdown_violations_total{{rule="{violation.rule}",'
            f'service="{report.service}"}} 1.0'
        )
        assert line in exposition


def test_a_saved_file_that_is_not_a_report_is_quarantined(
    sdk: SdkProcess, clock: FakeTime, tmp_path: Path
) -> None:
    """A JSON file of the right format whose report is broken goes to quarantine/; the good
    one still loads."""
    state_dir = StateDir(tmp_path, keep=5)
    good = killed_in_its_drain(sdk, clock)
    assert state_dir.save_report(good.to_json()) is not None
    broken = good.to_json() | {"instance": "b", "steps": [{"kind": 7}]}
    assert state_dir.save_report(broken) is not None
    state = State(Limits(), default_service="agent-default", wall_clock=clock, clock=clock)
    reports = DrainReports(state, BUDGET, clock=clock)
    assert restore(StateDir(tmp_path, keep=5), reports) == 1
    assert len(list((tmp_path / "quarantine").iterdir())) == 1


def test_the_writer_keeps_only_the_newest_version_of_a_running_drain(
    sdk: SdkProcess, clock: FakeTime, tmp_path: Path
) -> None:
    report = killed_in_its_drain(sdk, clock)
    state_dir = StateDir(tmp_path, keep=5)
    writer = ReportWriter(state_dir, min_interval=0.2)
    writer.start()
    for second in range(20):
        writer.offer(replace(report, updated=T0 + 100 + second))
    assert writer.flush(5.0)
    writer.stop()
    [saved] = state_dir.load_reports()
    assert saved["updated"] == T0 + 119
    assert state_dir.stats().saved < 20
