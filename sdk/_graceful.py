"""Small helpers that stop a server the way the post-mortem's checklist says."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Protocol

from ._shutdown import STATE


class _Stoppable(Protocol):
    def stop(self, grace: float | None) -> Any: ...


def set_ready(ready: bool) -> None:
    """Declare the service ready or not (for a readiness endpoint you manage yourself).

    Turning readiness off is the first step of a correct drain; drainwatch uses it to
    judge ``readiness_not_failed_first``. Never raises.
    """
    try:
        STATE.set_ready(bool(ready))
    except Exception:  # noqa: S110 - instrumentation must never break the application
        pass


async def graceful_stop(
    server: _Stoppable,
    grace: float,
    *,
    health: Any = None,
    propagation_wait: float = 0.0,
) -> None:
    """Stop a gRPC server (``grpc.aio`` or sync) correctly, and wait until it has stopped.

    Readiness goes off first (``health.enter_graceful_shutdown()`` when a grpc_health
    servicer is given), then after ``propagation_wait`` seconds the server stops with
    ``grace`` and this coroutine returns only when in-flight RPCs have finished or the
    grace has expired: the stop is awaited, never launched and forgotten.
    """
    set_ready(False)
    if health is not None:
        outcome = health.enter_graceful_shutdown()
        if inspect.isawaitable(outcome):
            await outcome
    if propagation_wait > 0:
        await asyncio.sleep(propagation_wait)
    stopping = server.stop(grace)
    if inspect.isawaitable(stopping):
        await stopping
    elif hasattr(stopping, "wait"):  # a sync server returns a threading.Event
        await asyncio.to_thread(stopping.wait)
