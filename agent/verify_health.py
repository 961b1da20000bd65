"""The health endpoint and the business ports, watched by ``drainwatch verify-shutdown``.

``ShutdownWatch`` checks the health endpoint the way a kubelet does (a new connection per
check, through the agent's own probes) every ``interval`` seconds and keeps each change
of state. An HTTP endpoint is *up* when it answers 2xx or 3xx (the kubelet's rule for a
liveness probe). A ``grpc.health.v1`` server is up while it answers at all: ``NOT_SERVING``
is how a gRPC server says "draining, send no new work", which is what it should say during
the drain, and only a server that no longer answers has gone down. Readiness before the
load starts needs more: ``SERVING`` or a 2xx/3xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from drainwatch.collectors.grpc_health_wire import STATUS_NAMES
from drainwatch.collectors.probes import GrpcHealthProbe, HttpProbe, Probe

from .loadgen import port_is_listening
from .verify_options import HealthCheck

DEFAULT_INTERVAL: Final = 0.05
CHECK_TIMEOUT: Final = 1.0
_ANSWERED: Final = frozenset(STATUS_NAMES.values())


@dataclass(frozen=True, slots=True)
class HealthSample:
    """A change of state (health up, or a business port listening) from ``at`` (Unix
    seconds) on."""

    at: float
    up: bool
    detail: str  # "HTTP 200", "NOT_SERVING", "connection refused", ...
    last_seen: float  # the last check that still saw this state


def make_probe(check: HealthCheck, timeout: float = CHECK_TIMEOUT) -> Probe:
    if check.kind == "http":
        return HttpProbe("health", check.target, timeout)
    return GrpcHealthProbe("health", check.target, check.service, timeout)


class ShutdownWatch:
    """From ``start()`` to ``stop()``, every ``interval`` s: the readiness endpoint (when
    given, as a kubelet would, so that the SDK sees its answers), the health endpoint (when
    given), then whether the business ports still listen, so that one round orders health
    and ports. ``readiness``, ``health`` and ``business`` keep each change of state;
    ``on_change`` is called (on the loop) with the kind and the change after the first
    sample of each kind.
    """

    def __init__(
        self,
        check: HealthCheck | None,
        business: tuple[tuple[str, int], ...],
        interval: float = DEFAULT_INTERVAL,
        on_change: Callable[[str, HealthSample], None] | None = None,
        readiness: HealthCheck | None = None,
    ) -> None:
        self.check = check
        self.readiness: list[HealthSample] = []
        self._readiness_probe = make_probe(readiness) if readiness is not None else None
        self.business_addresses = business
        self.interval = interval
        self.health: list[HealthSample] = []
        self.business: list[HealthSample] = []
        self.rounds = 0
        self._on_change = on_change
        self._probe = make_probe(check) if check is not None else None
        self._task: asyncio.Task[None] | None = None

    async def sample_health(self) -> tuple[bool, bool, str]:
        """One health check now: (up, ready, detail); always up without a health endpoint."""
        if self._probe is None or self.check is None:
            return True, True, "no health endpoint"
        outcome = await self._probe.check()
        if self.check.kind == "grpc":
            return outcome.ok or outcome.detail in _ANSWERED, outcome.ok, outcome.detail
        return outcome.ok, outcome.ok, outcome.detail

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="verify-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for probe in (self._probe, self._readiness_probe):
            if probe is not None:
                await probe.close()

    def _note(self, kind: str, changes: list[HealthSample], sample: HealthSample) -> None:
        if changes and changes[-1].up == sample.up:
            changes[-1] = replace(changes[-1], last_seen=sample.at)
            return
        changes.append(sample)
        if self._on_change is not None and len(changes) > 1:
            self._on_change(kind, sample)

    async def _run(self) -> None:
        while True:
            began = time.monotonic()
            if self._readiness_probe is not None:
                at = time.time()
                outcome = await self._readiness_probe.check()
                self._note(
                    "readiness", self.readiness, HealthSample(at, outcome.ok, outcome.detail, at)
                )
            if self._probe is not None:
                at = time.time()
                up, _, detail = await self.sample_health()
                self._note("health", self.health, HealthSample(at, up, detail, at))
            at = time.time()
            open_ = await listening(self.business_addresses, every=False)
            self._note(
                "business",
                self.business,
                HealthSample(at, open_, "listening" if open_ else "not listening", at),
            )
            self.rounds += 1
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - began)))


async def listening(addresses: tuple[tuple[str, int], ...], every: bool = True) -> bool:
    """Every one (or, with ``every=False``, any) of ``addresses`` (host, port) accepts TCP
    connections now."""
    for host, port in addresses:
        if await asyncio.to_thread(port_is_listening, host.strip("[]"), port) != every:
            return not every
    return every
