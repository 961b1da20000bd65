"""The port timeline as immutable data: sample marks, listening periods, exits and port roles.

``PortTimeline.view()`` (:mod:`drainwatch.collectors.port_timeline`) returns a
``TimelineView``; the contract metrics, the shutdown-order verdict
(:mod:`drainwatch.collectors.shutdown_order`) and the sampling plan read it without a lock.
``PortRoles`` says which port is a health, metrics or business port, from configuration,
the SDK's listener info and the health probes' targets.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Final

from .target_types import ProcessId

HEALTH: Final = "health"
BUSINESS: Final = "business"
METRICS: Final = "metrics"
UNKNOWN: Final = "unknown"

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


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
