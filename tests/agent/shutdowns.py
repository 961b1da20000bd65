"""Realistic shutdowns for agent tests: the SDK's own ShutdownState and InflightRegistry,
driven on a fake clock, and a feeder that sends their records to an agent State the way
the ingest does (JSON datagram, decoder, apply)."""

from __future__ import annotations

import json
import signal
from typing import Any

from drainwatch._inflight import InflightRegistry, MethodStats
from drainwatch._shutdown import ShutdownState
from drainwatch.agent.config import Limits
from drainwatch.agent.shutdown_facts import ChannelFacts, ProcessFacts, RequestFacts
from drainwatch.agent.state import State
from drainwatch.collectors.sdk_decode import decode_datagram

T0 = 1_800_000_000.0
SIGTERM = int(signal.SIGTERM)


class FakeTime:
    """Stands in for ``drainwatch._shutdown.steady_time`` (called) and is the agent's clocks
    (called, or ``.time()``). ``now`` is absolute Unix seconds."""

    def __init__(self) -> None:
        self.now = T0

    def time(self) -> float:
        return self.now

    def __call__(self) -> float:
        return self.now


class SdkProcess:
    """One target process: its shutdown state and in-flight registry (both the real SDK
    classes) on the shared fake clock."""

    def __init__(self, clock: FakeTime) -> None:
        self.clock = clock
        self.state = ShutdownState()
        self.registry = InflightRegistry()

    def at(self, seconds: float) -> ShutdownState:
        """Move the clock to ``T0 + seconds`` and return the state to call."""
        self.clock.now = T0 + seconds
        return self.state

    def start(self, protocol: str, method: str, count: int = 1) -> list[tuple[MethodStats, float]]:
        stats = self.registry.stats(protocol, method)
        return [(stats, self.registry.start(stats)) for _ in range(count)]

    def finish(self, started: list[tuple[MethodStats, float]], outcome: str = "ok") -> None:
        for stats, began in started:
            self.registry.finish(stats, began, outcome)

    def reject(self, protocol: str, method: str) -> None:
        """A request refused because the process is draining (never handled)."""
        self.registry.reject(self.registry.stats(protocol, method))

    def exit(self, seconds: float) -> None:
        self.at(seconds).note_exit(None, self.registry.unfinished_by_protocol())

    def records(self) -> list[dict[str, Any]]:
        return [self.state.record(), *self.registry.records()]

    def facts(
        self,
        *,
        connected: bool = True,
        disconnected_at: float | None = None,
        channels: tuple[ChannelFacts, ...] = (),
        forgotten: bool = False,
    ) -> ProcessFacts:
        """What the agent would know, built from the records this process sends."""
        requests = tuple(
            RequestFacts(
                record["protocol"],
                record["method"],
                record["active"],
                record["outcomes"]["aborted_at_shutdown"],
            )
            for record in self.registry.records()
        )
        return ProcessFacts(
            shutdown=self.state.record(),
            requests=requests,
            channels=channels,
            connected=connected,
            disconnected_at=disconnected_at,
            last_seen=self.clock.now,
            forgotten=forgotten,
        )


def good_shutdown(process: SdkProcess) -> None:
    """The post-mortem's checklist done right: readiness off, propagation wait, business
    listener stopped and awaited while requests finish, health closed last, exit."""
    state = process.at(0)
    state.listener_opened("grpc", "business", 50051)
    state.listener_opened("health", "health", 8081)
    state.set_ready(True)
    requests = process.start("grpc", "/pay.Payments/Charge", 2)
    process.at(10).note_signal(SIGTERM)
    process.at(10.01).step_started("readiness_off")
    process.at(10.01).set_ready(False)
    process.at(10.02).step_finished("readiness_off")
    process.at(10.02).step_started("propagation_wait")
    process.at(15.02).step_finished("propagation_wait")
    process.at(15.03).listener_stop_started("grpc")
    process.at(16.0)
    process.finish(requests)  # in flight reaches zero: the drain step ends
    process.at(16.1).listener_closed("grpc")
    process.at(16.2).listener_stop_started("health")
    process.at(16.3).listener_closed("health")
    process.exit(16.5)


class Feeder:
    """Sends records to ``state`` as datagrams, through the real decoder."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.seq: dict[str, int] = {}

    def send(self, instance: str, records: list[dict[str, Any]], service: str = "checkout") -> None:
        seq = self.seq[instance] = self.seq.get(instance, 0) + 1
        datagram = {
            "v": 1,
            "service": service,
            "instance": instance,
            "pid": 4242,
            "seq": seq,
            "time": T0,
            "dropped": 0,
            "records": records,
        }
        decoded = decode_datagram(json.dumps(datagram).encode())
        assert decoded.rejected == {}, decoded.rejected
        self.state.apply(decoded)


def make_state(clock: FakeTime, limits: Limits | None = None) -> tuple[State, Feeder]:
    state = State(
        limits or Limits(), default_service="agent-default", wall_clock=clock, clock=clock
    )
    return state, Feeder(state)
