"""``ShutdownCoordinator`` with real servers in one event loop and a real SIGTERM.

A grpc.aio server and an aiohttp business app, each with requests in flight, and an
aiohttp health app: the coordinator turns readiness off, waits, stops both business
servers side by side (their in-flight requests finish), then the health server last.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import aiohttp
import drainwatch
import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest
from aiohttp import web
from drainwatch import _inflight, _shutdown
from drainwatch.integrations import aiohttp as dw_aiohttp
from drainwatch.integrations import grpc as dw_grpc

SLOW_SECONDS = 0.8


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    drainwatch.configure(enabled=False)
    _shutdown.STATE.reset()
    monkeypatch.setattr(_inflight, "REGISTRY", _inflight.InflightRegistry())
    yield
    _shutdown.STATE.reset()


async def _slow_pay(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(SLOW_SECONDS)
    return b"paid"


async def _slow_order(request: web.Request) -> web.Response:
    await asyncio.sleep(SLOW_SECONDS)
    return web.Response(text="placed")


async def _scenario() -> tuple[drainwatch.ShutdownResult, list[str], list[int], dict[str, Any]]:
    grpc_server = dw_grpc.aio_server()
    grpc_server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "payments.Payments", {"Pay": grpc.unary_unary_rpc_method_handler(_slow_pay)}
            ),
        )
    )
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()

    business = web.Application()
    business.router.add_get("/orders/{order_id}", _slow_order)
    dw_aiohttp.setup(business)
    business_runner = dw_aiohttp.track_runner(web.AppRunner(business, shutdown_timeout=5))
    await business_runner.setup()
    business_site = web.TCPSite(business_runner, "127.0.0.1", 0)
    await business_site.start()

    # The test's clients share the servers' loop, so leftover tasks must not be cancelled.
    coordinator = drainwatch.ShutdownCoordinator(propagation_wait=0.2, cancel_tasks=False)

    async def readiness(request: web.Request) -> web.Response:
        return web.Response(status=200 if coordinator.ready else 503)

    health = web.Application()
    health.router.add_get("/readyz", readiness)
    health_runner = dw_aiohttp.track_runner(web.AppRunner(health))
    await health_runner.setup()
    await web.TCPSite(health_runner, "127.0.0.1", 0).start()

    coordinator.add("grpc", lambda: grpc_server.stop(5), timeout=6)
    coordinator.add("orders", business_runner.cleanup, timeout=6)
    coordinator.add("health", health_runner.cleanup, role="health")
    coordinator.install()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        pay = channel.unary_unary("/payments.Payments/Pay")
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{business_site.port}/orders/1"

            async def order() -> int:
                async with session.get(url) as response:
                    return response.status

            async def payment() -> bytes:
                reply: bytes = await pay(b"x", timeout=10)
                return reply

            payments = [asyncio.create_task(payment()) for _ in range(3)]
            orders = [asyncio.create_task(order()) for _ in range(3)]
            while _inflight.REGISTRY.active() < 6:
                await asyncio.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)
            result = await coordinator.wait()
            replies = [reply.decode() for reply in await asyncio.gather(*payments)]
            statuses = list(await asyncio.gather(*orders))
    return result, replies, statuses, _shutdown.STATE.record()


def test_two_business_servers_drain_side_by_side_and_health_stops_last() -> None:
    """Both servers finish their in-flight requests in one concurrent level; health last."""
    result, replies, statuses, record = asyncio.run(asyncio.wait_for(_scenario(), 20))
    assert result.ok, result.steps
    assert replies == ["paid"] * 3
    assert statuses == [200] * 3
    steps = {step.name: step for step in result.steps}
    # grpc and orders stopped concurrently: each took about the slow request, not twice it
    assert abs(steps["grpc"].started - steps["orders"].started) < 0.1
    assert steps["health"].started >= max(steps["grpc"].finished, steps["orders"].finished)
    assert steps["readiness_off"].finished <= steps["grpc"].started
    listeners = record["listeners"]
    health = [entry for entry in listeners.values() if entry["role"] == "health"]
    business = [entry for entry in listeners.values() if entry["role"] == "business"]
    assert len(health) == 1 and len(business) == 2
    assert all(entry["closed"] is not None for entry in listeners.values())
    assert health[0]["stop_started"] >= max(entry["closed"] for entry in business)
    counts = {
        (r["protocol"], r["method"]): r["outcomes"]["ok"] for r in _inflight.REGISTRY.records()
    }
    assert counts == {("grpc", "/payments.Payments/Pay"): 3, ("http", "GET /orders/{order_id}"): 3}
