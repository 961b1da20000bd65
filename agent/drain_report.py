"""The drain report of one process's shutdown: the waterfall, what it cut off, the verdict.

``build_report`` turns the facts of one SDK process (copied out of the agent's state by
``snapshot``) into a ``DrainReport``; ``to_json`` is the shape served at
``/api/v1/report`` and printed by ``drainwatch report``. Offsets are seconds from the
first termination signal, or from the first shutdown event when no signal was seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from .shutdown_facts import (
    DRAIN_STEP,
    EXIT_STEP,
    ChannelFacts,
    Listener,
    ProcessFacts,
    RequestFacts,
    inflight_at_exit,
    is_complete,
    listeners,
    readiness_off_at,
    shutdown_began,
    signals,
    steps,
)
from .shutdown_state import OUTCOMES
from .state import Instance
from .verdicts import Violation, judge, runbook

# Waterfall row kinds.
STEP: Final = "step"
LISTENER: Final = "listener"
EXIT: Final = "exit"
KILLED: Final = "killed"
# In-flight points kept in a report from this long before the shutdown began.
SERIES_LEAD_SECONDS: Final = 5.0


@dataclass(frozen=True, slots=True)
class RequestCounts:
    """One (protocol, method): counters now, and outcomes when the shutdown began."""

    protocol: str
    method: str
    active: int
    started_during_drain: int
    outcomes: Mapping[str, int]
    at_shutdown: Mapping[str, int] | None
    # (Unix seconds, active) as the agent received them; a report keeps the shutdown's window
    series: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True, slots=True)
class InstanceSnapshot:
    """Everything a report needs from one instance, copied under the state lock."""

    service: str
    instance: str
    pid: int
    facts: ProcessFacts
    requests: tuple[RequestCounts, ...]
    residuals: tuple[
        tuple[str, int, float | None, int | None], ...
    ]  # name, depth, closed, at close
    counted_from_shutdown: bool


def wants_report(instance: Instance, forgotten: bool = False) -> bool:
    """A shutdown is in progress or over: a signal, a stop, readiness off, or it is gone."""
    shutdown = instance.shutdown
    if forgotten or not instance.connected:
        return True
    return shutdown is not None and (
        shutdown["phase"] != "running" or shutdown.get("exited") is not None
    )


def snapshot(service: str, instance: Instance, forgotten: bool = False) -> InstanceSnapshot:
    """Copy what a report needs. Call with the state lock held; shares nothing mutable."""
    baseline = instance.outcomes_at_shutdown
    requests = tuple(
        RequestCounts(
            protocol,
            method.method,
            method.active,
            method.started_during_drain,
            dict(method.outcomes),
            None if baseline is None else baseline.get((protocol, method.method), {}),
            tuple((at, active) for at, active in method.series),
        )
        for (protocol, _), method in sorted(instance.inflight.items())
    )
    channels = tuple(
        ChannelFacts(
            channel.name,
            channel.owner,
            channel.closed,
            channel.closed_by,
            channel.depth,
            channel.drained,
        )
        for channel in instance.channels.values()
    )
    residuals = tuple(
        (channel.name, channel.depth, channel.closed, channel.residual)
        for channel in instance.channels.values()
        if channel.depth > 0 and channel.drained is None
    )
    facts = ProcessFacts(
        # merge_shutdown never mutates a merged dict once it is stored: sharing is safe
        shutdown=instance.shutdown,
        requests=tuple(
            RequestFacts(
                request.protocol,
                request.method,
                request.active,
                request.outcomes.get("aborted_at_shutdown", 0),
            )
            for request in requests
        ),
        channels=channels,
        connected=instance.connected,
        disconnected_at=instance.disconnected_at,
        last_seen=instance.last_seen,
        forgotten=forgotten,
    )
    return InstanceSnapshot(
        service,
        instance.instance,
        instance.pid,
        facts,
        requests,
        tuple(sorted(residuals, key=lambda item: (-item[1], item[0]))),
        baseline is not None,
    )


@dataclass(frozen=True, slots=True)
class WaterfallStep:
    name: str
    kind: str  # step | listener | exit | killed
    started: float
    finished: float | None
    ok: bool | None = None
    detail: str | None = None
    role: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class DrainReport:
    service: str
    instance: str
    pid: int
    phase: str
    complete: bool
    killed: bool
    origin: float | None
    signals: tuple[tuple[str, float], ...]
    exited: float | None
    exit_code: int | None
    disconnected: float | None
    ended: float | None
    readiness_off: float | None
    budget_seconds: float
    drain_seconds: float | None
    shutdown_seconds: float | None
    steps: tuple[WaterfallStep, ...]
    listeners: tuple[Listener, ...]
    inflight_at_exit: dict[str, int] | None
    inflight_at_exit_source: str | None
    requests: tuple[RequestCounts, ...]
    requests_counted_from: str
    residual_channels: tuple[tuple[str, int, float | None, int | None], ...]
    violations: tuple[Violation, ...]
    updated: float
    rules: frozenset[str] = field(default_factory=frozenset)
    outside: Mapping[str, Any] | None = None  # what the sidecar saw from outside
    source: str = "sdk"  # sdk | outside (no SDK in the target) | restored (from the state dir)
    # the SDK's loops and threads still there at the drain deadline (agent/task_state.py)
    tasks_at_deadline: Mapping[str, Any] | None = None
    # blocks of the event loop during the shutdown, with the blocking code's stack
    loop_stalls: tuple[Mapping[str, Any], ...] = ()

    @property
    def signal(self) -> tuple[str, float] | None:
        return self.signals[0] if self.signals else None

    @property
    def verdict(self) -> str:
        count = len(self.violations)
        if count == 0:
            return "OK"
        return f"{count} violation" + ("" if count == 1 else "s")

    def offset(self, time: float | None) -> float | None:
        if time is None or self.origin is None:
            return None
        return round(time - self.origin, 6)

    def to_json(self) -> dict[str, Any]:
        """The report as served by ``/api/v1/report`` (documented in docs/metrics.md)."""
        signal = self.signal
        return {
            "service": self.service,
            "instance": self.instance,
            "pid": self.pid,
            "phase": self.phase,
            "complete": self.complete,
            "killed": self.killed,
            "signal": None if signal is None else {"name": signal[0], "at": signal[1]},
            "signals": [
                {"name": name, "at": at, "offset": self.offset(at)} for name, at in self.signals
            ],
            "started": self.origin,
            "exited": self.exited,
            "exit_code": self.exit_code,
            "disconnected": self.disconnected,
            "ended": self.ended,
            "readiness_off": None
            if self.readiness_off is None
            else {"at": self.readiness_off, "offset": self.offset(self.readiness_off)},
            "budget_seconds": self.budget_seconds,
            "drain_seconds": self.drain_seconds,
            "shutdown_seconds": self.shutdown_seconds,
            "steps": [self._step_json(step) for step in self.steps],
            "listeners": [
                {
                    "name": item.name,
                    "role": item.role,
                    "port": item.port,
                    "opened": item.opened,
                    "stop_started": item.stop_started,
                    "closed": item.closed,
                }
                for item in self.listeners
            ],
            "inflight_at_exit": self.inflight_at_exit,
            "inflight_at_exit_source": self.inflight_at_exit_source,
            "requests": [
                {
                    "protocol": request.protocol,
                    "method": request.method,
                    "active": request.active,
                    "started_during_drain": request.started_during_drain,
                    "outcomes": dict(request.outcomes),
                    "inflight_series": [[at, active] for at, active in request.series],
                }
                for request in self.requests
            ],
            "requests_counted_from": self.requests_counted_from,
            "channels_with_residual": [
                {"name": name, "depth": depth, "closed": closed, "residual_at_close": residual}
                for name, depth, closed, residual in self.residual_channels
            ],
            "violations": [
                {
                    "rule": violation.rule,
                    "explanation": violation.explanation,
                    "at": violation.at,
                    "offset": self.offset(violation.at),
                    "runbook": runbook(violation.rule),
                }
                for violation in self.violations
            ],
            "verdict": self.verdict,
            "updated": self.updated,
            "source": self.source,
            "outside": None if self.outside is None else dict(self.outside),
            "tasks_at_deadline": (
                None if self.tasks_at_deadline is None else dict(self.tasks_at_deadline)
            ),
            "loop_stalls": [dict(stall) for stall in self.loop_stalls],
        }

    def _step_json(self, step: WaterfallStep) -> dict[str, Any]:
        duration = None if step.finished is None else round(step.finished - step.started, 6)
        return {
            "name": step.name,
            "kind": step.kind,
            "role": step.role,
            "port": step.port,
            "started": step.started,
            "finished": step.finished,
            "start_offset": self.offset(step.started),
            "end_offset": self.offset(step.finished),
            "duration": duration,
            "ok": step.ok,
            "detail": step.detail,
        }


def _component_roles(shutdown: Mapping[str, Any] | None) -> dict[str, str]:
    topology = shutdown.get("topology") if shutdown is not None else None
    if not isinstance(topology, Mapping):
        return {}
    return {
        component["name"]: component["role"]
        for component in topology.get("components", [])
        if component.get("role")
    }


def _waterfall(facts: ProcessFacts) -> list[WaterfallStep]:
    all_steps = steps(facts)
    roles = _component_roles(facts.shutdown)
    rows: list[WaterfallStep] = []
    for item in listeners(facts):
        began = item.stop_started or item.closed
        if began is None:
            continue
        step = all_steps.get(item.name, {})
        rows.append(
            WaterfallStep(
                item.name,
                LISTENER,
                began,
                item.closed,
                step.get("ok"),
                step.get("detail"),
                item.role,
                item.port,
            )
        )
    shown = {row.name for row in rows}
    for name, step in all_steps.items():
        started = step.get("started")
        if name in shown or not isinstance(started, int | float):
            continue
        finished = step.get("finished")
        rows.append(
            WaterfallStep(
                name,
                EXIT if name == EXIT_STEP else STEP,
                float(started),
                None if finished is None else float(finished),
                step.get("ok"),
                step.get("detail"),
                roles.get(name),
            )
        )
    if facts.killed and facts.ended_at is not None:
        rows.append(WaterfallStep(KILLED, KILLED, facts.ended_at, facts.ended_at))
    rows.sort(key=lambda row: (row.started, row.finished is None, row.finished or 0.0, row.name))
    return rows


def _series_window(
    series: tuple[tuple[float, int], ...], origin: float | None, end: float
) -> tuple[tuple[float, int], ...]:
    """The points from a little before the shutdown began to its end; the count at the
    window's start is carried onto it."""
    if origin is None:
        return ()
    since = origin - SERIES_LEAD_SECONDS
    window = [(at, active) for at, active in series if since <= at <= end]
    before = [active for at, active in series if at < since]
    if before and (not window or window[0][0] > since):
        window.insert(0, (since, before[-1]))
    return tuple(window)


