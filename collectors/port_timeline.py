"""The target's listening ports over time, their roles, and the shutdown order they show.

``PortTimeline`` is fed successive ``ProcessSample``s and keeps, per port, each period it
was listening: the sample that first saw it, the last sample that saw it, and the first
sample where it was gone (the close is bracketed by those two). Ports belong to the service,
not to one process: a port several workers listen on stays up until the last one closes it.
A port is never closed on a sample that could not read some live process's sockets.

``health_closed_before_business(view)`` judges the order from the timeline alone, without
any SDK, and only when the order is certain: a health port was seen gone in a sample that
finished before a later sample in which a business port was still listening. Two closes
seen in the same sample (a tie within one sampling interval) are never flagged. Given a
sampling interval P and a sample duration d, closes at least 2P + d apart are always
ordered; ``SamplingPlan`` holds the recommended intervals.

Thread safety: ``feed`` (the sampling worker) and ``view`` (/metrics, verdicts) take the
lock; ``view`` returns immutable data that the pure functions here read.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from .process import ProcessSample
from .targets import ProcessId

HEALTH: Final = "health"
BUSINESS: Final = "business"
METRICS: Final = "metrics"
UNKNOWN: Final = "unknown"
# connections on a local port the target never listened on: its own outgoing connections,
# folded into one series so ephemeral ports never become labels
OUTBOUND: Final = "outbound"

LISTENER_UP: Final = "drainwatch_listener_up"
LISTENER_CLOSED: Final = "drainwatch_listener_closed_timestamp_seconds"
TCP_CONNECTIONS: Final = "drainwatch_tcp_connections"
TARGET_UP: Final = "drainwatch_target_up"
TARGET_EXIT: Final = "drainwatch_target_exit_timestamp_seconds"

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_EXITS_KEPT: Final = 64


def probe_port(target: str) -> int | None:
    """The TCP port a probe targets: ``http://host:8081/healthz`` -> 8081, ``https://h/``
    -> 443, ``host:50051/my.Service`` (gRPC) -> 50051. None when there is none."""
    text = target.strip()
    if "://" in text:
        try:
            parts = urllib.parse.urlsplit(text)
            return parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
        except ValueError:
            return None
    address = text.split("/", 1)[0]
    _, separator, port = address.rpartition(":")
    if separator and port.isdigit() and 0 < int(port) < 65536:
        return int(port)
    return None


@dataclass(frozen=True)
class PortRoles:
    """Where a port's role comes from, in order: configured health or metrics ports, the
    SDK's listener info (``port -> role``), a health probe targeting the port; any other
    port is ``business``. With none of these known, every port is ``unknown``."""

    health_ports: frozenset[int] = frozenset()
    metrics_ports: frozenset[int] = frozenset()
    probe_targets: tuple[str, ...] = ()  # probe URLs, or HOST:PORT[/service] for gRPC
    sdk_roles: tuple[tuple[int, str], ...] = ()
    _probed: frozenset[int] = field(init=False, repr=False, compare=False)
    _sdk: dict[int, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        probed = {port for port in map(probe_port, self.probe_targets) if port is not None}
        object.__setattr__(self, "_probed", frozenset(probed))
        object.__setattr__(self, "_sdk", dict(self.sdk_roles))

    @property
    def known(self) -> bool:
        return bool(self.health_ports or self.metrics_ports or self._probed or self._sdk)

    def role(self, port: int) -> str:
        return self.explain(port)[0]

    def explain(self, port: int) -> tuple[str, str]:
        """The role of ``port`` and where it comes from (for explanations)."""
        if port in self.health_ports:
            return HEALTH, "a configured health port"
        if port in self.metrics_ports:
            return METRICS, "a configured metrics port"
        sdk = self._sdk.get(port)
        if sdk is not None:
            return sdk, f"{sdk} according to the SDK"
        if port in self._probed:
            return HEALTH, "targeted by a health probe"
        if self.known:
            return BUSINESS, "not a health or metrics port"
        return UNKNOWN, "no health port, probe or SDK listener is configured"


@dataclass(frozen=True, slots=True, order=True)
class SampleMark:
    """One fed sample: its sequence number and when it started and finished."""

    seq: int
    started: float
    finished: float


@dataclass(frozen=True, slots=True)
class PortInterval:
    """One period during which the service listened on ``port``."""

    port: int
    opened: SampleMark  # first sample that saw it listening
    before_open: SampleMark | None  # the sample before (None: it was up from the start)
    last_seen: SampleMark  # last sample that saw it listening
    closed: SampleMark | None = None  # first sample where it was gone
    closed_by_exit: bool = False  # gone because no target process was alive any more
    sockets: frozenset[tuple[str, str]] = frozenset()  # (family, address)

    @property
    def up(self) -> bool:
        return self.closed is None


@dataclass(frozen=True, slots=True)
class ProcessExit:
    id: ProcessId
    reason: str  # exited | zombie | pid_reused
    last_alive: SampleMark | None
    noticed: SampleMark


@dataclass(frozen=True, slots=True)
class ListenerState:
    """A port's latest period, as the contract metrics show it."""

    port: int
    role: str
    up: bool
    opened_at: float
    last_seen_at: float
    closed_at: float | None  # first sample where it was gone; None while listening
    closed_by_exit: bool


