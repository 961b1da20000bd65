"""The verifier's load against a real aiohttp server on loopback: the rate cap, stopping
new calls while letting calls in flight finish, fresh connections in the accept window,
and a pause after failures instead of a spin."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from drainwatch.agent.loadgen import free_port
from drainwatch.agent.verify_load import LOAD, NEW_CONNECTION, LoadDriver, caller_factories
from drainwatch.agent.verify_options import HttpLoad

from tests.aio import run


@asynccontextmanager
async def server(delay: float) -> AsyncIterator[tuple[str, set[int]]]:
    """A server answering after ``delay`` s; yields its URL and the client ports it saw."""
    peers: set[int] = set()

    async def handle(request: web.Request) -> web.Response:
        peername = request.transport.get_extra_info("peername") if request.transport else None
        if peername:
            peers.add(peername[1])
        await asyncio.sleep(delay)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/", peers
    finally:
        await runner.cleanup()


def http(url: str) -> HttpLoad:
    port = int(url.rsplit(":", 1)[1].strip("/"))
    return HttpLoad(url, "127.0.0.1", port, "GET", None, ())


def driver(url: str, concurrency: int, rate: float | None = None) -> LoadDriver:
    return LoadDriver(caller_factories(None, http(url), 5.0), concurrency, rate, 5.0)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_the_rate_caps_calls_per_second() -> None:
    """8 workers on a fast server at 20/s make about 20 calls in a second, not thousands."""

    async def scenario() -> int:
        async with server(0.0) as (url, _):
            load = driver(url, 8, rate=20)
            load.start()
            await asyncio.sleep(1.0)
            await load.finish()
            return len(load.requests)

    calls = run(scenario(), timeout=20)
    assert 10 <= calls <= 30, calls


def test_stop_starting_lets_calls_in_flight_finish() -> None:
    """After stop_starting(), no call starts, and the 4 in flight end OK."""

    async def scenario() -> tuple[int, list[bool]]:
        async with server(0.5) as (url, _):
            load = driver(url, 4)
            load.start()
            await until(lambda: load.in_flight == 4)
            load.stop_starting()
            await load.finish()
            return len(load.requests), [r.ok for r in load.requests]

    count, oks = run(scenario(), timeout=20)
    assert count == 4 and all(oks)


def test_new_connections_are_fresh_each_time() -> None:
    """Every accept-window call arrives from a new client port (a new connection)."""

    async def scenario() -> tuple[int, int]:
        async with server(0.0) as (url, peers):
            load = driver(url, 1)
            await load.probe_new_connections(time.time() + 0.5, 0.1)
            fresh = [r for r in load.requests if r.kind == NEW_CONNECTION and r.ok]
            return len(fresh), len(peers)

    calls, ports = run(scenario(), timeout=20)
    assert calls >= 4 and ports == calls


def test_a_refused_endpoint_is_retried_with_a_pause_not_a_spin() -> None:
    """Nothing listens: each worker pauses after a failure, so 4 workers make a bounded
    number of calls in half a second, all recorded as failures."""

    async def scenario() -> list[str]:
        load = driver(f"http://127.0.0.1:{free_port()}/", 4)
        load.start()
        await asyncio.sleep(0.5)
        await load.finish()
        return [r.status for r in load.requests if r.kind == LOAD]

    statuses = run(scenario(), timeout=20)
    assert 4 <= len(statuses) <= 4 * 20, len(statuses)
    assert set(statuses) == {"ClientConnectorError"}
