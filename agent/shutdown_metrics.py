"""Prometheus families for requests in flight, listeners and shutdowns (docs/metrics.md).

Request counters add up every process of a service, including forgotten ones (their
counts live in ``Service.retired_requests``), so they never go backwards. Shutdown
gauges describe the latest shutdown of each service, from the drain reports; the
violation counter counts processes per rule and exports every rule, 0 included, so alert
rules can use ``increase()`` from the first scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from drainwatch._histogram import WAIT_BUCKETS
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from .channel_series import BOUNDS, extend_histogram
from .drain_report import KILLED, DrainReport
from .exposition import Number, Row, SeriesBlock
from .report_store import DrainReports, ServiceShutdown
from .shutdown_state import OUTCOMES, PHASES, InflightMethod
from .state import Instance, State
from .verdicts import RULES

if TYPE_CHECKING:
    from .outside_metrics import OutsideTarget

PROTOCOLS = ("grpc", "http", "websocket")
_NO_PORT = "none"


@dataclass(slots=True)
class _Requests:
    active: int = 0
    started_during_drain: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    duration: list[float] = field(default_factory=lambda: [0.0] * (len(WAIT_BUCKETS) + 2))

    def add(self, method: InflightMethod, live: bool) -> None:
        if live:
            self.active += method.active
        self.started_during_drain += method.started_during_drain
        for outcome in OUTCOMES:
            self.outcomes[outcome] += method.outcomes[outcome]
        for index, value in enumerate(method.duration):
            self.duration[index] += value


@dataclass(slots=True)
class _Listener:
    up: bool = False
    closed: float | None = None


@dataclass(slots=True)
class _ServiceView:
    phase: str = "stopped"
    target_up: bool = False
    requests: dict[tuple[str, str], _Requests] = field(default_factory=dict)
    listeners: dict[tuple[str, str], _Listener] = field(default_factory=dict)


def _alive(instance: Instance) -> bool:
    exited = instance.shutdown is not None and instance.shutdown.get("exited") is not None
    return instance.connected and not exited


def _gone_at(instance: Instance) -> float | None:
    if instance.shutdown is not None and instance.shutdown.get("exited") is not None:
        return float(instance.shutdown["exited"])
    return None if instance.connected else instance.disconnected_at


def _add_listeners(view: _ServiceView, instance: Instance, limit: int) -> None:
    if instance.shutdown is None:
        return
    alive = _alive(instance)
    gone_at = _gone_at(instance)
    for listener in instance.shutdown["listeners"].values():
        port = _NO_PORT if listener["port"] is None else str(listener["port"])
        key = (port, _cut(listener["role"], limit))
        entry = view.listeners.setdefault(key, _Listener())
        entry.up = entry.up or (alive and listener["closed"] is None)
        closed = listener["closed"] if listener["closed"] is not None else gone_at
        if closed is not None and (entry.closed is None or closed > entry.closed):
            entry.closed = float(closed)


def _phase(instance: Instance) -> str:
    if not _alive(instance):
        return "stopped"
    return "running" if instance.shutdown is None else str(instance.shutdown["phase"])


def copy_views(state: State) -> dict[str, _ServiceView]:
    """Per service, what the request, listener and phase families need. Call with the
    state lock held."""
    limit = state.limits.max_label_length
    views: dict[str, _ServiceView] = {}
    for service in state.services.values():
        view = views[service.name] = _ServiceView()
        for key, method in service.retired_requests.items():
            view.requests.setdefault(key, _Requests()).add(method, live=False)
        newest: Instance | None = None
        for instance in service.instances.values():
            alive = _alive(instance)
            view.target_up = view.target_up or alive
            for key, method in instance.inflight.items():
                view.requests.setdefault(key, _Requests()).add(method, live=alive)
            _add_listeners(view, instance, limit)
            if newest is None or instance.first_seen > newest.first_seen:
                newest = instance
        if newest is not None:
            view.phase = _phase(newest)
    return views


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "\u2026"


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


def collect_shutdown(
    state: State,
    reports: DrainReports,
    outside: Callable[[], OutsideTarget | None] | None = None,
) -> Iterator[Metric]:
    """Every request, listener and shutdown family; a scrape never raises on odd state.
    ``outside``: what the agent's socket timeline says, merged into the listener families."""
    reports.refresh()
    with state.lock:
        views = copy_views(state)
        limit = state.limits.max_label_length
    shutdowns = reports.by_service()
    target = outside() if outside is not None else None
    if target is not None:
        _merge_outside(views, target)
    yield from _request_families(views)
    yield from _listener_families(views)
    yield from _shutdown_families(views, shutdowns, reports.budget_seconds, limit)