@dataclass(frozen=True, slots=True)
class MetricSample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True, slots=True)
class TimelineView:
    """An immutable copy of the timeline."""

    roles: PortRoles
    intervals: tuple[PortInterval, ...]  # in the order they opened
    connections: tuple[tuple[str, str, int], ...]  # (port label, state, count)
    target_up: bool
    target_last_alive: SampleMark | None
    target_exit: SampleMark | None  # first sample with no target alive; None while up
    exits: tuple[ProcessExit, ...]
    samples: int
    last_sample: SampleMark | None
    last_full: SampleMark | None
    last_cost_seconds: float  # CPU time of the last sample, and of the last full one
    last_full_cost_seconds: float
    last_change_at: float | None  # a port opened or closed, a process appeared or went
    capped_ports: int  # distinct ports ignored because of the port cap

    def listeners(self) -> tuple[ListenerState, ...]:
        latest: dict[int, PortInterval] = {}
        for interval in self.intervals:
            latest[interval.port] = interval
        return tuple(
            ListenerState(
                port=interval.port,
                role=self.roles.role(interval.port),
                up=interval.up,
                opened_at=interval.opened.started,
                last_seen_at=interval.last_seen.started,
                closed_at=None if interval.closed is None else interval.closed.started,
                closed_by_exit=interval.closed_by_exit,
            )
            for port, interval in sorted(latest.items())
        )


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


# -- the order verdict ------------------------------------------------------------------------


class OrderVerdict(NamedTuple):
    violated: bool
    explanation: str
    at: float | None  # Unix seconds: the first sample that saw the health port gone


def health_closed_before_business(
    view: TimelineView,
    *,
    since: float | None = None,
    min_gap_seconds: float = 0.0,
    origin: float | None = None,
) -> OrderVerdict:
    """Did a health port certainly stop listening before a business port (or while business
    ports kept listening until the process exited, or are listening still)?

    Only closes seen at or after ``since`` (e.g. the last restart) are judged. Flagged only
    when the health port was seen gone in a sample that finished at least
    ``min_gap_seconds`` before a later sample still saw a business port listening that had
    been listening together with it. Times in the explanation are offsets from ``origin``
    (default: the last sample that saw the health port). Pure; never raises on odd data.
    """
    roles = view.roles
    if not roles.known:
        return OrderVerdict(
            False,
            "port roles are unknown: configure the health ports or a health probe URL, or "
            "use the SDK, so that health and business ports can be told apart",
            None,
        )
    health = sorted(
        (
            (item.closed, item)
            for item in view.intervals
            if item.closed is not None
            and roles.role(item.port) == HEALTH
            and (since is None or item.closed.finished >= since)
        ),
        key=lambda pair: pair[0],
    )
    business = [item for item in view.intervals if roles.role(item.port) == BUSINESS]
    if not health:
        return OrderVerdict(False, "no health port stopped listening", None)
    if not business:
        return OrderVerdict(False, "the target has no business port", None)
    for gone, closed_health in health:
        overlapping = [
            item
            for item in business
            if item.opened.seq <= closed_health.last_seen.seq
            and item.last_seen.seq > gone.seq
            and item.last_seen.started - gone.finished >= min_gap_seconds
        ]
        if overlapping:
            latest = max(overlapping, key=lambda item: (item.last_seen.seq, -item.port))
            start = origin if origin is not None else closed_health.last_seen.started
            text = _explain(view, closed_health, gone, latest, start)
            return OrderVerdict(True, text, gone.started)
    return OrderVerdict(
        False,
        "every health port stopped listening after the business ports, or within the same "
        "sample (the order of closes seen in one sample is not known)",
        None,
    )


def _explain(
    view: TimelineView,
    health: PortInterval,
    gone: SampleMark,
    business: PortInterval,
    origin: float,
) -> str:
    def at(time: float) -> str:
        return f"{time - origin:+.3f} s"

    _, why = view.roles.explain(health.port)
    text = (
        f"health port {health.port} ({why}) stopped listening between "
        f"{at(health.last_seen.started)} and {at(gone.finished)}, while business port "
        f"{business.port} was still listening at {at(business.last_seen.started)}"
    )
    closed = business.closed
    if closed is None:
        text += " and is listening still"
    elif business.closed_by_exit:
        text += f" and stopped only when the target exited (gone by {at(closed.finished)})"
    else:
        text += f" and stopped only by {at(closed.finished)}"
    return (
        f"{text}: liveness probes fail while business traffic is still served, so the "
        "orchestrator may kill the drain; close the health endpoint last"
    )


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
