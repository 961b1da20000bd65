"""The request, listener and shutdown families on /metrics, from realistic SDK records."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from drainwatch._histogram import WAIT_BUCKETS
from drainwatch.agent.metrics import StateCollector
from drainwatch.agent.report_store import DrainReports
from drainwatch.agent.state import State
from drainwatch.agent.verdicts import RULES
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.shutdowns import (
    SIGTERM,
    T0,
    FakeTime,
    Feeder,
    SdkProcess,
    good_shutdown,
    make_state,
)
from tests.processes import Samples, assert_promtool_clean

BUDGET = 30.0
PHASES = ("running", "signalled", "draining", "stopping", "stopped")
NEW_FAMILIES = {
    "drainwatch_inflight_requests": "gauge",
    "drainwatch_requests": "counter",
    "drainwatch_requests_started_during_drain": "counter",
    "drainwatch_request_duration_seconds": "histogram",
    "drainwatch_inflight_at_exit": "gauge",
    "drainwatch_drain_phase": "gauge",
    "drainwatch_shutdown_signal_timestamp_seconds": "gauge",
    "drainwatch_shutdown_step_started_timestamp_seconds": "gauge",
    "drainwatch_shutdown_step_finished_timestamp_seconds": "gauge",
    "drainwatch_drain_duration_seconds": "gauge",
    "drainwatch_drain_budget_seconds": "gauge",
    "drainwatch_shutdown_violations": "counter",
    "drainwatch_listener_up": "gauge",
    "drainwatch_listener_closed_timestamp_seconds": "gauge",
    "drainwatch_target_up": "gauge",
    "drainwatch_target_exit_timestamp_seconds": "gauge",
}


class Agent:
    """An agent's state, drain reports and collector on the fake clock."""

    def __init__(self, clock: FakeTime) -> None:
        self.state, self.feed = make_state(clock)
        self.reports = DrainReports(self.state, BUDGET, clock=clock)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StateCollector(self.state, self.reports))

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()

    def scrape(self) -> Samples:
        return Samples(self.exposition())


@pytest.fixture
def agent(clock: FakeTime) -> Agent:
    """A fresh agent with a 30 s drain budget."""
    return Agent(clock)


def finished_good_shutdown(sdk: SdkProcess, feed: Feeder, state: State) -> None:
    sdk.finish(sdk.start("http", "GET /orders/{id}", 3))
    feed.send("old", sdk.records())
    good_shutdown(sdk)
    feed.send("old", sdk.records())
    state.disconnected("old")


def test_every_new_family_is_exported_with_its_type_and_samples(
    spawn: Callable[[], SdkProcess], agent: Agent, clock: FakeTime
) -> None:
    """A finished shutdown plus a running process give samples in every new family."""
    finished_good_shutdown(spawn(), agent.feed, agent.state)
    running = spawn()
    running.at(20).listener_opened("grpc", "business", 50051)
    running.start("grpc", "/pay.Payments/Charge")
    agent.feed.send("new", running.records())
    clock.now = T0 + 21
    families = {
        family.name: family
        for family in text_string_to_metric_families(agent.exposition())
        if family.name in NEW_FAMILIES
    }
    assert {name: family.type for name, family in families.items()} == NEW_FAMILIES
    empty = sorted(name for name, family in families.items() if not family.samples)
    assert empty == []
    samples = agent.scrape()
    assert samples.value("drainwatch_inflight_requests", protocol="grpc") == 1
    assert samples.value("drainwatch_requests_total", outcome="ok", protocol="http") == 3
    assert samples.value("drainwatch_requests_total", outcome="ok", protocol="grpc") == 2
    assert samples.value("drainwatch_request_duration_seconds_count", protocol="grpc") == 2
    buckets = [
        labels["le"]
        for labels, _ in samples.all("drainwatch_request_duration_seconds_bucket")
        if labels["protocol"] == "grpc"
    ]
    assert len(buckets) == len(WAIT_BUCKETS) + 1
    assert samples.value("drainwatch_drain_budget_seconds", service="checkout") == BUDGET
    assert samples.value("drainwatch_target_up", service="checkout") == 1