def _request_families(views: dict[str, _ServiceView]) -> Iterator[Metric]:
    # As columns (exposition.SeriesBlock): 500 methods per service are 25 lines each.
    method_labels = ("service", "protocol", "method")
    rows: list[Row] = []
    outcome_rows: list[Row] = []
    active: list[Number] = []
    outcomes: list[Number] = []
    durations: list[Number] = []
    drain_rows: list[Row] = []
    during_drain: list[Number] = []
    for service, view in sorted(views.items()):
        per_protocol: dict[str, int] = {}
        for (protocol, method), requests in sorted(view.requests.items()):
            row = (service, protocol, method)
            rows.append(row)
            active.append(requests.active)
            for outcome in OUTCOMES:
                outcome_rows.append((*row, outcome))
                outcomes.append(requests.outcomes[outcome])
            per_protocol[protocol] = per_protocol.get(protocol, 0) + requests.started_during_drain
            extend_histogram(durations, requests.duration)
        for protocol, count in sorted(per_protocol.items()):
            drain_rows.append((service, protocol))
            during_drain.append(count)
    yield SeriesBlock(
        "drainwatch_inflight_requests",
        "Requests being handled now by live processes of the service.",
        "gauge",
        method_labels,
        rows,
        active,
        integral=True,
    )
    yield SeriesBlock(
        "drainwatch_requests",
        "Finished requests by outcome (ok, error, cancelled, aborted_at_shutdown, "
        "rejected_draining).",
        "counter",
        (*method_labels, "outcome"),
        outcome_rows,
        outcomes,
        integral=True,
    )
    yield SeriesBlock(
        "drainwatch_requests_started_during_drain",
        "Requests accepted (or refused as draining) after the shutdown began.",
        "counter",
        ("service", "protocol"),
        drain_rows,
        during_drain,
        integral=True,
    )
    yield SeriesBlock(
        "drainwatch_request_duration_seconds",
        "Request handling time.",
        "histogram",
        method_labels,
        rows,
        durations,
        bounds=BOUNDS,
    )


def _merge_outside(views: dict[str, _ServiceView], target: OutsideTarget) -> None:
    """The socket timeline is the truth about processes and ports: a listener the SDK says
    closed but whose socket still listens is up; the SDK's close time is exact, the
    timeline's is the first sample that saw the port gone, so the SDK's is kept."""
    view = views.get(target.service)
    if view is None:
        view = views[target.service] = _ServiceView(phase="running" if target.up else "stopped")
    view.target_up = target.up
    for listener in target.listeners:
        key = (listener.port, listener.role)
        entry = view.listeners.get(key)
        if entry is None:
            view.listeners[key] = _Listener(listener.up, listener.closed)
            continue
        entry.up = listener.up
        if listener.up:
            entry.closed = None
        elif entry.closed is None:
            entry.closed = listener.closed


def _listener_families(views: dict[str, _ServiceView]) -> Iterator[Metric]:
    labels = ["service", "port", "role"]
    up = _gauge(
        "drainwatch_listener_up",
        "1 while the target listens on the port (SDK events and the agent's socket samples).",
        labels,
    )
    closed = _gauge(
        "drainwatch_listener_closed_timestamp_seconds",
        "When the port stopped listening (Unix seconds); absent while it listens.",
        labels,
    )
    target_up = _gauge(
        "drainwatch_target_up",
        "1 while a process of the target is alive (SDK connection, or the agent's samples).",
        ["service"],
    )
    for service, view in sorted(views.items()):
        target_up.add_metric([service], int(view.target_up))
        for (port, role), listener in sorted(view.listeners.items()):
            up.add_metric([service, port, role], int(listener.up))
            if not listener.up and listener.closed is not None:
                closed.add_metric([service, port, role], listener.closed)
    yield from (up, closed, target_up)


