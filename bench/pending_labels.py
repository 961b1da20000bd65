"""What a report costs when many ASGI requests are in flight, labelled when they end.

``python -m bench.pending_labels [--routes 20] [--in-flight 1000 10000]`` holds that many
requests in a Starlette app of plain routes wrapped in ``DrainwatchMiddleware``, called
directly on one event loop (no server: the requests only need to be in flight), either in
their handler (routed: Starlette's router put the route in the scope) or in a middleware
before routing (unrouted: their paths are matched as the router will). It then times the
reporter's read of the in-flight records (``InflightRegistry.records()``, the median of 9)
and prints it per read and per request held. The middleware labels such requests only
when they end; this is what their labels cost a reader meanwhile. By hand only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_READS = 9
_HELD_ROUTE = "/orders/{order_id}"


def _app(routes: int, release: asyncio.Event, before_routing: bool) -> Any:
    from drainwatch.integrations.asgi import DrainwatchMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def endpoint(request: Request) -> PlainTextResponse:
        await release.wait()
        return PlainTextResponse("x")

    class HoldsBeforeRouting:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and before_routing:
                await release.wait()
            await self.app(scope, receive, send)

    # The held route last: a path matched before routing tries every route first.
    others = [Route(f"/other{index}/{{item_id}}", endpoint) for index in range(routes - 1)]
    app = Starlette(
        routes=[*others, Route(_HELD_ROUTE, endpoint)],
        middleware=[Middleware(HoldsBeforeRouting)],
    )
    return DrainwatchMiddleware(app)


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    return None


def _scope(number: int) -> Scope:
    path = _HELD_ROUTE.replace("{order_id}", str(number))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }


async def read_cost(routes: int, in_flight: int, before_routing: bool) -> float:
    """Seconds per read of the in-flight records with ``in_flight`` requests held."""
    from drainwatch import _inflight

    release = asyncio.Event()
    app = _app(routes, release, before_routing)
    # The first request builds the middleware's state of this loop, and is not held.
    release.set()
    await app(_scope(0), _receive, _send)
    release.clear()
    held = [asyncio.create_task(app(_scope(n), _receive, _send)) for n in range(1, in_flight + 1)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    registry = _inflight.REGISTRY
    label = f"GET {_HELD_ROUTE}"
    reads = []
    for _ in range(_READS):
        started = time.perf_counter()
        records = registry.records()
        reads.append(time.perf_counter() - started)
    active = sum(r["active"] for r in records if r["method"] == label)
    release.set()
    await asyncio.gather(*held)
    if active != in_flight:
        raise RuntimeError(f"{in_flight} requests held, but the records say {active} in flight")
    return statistics.median(reads)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pending_labels")
    parser.add_argument("--routes", type=int, default=20, help="routes of the app (>= 1)")
    parser.add_argument(
        "--in-flight", type=int, nargs="+", default=[1000, 10000], help="requests held (>= 1)"
    )
    args = parser.parse_args(argv)
    if args.routes < 1:
        parser.error(f"--routes must be at least 1, got {args.routes}")
    if min(args.in_flight) < 1:
        parser.error(f"--in-flight must be at least 1, got {min(args.in_flight)}")
    import drainwatch

    drainwatch.configure(enabled=False)  # the reads are timed here, not sent
    for before_routing in (False, True):
        where = "unrouted (held before routing)" if before_routing else "routed (in the handler)"
        for count in args.in_flight:
            seconds = asyncio.run(read_cost(args.routes, count, before_routing))
            print(
                f"{where:<31} {count:>7} in flight, {args.routes} routes: "
                f"{seconds * 1000:8.2f} ms per read, {seconds / count * 1e6:6.2f} µs per request"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