def test_shutdown_timestamps_and_durations_describe_the_latest_shutdown(
    sdk: SdkProcess, agent: Agent, clock: FakeTime
) -> None:
    """Signal, step start/end, drain duration and in-flight at exit of the last shutdown."""
    finished_good_shutdown(sdk, agent.feed, agent.state)
    clock.now = T0 + 100
    samples = agent.scrape()
    assert samples.value("drainwatch_shutdown_signal_timestamp_seconds", signal="SIGTERM") == (
        T0 + 10
    )
    started = "drainwatch_shutdown_step_started_timestamp_seconds"
    finished = "drainwatch_shutdown_step_finished_timestamp_seconds"
    assert samples.value(started, step="propagation_wait") == pytest.approx(T0 + 10.02)
    assert samples.value(finished, step="propagation_wait") == pytest.approx(T0 + 15.02)
    assert samples.value(started, step="grpc") == pytest.approx(T0 + 15.03)
    assert samples.value(finished, step="exit") == pytest.approx(T0 + 16.5)
    assert samples.value("drainwatch_drain_duration_seconds") == pytest.approx(6.0)
    assert samples.value("drainwatch_inflight_at_exit", protocol="grpc") == 0
    assert samples.value("drainwatch_target_exit_timestamp_seconds") == pytest.approx(T0 + 16.5)
    assert samples.value("drainwatch_target_up") == 0
    for rule in RULES:
        assert samples.value("drainwatch_shutdown_violations_total", rule=rule) == 0


def test_drain_phase_is_an_enum_following_the_newest_process(
    spawn: Callable[[], SdkProcess], agent: Agent, clock: FakeTime
) -> None:
    """Exactly one phase is 1: the newest process's phase; stopped once it went away."""

    def phases() -> dict[str, float]:
        found = agent.scrape().all("drainwatch_drain_phase")
        return {labels["phase"]: value for labels, value in found}

    process = spawn()
    agent.feed.send("a", process.records())
    assert phases() == {phase: float(phase == "running") for phase in PHASES}
    process.at(1).note_signal(SIGTERM)
    agent.feed.send("a", process.records())
    assert phases()["signalled"] == 1
    process.at(2).listener_opened("grpc", "business", 1)
    process.at(2.5).listener_stop_started("grpc")
    agent.feed.send("a", process.records())
    assert phases()["draining"] == 1
    process.exit(3)
    agent.feed.send("a", process.records())
    assert phases()["stopped"] == 1
    clock.now = T0 + 5
    successor = spawn()
    agent.feed.send("b", successor.records())
    assert phases() == {phase: float(phase == "running") for phase in PHASES}


def test_budget_exceeded_is_counted_live_and_only_once(
    sdk: SdkProcess, agent: Agent, clock: FakeTime
) -> None:
    """Still draining 31 s after SIGTERM: the violation counts before the kill, once."""
    rule = {"rule": "drain_exceeded_budget"}
    sdk.start("grpc", "/pay.Payments/Charge")
    sdk.at(1).note_signal(SIGTERM)
    agent.feed.send("a", sdk.records())
    clock.now = T0 + 20
    samples = agent.scrape()
    assert samples.value("drainwatch_shutdown_violations_total", **rule) == 0
    assert samples.value("drainwatch_drain_duration_seconds") == pytest.approx(19.0)
    clock.now = T0 + 32
    samples = agent.scrape()
    assert samples.value("drainwatch_shutdown_violations_total", **rule) == 1
    assert samples.value("drainwatch_drain_duration_seconds") == pytest.approx(31.0)
    assert samples.value("drainwatch_drain_phase", phase="signalled") == 1
    clock.now = T0 + 40
    agent.state.disconnected("a")  # then the kubelet's SIGKILL
    samples = agent.scrape()
    assert samples.value("drainwatch_shutdown_violations_total", **rule) == 1
    assert samples.value("drainwatch_shutdown_violations_total", rule="inflight_at_exit") == 1
    assert samples.value("drainwatch_inflight_at_exit", protocol="grpc") == 1