def _shutdown_families(
    views: dict[str, _ServiceView],
    shutdowns: dict[str, ServiceShutdown],
    budget: float,
    limit: int,
) -> Iterator[Metric]:
    phase = _gauge(
        "drainwatch_drain_phase",
        "1 for the current phase of the newest process: running, signalled, draining, "
        "stopping, stopped.",
        ["service", "phase"],
    )
    signal = _gauge(
        "drainwatch_shutdown_signal_timestamp_seconds",
        "When each termination signal of the latest shutdown arrived (Unix seconds).",
        ["service", "signal"],
    )
    started = _gauge(
        "drainwatch_shutdown_step_started_timestamp_seconds",
        "When each step of the latest shutdown began (Unix seconds).",
        ["service", "step"],
    )
    finished = _gauge(
        "drainwatch_shutdown_step_finished_timestamp_seconds",
        "When each step of the latest shutdown ended (Unix seconds); absent while it runs.",
        ["service", "step"],
    )
    drain = _gauge(
        "drainwatch_drain_duration_seconds",
        "Signal to drain complete (or exit) of the latest shutdown; grows while it runs.",
        ["service"],
    )
    budget_family = _gauge(
        "drainwatch_drain_budget_seconds",
        "The grace budget: terminationGracePeriodSeconds minus preStop (agent setting).",
        ["service"],
    )
    at_exit = _gauge(
        "drainwatch_inflight_at_exit",
        "Requests still in flight or aborted by the shutdown when the latest finished "
        "process exited or was killed.",
        ["service", "protocol"],
    )
    violations = CounterMetricFamily(
        "drainwatch_shutdown_violations",
        "Processes whose shutdown broke a rule (runbooks in docs/runbooks/<rule>.md).",
        labels=["service", "rule"],
    )
    exit_time = _gauge(
        "drainwatch_target_exit_timestamp_seconds",
        "When the latest process of the service that went away exited or was killed.",
        ["service"],
    )
    for service in sorted(set(views) | set(shutdowns)):
        view = views.get(service, _ServiceView())
        for name in PHASES:
            phase.add_metric([service, name], int(name == view.phase))
        budget_family.add_metric([service], budget)
        shutdown = shutdowns.get(service)
        counts = {} if shutdown is None else shutdown.violations
        for rule in RULES:
            violations.add_metric([service, rule], counts.get(rule, 0))
        if shutdown is None:
            continue
        if shutdown.last_exit is not None:
            exit_time.add_metric([service], shutdown.last_exit)
        latest = shutdown.latest
        if latest is not None:
            _add_latest(service, latest, limit, signal, started, finished)
            if latest.drain_seconds is not None:
                drain.add_metric([service], latest.drain_seconds)
        complete = shutdown.latest_complete
        if complete is not None and complete.inflight_at_exit is not None:
            counts_at_exit = dict.fromkeys(PROTOCOLS, 0) | complete.inflight_at_exit
            for protocol, count in sorted(counts_at_exit.items()):
                at_exit.add_metric([service, protocol], count)
    yield from (
        phase,
        signal,
        started,
        finished,
        drain,
        budget_family,
        at_exit,
        violations,
        exit_time,
    )


def _add_latest(
    service: str,
    latest: DrainReport,
    limit: int,
    signal: GaugeMetricFamily,
    started: GaugeMetricFamily,
    finished: GaugeMetricFamily,
) -> None:
    first: dict[str, float] = {}
    for name, at in latest.signals:
        first.setdefault(_cut(name, limit), at)
    for name, at in first.items():
        signal.add_metric([service, name], at)
    seen: set[str] = set()
    for step in latest.steps:
        name = _cut(step.name, limit)
        if step.kind == KILLED or not name or name in seen:
            continue
        seen.add(name)
        label = [service, name]
        started.add_metric(label, step.started)
        if step.finished is not None:
            finished.add_metric(label, step.finished)
