"""What the agent knows of one SDK process's shutdown, and how to read it.

``ProcessFacts`` is copied out of the agent's state under its lock (``drain_report``);
the functions here read the merged cumulative ``shutdown`` record (docs/protocol.md)
defensively, so that odd but valid input never raises. ``verdicts`` judges the facts,
``drain_report`` draws them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

# Step names with a meaning of their own (the SDK's drainwatch._shutdown uses the same).
DRAIN_STEP: Final = "drain"
READINESS_OFF_STEP: Final = "readiness_off"
HEALTH_CLOSED_STEP: Final = "health_closed"
LIVENESS_FAILED_STEP: Final = "liveness_failed"
EXIT_STEP: Final = "exit"

# After the exit record, the SDK still sends its final snapshot (channels, counters):
# judge an exited process that is still connected only after this long.
SETTLE_SECONDS: Final = 1.0


@dataclass(frozen=True, slots=True)
class RequestFacts:
    protocol: str
    method: str
    active: int
    aborted_at_shutdown: int


@dataclass(frozen=True, slots=True)
class ChannelFacts:
    name: str
    owner: str | None
    closed: float | None
    closed_by: str | None
    depth: int
    drained: float | None


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    role: str
    port: int | None
    opened: float | None
    stop_started: float | None
    closed: float | None

    @property
    def describe(self) -> str:
        port = "" if self.port is None else f" (port {self.port})"
        return f"{self.role} listener {self.name!r}{port}"


@dataclass(frozen=True, slots=True)
class ProcessFacts:
    """What is known of one SDK process, copied out of the agent's state."""

    shutdown: Mapping[str, Any] | None
    requests: tuple[RequestFacts, ...] = ()
    channels: tuple[ChannelFacts, ...] = ()
    connected: bool = True
    disconnected_at: float | None = None
    last_seen: float | None = None
    forgotten: bool = False  # the agent is about to forget it (retention or a cap)

    @property
    def exited(self) -> float | None:
        return timestamp(self.shutdown, "exited")

    @property
    def ended_at(self) -> float | None:
        """When the process went away: its exit record, else its connection closing, else
        (when it is forgotten without either) the last time it was heard from."""
        if self.exited is not None:
            return self.exited
        if not self.connected and self.disconnected_at is not None:
            return self.disconnected_at
        if self.forgotten:
            return self.last_seen
        return None

    @property
    def killed(self) -> bool:
        """Gone without an exit record: SIGKILL, a crash, or an exit the SDK did not see."""
        return self.ended_at is not None and self.exited is None

    @property
    def how_it_ended(self) -> str:
        if self.exited is not None:
            return "exited"
        if not self.connected:
            return "was killed (its connection closed without an exit record)"
        return "went silent"


def is_complete(facts: ProcessFacts, now: float) -> bool:
    """The shutdown is over and the agent has heard everything it will hear."""
    if facts.forgotten or (not facts.connected and facts.disconnected_at is not None):
        return True
    exited = facts.exited
    return exited is not None and now - exited >= SETTLE_SECONDS


def is_shutting_down(facts: ProcessFacts) -> bool:
    """A shutdown began (signal, readiness off, a stop, the exit) or the process is gone."""
    if facts.ended_at is not None:
        return True
    return facts.shutdown is not None and facts.shutdown.get("phase", "running") != "running"


# -- reading the merged shutdown record -------------------------------------------------------


def timestamp(mapping: Mapping[str, Any] | None, key: str) -> float | None:
    """``mapping[key]`` as a float when it is a number, else None (missing, null, odd)."""
    if mapping is None:
        return None
    value = mapping.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def steps(facts: ProcessFacts) -> dict[str, Mapping[str, Any]]:
    if facts.shutdown is None:
        return {}
    raw = facts.shutdown.get("steps")
    return dict(raw) if isinstance(raw, Mapping) else {}


def listeners(facts: ProcessFacts) -> list[Listener]:
    raw = facts.shutdown.get("listeners") if facts.shutdown is not None else None
    if not isinstance(raw, Mapping):
        return []
    found = []
    for name, entry in raw.items():
        port = entry.get("port")
        found.append(
            Listener(
                name=name,
                role=str(entry.get("role", "unknown")),
                port=port if isinstance(port, int) else None,
                opened=timestamp(entry, "opened"),
                stop_started=timestamp(entry, "stop_started"),
                closed=timestamp(entry, "closed"),
            )
        )
    return found


def signals(facts: ProcessFacts) -> list[tuple[str, float]]:
    """Termination signals in arrival order, as (name, Unix seconds)."""
    raw = facts.shutdown.get("signals") if facts.shutdown is not None else None
    if not isinstance(raw, list):
        return []
    return sorted(
        ((str(entry["signal"]), float(entry["at"])) for entry in raw), key=lambda pair: pair[1]
    )


def first_signal(facts: ProcessFacts) -> tuple[str, float] | None:
    found = signals(facts)
    return found[0] if found else None


def readiness_off_at(facts: ProcessFacts) -> float | None:
    """When readiness was turned off: the ``readiness_off`` step, else ``ready`` False."""
    step = steps(facts).get(READINESS_OFF_STEP)
    if step is not None:
        return timestamp(step, "started")
    if facts.shutdown is not None and facts.shutdown.get("ready") is False:
        return timestamp(facts.shutdown, "ready_changed")
    return None


def shutdown_began(facts: ProcessFacts) -> float | None:
    """Time zero of the waterfall: the first signal, else the earliest shutdown event."""
    signal = first_signal(facts)
    if signal is not None:
        return signal[1]
    times = [timestamp(step, "started") for step in steps(facts).values()]
    times += [listener.stop_started or listener.closed for listener in listeners(facts)]
    times.append(readiness_off_at(facts))
    times.append(facts.ended_at)
    known = [time for time in times if time is not None]
    return min(known) if known else None


def inflight_at_exit(facts: ProcessFacts) -> tuple[dict[str, int], str] | None:
    """Requests cut off by the exit, per protocol, and where the numbers come from.

    ``exit_record``: the SDK's own count at exit (still active + aborted by the shutdown).
    ``last_report``: the process vanished without one; the last reported ``active`` plus
    ``aborted_at_shutdown`` counts. None while the process is running.
    """
    if facts.ended_at is None:
        return None
    recorded = facts.shutdown.get("inflight_at_exit") if facts.shutdown is not None else None
    if isinstance(recorded, Mapping):
        return {str(key): int(value) for key, value in recorded.items()}, "exit_record"
    totals: dict[str, int] = {}
    for request in facts.requests:
        cut = request.active + request.aborted_at_shutdown
        totals[request.protocol] = totals.get(request.protocol, 0) + cut
    return totals, "last_report"