def test_counters_never_go_back_when_processes_are_forgotten(
    sdk: SdkProcess, agent: Agent, clock: FakeTime
) -> None:
    """Requests, durations and violations stay after retention forgets the process."""
    sdk.finish(sdk.start("grpc", "/pay.Payments/Charge", 4))
    sdk.at(1).note_signal(SIGTERM)
    sdk.reject("grpc", "/pay.Payments/Charge")
    sdk.at(2).listener_opened("grpc", "business", 50051)
    sdk.at(2.5).listener_stop_started("grpc")
    sdk.exit(3)
    agent.feed.send("a", sdk.records())
    agent.state.disconnected("a")
    names: tuple[tuple[str, dict[str, str]], ...] = (
        ("drainwatch_requests_total", {"outcome": "ok"}),
        ("drainwatch_requests_total", {"outcome": "rejected_draining"}),
        ("drainwatch_requests_started_during_drain_total", {"protocol": "grpc"}),
        ("drainwatch_request_duration_seconds_count", {}),
        ("drainwatch_shutdown_violations_total", {"rule": "exited_before_stop_completed"}),
        ("drainwatch_shutdown_violations_total", {"rule": "readiness_not_failed_first"}),
        ("drainwatch_target_exit_timestamp_seconds", {}),
    )
    before = agent.scrape()
    clock.now = T0 + 1000
    agent.state.expire(retention_seconds=300)
    assert agent.state.services["checkout"].instances == {}
    after = agent.scrape()
    values = [(before.value(name, **labels), after.value(name, **labels)) for name, labels in names]
    assert values == [(4, 4), (1, 1), (1, 1), (4, 4), (1, 1), (1, 1), (T0 + 3, T0 + 3)]
    assert after.value("drainwatch_inflight_requests", protocol="grpc") == 0
    assert after.value("drainwatch_drain_phase", phase="stopped") == 1


def test_a_process_forgotten_before_any_scrape_is_still_judged_and_counted(
    sdk: SdkProcess, agent: Agent, clock: FakeTime
) -> None:
    """The state asks the reports for a last look before it forgets a process."""
    sdk.start("grpc", "/pay.Payments/Charge")
    sdk.at(1).note_signal(SIGTERM)
    sdk.exit(2)
    agent.feed.send("a", sdk.records())
    clock.now = T0 + 1000
    agent.state.expire(retention_seconds=300)
    samples = agent.scrape()
    assert samples.value("drainwatch_shutdown_violations_total", rule="inflight_at_exit") == 1
    assert samples.value("drainwatch_inflight_at_exit", protocol="grpc") == 1


def test_inflight_gauge_counts_only_live_processes(
    spawn: Callable[[], SdkProcess], agent: Agent
) -> None:
    """A process that exited with requests active adds them to inflight_at_exit, not to now."""
    worker_a, worker_b = spawn(), spawn()
    worker_a.start("grpc", "/pay.Payments/Charge", 2)
    worker_b.start("grpc", "/pay.Payments/Charge", 3)
    agent.feed.send("a", worker_a.records())
    agent.feed.send("b", worker_b.records())
    assert agent.scrape().value("drainwatch_inflight_requests") == 5
    worker_b.exit(1)
    agent.feed.send("b", worker_b.records())
    assert agent.scrape().value("drainwatch_inflight_requests") == 2


def test_listener_series_follow_open_close_and_the_process_going_away(
    sdk: SdkProcess, agent: Agent, clock: FakeTime
) -> None:
    """Up while listening; closed timestamp from its close, or from a kill that closed it."""
    labels = {"port": "50051", "role": "business"}
    health = {"port": "8081", "role": "health"}
    sdk.at(0).listener_opened("grpc", "business", 50051)
    sdk.at(0).listener_opened("health", "health", 8081)
    agent.feed.send("a", sdk.records())
    samples = agent.scrape()
    assert samples.value("drainwatch_listener_up", **labels) == 1
    assert samples.value("drainwatch_listener_closed_timestamp_seconds", **labels) is None
    sdk.at(2).listener_closed("grpc")
    agent.feed.send("a", sdk.records())
    clock.now = T0 + 5
    agent.state.disconnected("a")  # killed: health never closed by the program
    samples = agent.scrape()
    assert samples.value("drainwatch_listener_up", **labels) == 0
    assert samples.value("drainwatch_listener_closed_timestamp_seconds", **labels) == T0 + 2
    assert samples.value("drainwatch_listener_up", **health) == 0
    assert samples.value("drainwatch_listener_closed_timestamp_seconds", **health) == T0 + 5


def test_new_exposition_passes_promtool_check_metrics(
    spawn: Callable[[], SdkProcess], agent: Agent, clock: FakeTime
) -> None:
    """``promtool check metrics`` finds nothing to fix in the request and shutdown families."""
    finished_good_shutdown(spawn(), agent.feed, agent.state)
    running = spawn()
    running.start("websocket", "GET /events")
    running.at(20).note_signal(SIGTERM)
    agent.feed.send("new", running.records())
    clock.now = T0 + 60
    assert_promtool_clean(agent.exposition())