def _during_shutdown(
    request: RequestCounts, origin: float | None = None, end: float = 0.0
) -> RequestCounts:
    baseline = request.at_shutdown
    series = _series_window(request.series, origin, end)
    if baseline is None:
        return replace(request, series=series)
    outcomes = {
        outcome: max(0, request.outcomes.get(outcome, 0) - baseline.get(outcome, 0))
        for outcome in OUTCOMES
    }
    return RequestCounts(
        request.protocol,
        request.method,
        request.active,
        request.started_during_drain,
        outcomes,
        None,
        series,
    )


def build_report(snap: InstanceSnapshot, budget: float, now: float) -> DrainReport:
    """The report of one process's shutdown as known at ``now``; never raises on odd input."""
    facts = snap.facts
    shutdown = facts.shutdown or {}
    origin = shutdown_began(facts)
    ended = facts.ended_at
    drain_end = None
    drain = steps(facts).get(DRAIN_STEP)
    if drain is not None and isinstance(drain.get("finished"), int | float):
        drain_end = float(drain["finished"])
    end = ended if ended is not None else now
    counted = inflight_at_exit(facts)
    requests = tuple(_during_shutdown(request, origin, end) for request in snap.requests)
    requests = tuple(
        request
        for request in requests
        if request.active or request.started_during_drain or any(request.outcomes.values())
    )
    violations = tuple(judge(facts, budget, now))
    exit_code = shutdown.get("exit_code")
    return DrainReport(
        service=snap.service,
        instance=snap.instance,
        pid=snap.pid,
        phase="stopped" if ended is not None else str(shutdown.get("phase", "running")),
        complete=is_complete(facts, now),
        killed=facts.killed,
        origin=origin,
        signals=tuple(signals(facts)),
        exited=facts.exited,
        exit_code=exit_code if isinstance(exit_code, int) else None,
        disconnected=None if facts.connected else facts.disconnected_at,
        ended=ended,
        readiness_off=readiness_off_at(facts),
        budget_seconds=budget,
        drain_seconds=None if origin is None else max(0.0, (drain_end or end) - origin),
        shutdown_seconds=None if origin is None else max(0.0, end - origin),
        steps=tuple(_waterfall(facts)),
        listeners=tuple(sorted(listeners(facts), key=lambda item: item.opened or 0.0)),
        inflight_at_exit=None if counted is None else counted[0],
        inflight_at_exit_source=None if counted is None else counted[1],
        requests=requests,
        requests_counted_from="shutdown" if snap.counted_from_shutdown else "process_start",
        residual_channels=snap.residuals,
        violations=violations,
        updated=now,
        rules=frozenset(violation.rule for violation in violations),
    )
