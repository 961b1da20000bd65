"""The target's listening ports over time, and the metrics and sampling pace they give.

``PortTimeline`` is fed successive ``ProcessSample``s and keeps, per port, each period it
was listening: the sample that first saw it, the last sample that saw it, and the first
sample where it was gone (the close is bracketed by those two). Ports belong to the service,
not to one process: a port several workers listen on stays up until the last one closes it.
A port is never closed on a sample that could not read some live process's sockets.

``view()`` returns the immutable ``TimelineView`` (:mod:`drainwatch.collectors.timeline_view`,
with the port roles); ``contract_metrics`` turns it into the metric-contract series,
``health_closed_before_business`` (:mod:`drainwatch.collectors.shutdown_order`) judges the
shutdown order it shows, and ``SamplingPlan`` picks the sampling intervals from it.

Thread safety: ``feed`` (the sampling worker) and ``view`` (/metrics, verdicts) take the
lock; ``view`` returns immutable data that the pure functions read.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from .process import ProcessSample
from .shutdown_order import OrderVerdict, health_closed_before_business
from .target_types import ProcessId
from .timeline_view import (
    BUSINESS,
    HEALTH,
    METRICS,
    UNKNOWN,
    ListenerState,
    PortInterval,
    PortRoles,
    ProcessExit,
    SampleMark,
    TimelineView,
    probe_port,
)

# The timeline's view, roles and verdict are what a timeline is read with, so callers get
# them from here along with PortTimeline.
__all__ = [
    "BUSINESS",
    "HEALTH",
    "LISTENER_CLOSED",
    "LISTENER_UP",
    "METRICS",
    "OUTBOUND",
    "TARGET_EXIT",
    "TARGET_UP",
    "TCP_CONNECTIONS",
    "UNKNOWN",
    "ListenerState",
    "MetricSample",
    "OrderVerdict",
    "PortInterval",
    "PortRoles",
    "PortTimeline",
    "ProcessExit",
    "SampleMark",
    "SamplingPlan",
    "TimelineView",
    "contract_metrics",
    "health_closed_before_business",
    "probe_port",
]

# connections on a local port the target never listened on: its own outgoing connections,
# folded into one series so ephemeral ports never become labels
OUTBOUND: Final = "outbound"

LISTENER_UP: Final = "drainwatch_listener_up"
LISTENER_CLOSED: Final = "drainwatch_listener_closed_timestamp_seconds"
TCP_CONNECTIONS: Final = "drainwatch_tcp_connections"
TARGET_UP: Final = "drainwatch_target_up"
TARGET_EXIT: Final = "drainwatch_target_exit_timestamp_seconds"

_EXITS_KEPT: Final = 64


@dataclass(frozen=True, slots=True)
class MetricSample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


class PortTimeline:
    """Fed with samples in order; keeps at most ``max_ports`` ports (further ports are
    ignored and counted in ``capped_ports``) and the last ``max_intervals`` periods per port."""

    def __init__(
        self, roles: PortRoles | None = None, *, max_ports: int = 64, max_intervals: int = 16
    ) -> None:
        self._lock = threading.Lock()
        self._roles = roles if roles is not None else PortRoles()
        self._max_ports = max_ports
        self._intervals: dict[int, deque[PortInterval]] = {}
        self._max_intervals = max_intervals
        self._connections: dict[tuple[str, str], int] = {}
        self._seq = 0
        self._last: SampleMark | None = None
        self._last_full: SampleMark | None = None
        self._cost = 0.0
        self._full_cost = 0.0
        self._alive: dict[ProcessId, SampleMark] = {}
        self._target_last_alive: SampleMark | None = None
        self._target_exit: SampleMark | None = None
        self._exits: deque[ProcessExit] = deque(maxlen=_EXITS_KEPT)
        self._last_change: float | None = None
        self._capped: set[int] = set()  # ports ignored because of the cap (< 65536)

    def set_roles(self, roles: PortRoles) -> None:
        """Replace the role sources (config reloaded, SDK listener info arrived)."""
        with self._lock:
            self._roles = roles

    def feed(self, sample: ProcessSample) -> SampleMark:
        """Add the next sample (samples must come in the order they were taken)."""
        with self._lock:
            self._seq += 1
            mark = SampleMark(self._seq, sample.started, sample.finished)
            alive = sample.alive
            self._track_processes(sample, mark)
            sockets_known = all(process.sockets_known for process in alive)
            listening: dict[int, set[tuple[str, str]]] = {}
            for process in alive:
                for item in process.listening or ():
                    listening.setdefault(item.port, set()).add((item.family, item.address))
            self._update_ports(listening, sockets_known, bool(alive), mark)
            if sample.full:
                self._last_full = mark
                self._full_cost = sample.cost_seconds
                self._update_connections(sample)
            self._last = mark
            self._cost = sample.cost_seconds
            return mark

    def view(self) -> TimelineView:
        with self._lock:
            intervals = {port: list(kept) for port, kept in self._intervals.items()}
            ordered = sorted(
                (item for kept in intervals.values() for item in kept),
                key=lambda item: (item.opened.seq, item.port),
            )
            return TimelineView(
                roles=self._roles,
                intervals=tuple(ordered),
                connections=tuple(
                    (port, state, count)
                    for (port, state), count in sorted(self._connections.items())
                ),
                target_up=bool(self._alive),
                target_last_alive=self._target_last_alive,
                target_exit=self._target_exit,
                exits=tuple(self._exits),
                samples=self._seq,
                last_sample=self._last,
                last_full=self._last_full,
                last_cost_seconds=self._cost,
                last_full_cost_seconds=self._full_cost,
                last_change_at=self._last_change,
                capped_ports=len(self._capped),
            )

    # -- under the lock ------------------------------------------------------------------

    def _track_processes(self, sample: ProcessSample, mark: SampleMark) -> None:
        was_up = bool(self._alive)
        seen = set()
        for process in sample.processes:
            seen.add(process.id)
            if process.alive:
                if process.id not in self._alive:
                    self._last_change = mark.started
                self._alive[process.id] = mark
            elif process.id in self._alive:
                last = self._alive.pop(process.id)
                self._exits.append(ProcessExit(process.id, process.gone or "exited", last, mark))
                self._last_change = mark.started
        for identity in [identity for identity in self._alive if identity not in seen]:
            # no longer a target (discovery dropped it): not an exit we observed
            del self._alive[identity]
        if self._alive:
            self._target_last_alive = mark
            self._target_exit = None
        elif was_up:
            self._target_exit = mark

    def _update_ports(
        self,
        listening: dict[int, set[tuple[str, str]]],
        sockets_known: bool,
        any_alive: bool,
        mark: SampleMark,
    ) -> None:
        for port, sockets in listening.items():
            kept = self._intervals.get(port)
            if kept is not None and kept[-1].up:
                kept[-1] = _seen(kept[-1], mark, sockets)
                continue
            if kept is None:
                if len(self._intervals) >= self._max_ports:
                    self._capped.add(port)
                    continue
                kept = self._intervals[port] = deque(maxlen=self._max_intervals)
            kept.append(PortInterval(port, mark, self._last, mark, sockets=frozenset(sockets)))
            self._last_change = mark.started
        if not sockets_known:
            return  # some live process's sockets are unknown: close nothing on this sample
        for port, kept in self._intervals.items():
            current = kept[-1]
            if current.up and port not in listening:
                kept[-1] = PortInterval(
                    port,
                    current.opened,
                    current.before_open,
                    current.last_seen,
                    closed=mark,
                    closed_by_exit=not any_alive,
                    sockets=current.sockets,
                )
                self._last_change = mark.started

    def _update_connections(self, sample: ProcessSample) -> None:
        # series seen once stay, at 0, so a dashboard sees ESTABLISHED fall to zero
        counts = dict.fromkeys(self._connections, 0)
        for process in sample.alive:
            if process.connections is None:
                return  # unknown for a live process: keep the previous counts
            for item in process.connections:
                label = str(item.port) if item.port in self._intervals else OUTBOUND
                counts[(label, item.state)] = counts.get((label, item.state), 0) + item.count
        self._connections = counts


def _seen(
    current: PortInterval, mark: SampleMark, sockets: Iterable[tuple[str, str]]
) -> PortInterval:
    return PortInterval(
        current.port,
        current.opened,
        current.before_open,
        mark,
        sockets=current.sockets | frozenset(sockets),
    )


# -- contract metrics -------------------------------------------------------------------------


def contract_metrics(view: TimelineView) -> tuple[MetricSample, ...]:
    """The metric-contract series this timeline backs (without the ``service`` label, which
    the agent adds): listener_up and listener_closed_timestamp_seconds per port and role,
    tcp_connections per port and state, target_up and target_exit_timestamp_seconds."""
    found: list[MetricSample] = []
    for listener in view.listeners():
        labels = (("port", str(listener.port)), ("role", listener.role))
        found.append(MetricSample(LISTENER_UP, labels, 1.0 if listener.up else 0.0))
        if listener.closed_at is not None:
            found.append(MetricSample(LISTENER_CLOSED, labels, listener.closed_at))
    for port, state, count in view.connections:
        found.append(MetricSample(TCP_CONNECTIONS, (("port", port), ("state", state)), count))
    if view.samples:
        found.append(MetricSample(TARGET_UP, (), 1.0 if view.target_up else 0.0))
    if view.target_exit is not None:
        found.append(MetricSample(TARGET_EXIT, (), view.target_exit.started))
    return tuple(found)


# -- sampling intervals -----------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingPlan:
    """How often to sample. Ordering two closes ``g`` seconds apart needs an interval P with
    2P + (sample duration) < g: 20 ms while draining orders closes 50 ms apart or more.

    A listeners-only sample (``full=False``) is cheap enough (about 0.15 ms over netlink)
    to run at ``idle_seconds`` all the time, which is what lets the first close of an
    uninstrumented target switch to ``draining_seconds`` in time. ``full`` samples (CPU,
    memory, connections) follow their own, slower intervals. Whatever the intervals, the
    agent never spends more than ``idle_share`` (``draining_share``) of a core sampling:
    a costly sample (CPU time: psutil fallback, thousands of connections) stretches the
    interval.
    """

    idle_seconds: float = 0.05
    draining_seconds: float = 0.02
    full_idle_seconds: float = 1.0
    full_draining_seconds: float = 0.25
    hold_seconds: float = 10.0  # stay fast this long after the last change
    idle_share: float = 0.01
    draining_share: float = 0.2

    def draining(self, view: TimelineView, now: float, hint: bool = False) -> bool:
        """``hint``: the agent knows a shutdown is under way (SDK phase, failing probe)."""
        if hint:
            return True
        changed = view.last_change_at
        return changed is not None and now - changed < self.hold_seconds

    def next_sample(self, view: TimelineView, now: float, hint: bool = False) -> tuple[float, bool]:
        """Seconds to wait before the next sample, and whether it should be ``full``."""
        fast = self.draining(view, now, hint)
        share = self.draining_share if fast else self.idle_share
        interval = self.draining_seconds if fast else self.idle_seconds
        every = self.full_draining_seconds if fast else self.full_idle_seconds
        interval = max(interval, view.last_cost_seconds / share)
        last_full = view.last_full
        if last_full is None:
            return interval, True
        every = max(every, view.last_full_cost_seconds / share)
        return interval, now + interval - last_full.started >= every
