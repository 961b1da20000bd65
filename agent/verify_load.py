"""Load for ``drainwatch verify-shutdown``: requests kept in flight, and new connections
during the accept window.

``LoadDriver`` runs ``concurrency`` workers per endpoint, each making one call after the
other (closed loop) on its own connection, optionally paced to ``rate`` calls per second per
endpoint; ``stop_starting()`` lets the calls in flight finish and starts no new one.
``probe_new_connections`` makes calls on fresh connections (a new channel or session for
each, as a client that has just been routed to the pod would) at a steady pace until a
deadline. Every call is recorded as a ``Request``: what it was, when it started and ended
(Unix seconds) and the status the client saw. No call ever raises out of the driver.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Final, Protocol

from .loadgen import CallOutcome, GrpcCaller, HttpCaller
from .verify_options import GrpcLoad, HttpLoad

LOAD: Final = "load"
NEW_CONNECTION: Final = "new_connection"
FAILURE_BACKOFF_SECONDS: Final = 0.05
_FINISH_GRACE_SECONDS: Final = 5.0


@dataclass(frozen=True, slots=True)
class Request:
    """One client call: ``kind`` is ``load`` (a worker) or ``new_connection`` (the accept
    window's prober), ``endpoint`` is ``grpc`` or ``http``; times are Unix seconds."""

    kind: str
    endpoint: str
    status: str
    started: float
    ended: float

    @property
    def ok(self) -> bool:
        """gRPC ``OK``, or an HTTP status from 200 to 399."""
        if self.status == "OK":
            return True
        return self.status.isdigit() and 200 <= int(self.status) < 400

    def in_flight_at(self, moment: float) -> bool:
        return self.started < moment < self.ended


class Caller(Protocol):
    async def call(self) -> CallOutcome: ...


CallerFactory = Callable[[], AbstractAsyncContextManager[Caller]]


def caller_factories(
    grpc: GrpcLoad | None, http: HttpLoad | None, timeout: float
) -> list[tuple[str, CallerFactory]]:
    """One factory per endpoint; each call of a factory opens a new connection."""
    factories: list[tuple[str, CallerFactory]] = []
    if grpc is not None:
        factories.append(
            ("grpc", lambda: GrpcCaller(grpc.target, grpc.method, grpc.request, timeout))
        )
    if http is not None:
        factories.append(
            (
                "http",
                lambda: HttpCaller(http.url, timeout, http.method, http.body, http.headers),
            )
        )
    return factories


class _Pacer:
    """Hands out call times ``1/rate`` seconds apart; with no rate, at once."""

    def __init__(self, rate: float | None) -> None:
        self._period = 0.0 if rate is None else 1.0 / rate
        self._next = time.monotonic()

    async def turn(self) -> None:
        if self._period <= 0:
            return
        now = time.monotonic()
        at = max(self._next, now)
        self._next = at + self._period
        if at > now:
            await asyncio.sleep(at - now)


class LoadDriver:
    """Workers per endpoint, started by ``start()`` on the running loop."""

    def __init__(
        self,
        factories: list[tuple[str, CallerFactory]],
        concurrency: int,
        rate: float | None = None,
        request_timeout: float = 60.0,
    ) -> None:
        self._factories = factories
        self._concurrency = concurrency
        self._rate = rate
        self._request_timeout = request_timeout
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started: dict[int, tuple[str, str, float]] = {}  # call id -> kind, endpoint, start
        self._next_id = 0
        self.requests: list[Request] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for endpoint, factory in self._factories:
            pacer = _Pacer(self._rate)
            for index in range(self._concurrency):
                self._tasks.append(
                    loop.create_task(
                        self._worker(endpoint, factory, pacer),
                        name=f"verify-load-{endpoint}-{index}",
                    )
                )

    def stop_starting(self) -> None:
        """Start no new worker call; calls in flight go on until they end."""
        self._stopping.set()

    @property
    def in_flight(self) -> int:
        return len(self._started)

    def started_before(self, moment: float) -> list[tuple[str, str, float]]:
        """Calls still running that started before ``moment``: (kind, endpoint, start)."""
        return [entry for entry in self._started.values() if entry[2] < moment]

    async def probe_new_connections(self, until: float, interval: float) -> None:
        """Every ``interval`` s until ``until`` (Unix seconds), one call per endpoint on a
        fresh connection; returns once every such call has ended."""
        calls: list[asyncio.Task[None]] = []
        while time.time() < until:
            for endpoint, factory in self._factories:
                calls.append(asyncio.create_task(self._once(NEW_CONNECTION, endpoint, factory)))
            await asyncio.sleep(max(0.0, min(interval, until - time.time())))
        if calls:
            await asyncio.wait(calls, timeout=self._request_timeout + _FINISH_GRACE_SECONDS)

    async def finish(self) -> None:
        """Stop starting calls and wait (bounded by the request timeout) for the rest."""
        self.stop_starting()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(
            self._tasks, timeout=self._request_timeout + _FINISH_GRACE_SECONDS
        )
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=_FINISH_GRACE_SECONDS)

    async def _worker(self, endpoint: str, factory: CallerFactory, pacer: _Pacer) -> None:
        async with factory() as caller:
            while not self._stopping.is_set():
                await pacer.turn()
                if self._stopping.is_set():
                    break
                if not await self._call(LOAD, endpoint, caller):
                    # A refused or reset call comes back at once: pause like a client's
                    # retry backoff instead of spinning.
                    await asyncio.sleep(FAILURE_BACKOFF_SECONDS)

    async def _once(self, kind: str, endpoint: str, factory: CallerFactory) -> None:
        async with factory() as caller:
            await self._call(kind, endpoint, caller)

    async def _call(self, kind: str, endpoint: str, caller: Caller) -> bool:
        """Make one call and record it; True when it succeeded."""
        call_id = self._next_id
        self._next_id += 1
        self._started[call_id] = (kind, endpoint, time.time())
        try:
            outcome = await caller.call()
        finally:
            del self._started[call_id]
        started = outcome.ended_at - outcome.seconds
        request = Request(kind, endpoint, outcome.status, started, outcome.ended_at)
        self.requests.append(request)
        return request.ok
