"""The server process for the HTTP figures: ``python -m bench.http_target aiohttp|asgi``.

Serves the same app on three loopback ports at once, one server per variant, all in one
event loop: the plain app; the app with drainwatch's middleware (``setup(app)`` for
aiohttp, ``DrainwatchMiddleware(app)`` for ASGI); the app with OpenTelemetry's middleware
(``opentelemetry-instrumentation-aiohttp-server``'s, ``opentelemetry-instrumentation-
asgi``'s ``OpenTelemetryMiddleware``) and a real ``TracerProvider``. The ASGI app is a
Starlette app served by uvicorn; the aiohttp app is an ``aiohttp.web.Application``. Each
has one route, ``GET /items/{item_id}``, whose handler answers ``ok`` at once.

Prints ``ready <port> <port> <port>`` (in ``VARIANTS`` order) once all three serve. When
stdin closes it stops them and prints ``counted <requests> <spans>``: the requests
drainwatch counted as ended and the server spans OpenTelemetry ended, so the bench can
check that both saw every request.

As in ``bench.grpc_target``, the ``TracerProvider``'s one span processor only counts ended
server spans: every span is sampled, recorded and ended, nothing is exported.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import drainwatch
from drainwatch import _inflight

if TYPE_CHECKING:
    from aiohttp import web
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

ROUTE: Final = "/items/{item_id}"
METHOD_LABEL: Final = f"GET {ROUTE}"
BODY: Final = b"ok"
VARIANTS: Final = ("baseline", "drainwatch", "opentelemetry")
KINDS: Final = ("aiohttp", "asgi")
_HOST: Final = "127.0.0.1"


class _SpanCount:
    """A ``TracerProvider`` whose only span processor counts ended server spans."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
        from opentelemetry.trace import SpanKind

        count = [0]

        class SpanCounter(SpanProcessor):
            # One request at a time on one event loop: the increment needs no lock.
            def on_end(self, span: ReadableSpan) -> None:
                if span.kind is SpanKind.SERVER:
                    count[0] += 1

        self.provider: TracerProvider = TracerProvider()
        self.provider.add_span_processor(SpanCounter())
        self._count = count

    @property
    def spans(self) -> int:
        return self._count[0]


def counted_requests() -> int:
    """Requests drainwatch counted as ended on the benchmark's route."""
    total = 0
    for record in _inflight.REGISTRY.records():
        if record["protocol"] == "http" and record["method"] == METHOD_LABEL:
            total += sum(record["outcomes"].values())
    return total


# -- aiohttp ------------------------------------------------------------------------------------


async def _aiohttp_item(request: web.Request) -> web.Response:
    from aiohttp import web

    return web.Response(body=BODY, content_type="text/plain")


def _aiohttp_app(variant: str, spans: _SpanCount) -> web.Application:
    from aiohttp import web
    from drainwatch.integrations import aiohttp as drainwatch_aiohttp

    app = _opentelemetry_aiohttp_app(spans) if variant == "opentelemetry" else web.Application()
    app.router.add_get(ROUTE, _aiohttp_item)
    if variant == "drainwatch":
        drainwatch_aiohttp.setup(app)
    return app


def _opentelemetry_aiohttp_app(spans: _SpanCount) -> web.Application:
    """An app as ``AioHttpServerInstrumentor`` makes them: while instrumented,
    ``web.Application`` is a subclass that adds OpenTelemetry's middleware (the
    instrumentor also sets the middleware's settings then). Instrumented only while this
    one app is made, so the other variants' apps stay plain."""
    from aiohttp import web
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

    instrumentor = AioHttpServerInstrumentor()
    instrumentor.instrument(tracer_provider=spans.provider)
    try:
        app = web.Application()
    finally:
        instrumentor.uninstrument()
    return app


@contextlib.asynccontextmanager
async def _aiohttp_servers(spans: _SpanCount) -> AsyncIterator[list[int]]:
    from aiohttp import web

    runners: list[web.AppRunner] = []
    ports: list[int] = []
    try:
        for variant in VARIANTS:
            runner = web.AppRunner(_aiohttp_app(variant, spans), access_log=None)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, _HOST, 0)
            await site.start()
            ports.append(runner.addresses[0][1])
        yield ports
    finally:
        for runner in runners:
            await runner.cleanup()


# -- ASGI ---------------------------------------------------------------------------------------


async def _starlette_item(request: Request) -> PlainTextResponse:
    from starlette.responses import PlainTextResponse

    return PlainTextResponse(BODY)


def _asgi_app(variant: str, spans: _SpanCount) -> Any:
    from drainwatch.integrations.asgi import DrainwatchMiddleware
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.applications import Starlette
    from starlette.routing import Route

    app = Starlette(routes=[Route(ROUTE, _starlette_item)])
    if variant == "drainwatch":
        return DrainwatchMiddleware(app)
    if variant == "opentelemetry":
        return OpenTelemetryMiddleware(app, tracer_provider=spans.provider)
    return app


@contextlib.asynccontextmanager
async def _asgi_servers(spans: _SpanCount) -> AsyncIterator[list[int]]:
    import uvicorn

    servers: list[uvicorn.Server] = []
    tasks: list[asyncio.Task[None]] = []
    ports: list[int] = []
    try:
        for variant in VARIANTS:
            config = uvicorn.Config(
                _asgi_app(variant, spans),
                host=_HOST,
                port=0,
                lifespan="off",
                log_level="warning",
                access_log=False,
            )
            server = uvicorn.Server(config)
            servers.append(server)
            tasks.append(asyncio.create_task(server.serve()))
            while not server.started:
                if tasks[-1].done():
                    await tasks[-1]  # raises what stopped it
                    raise RuntimeError(f"uvicorn ({variant}) stopped before it served")
                await asyncio.sleep(0.01)
            ports.append(server.servers[0].sockets[0].getsockname()[1])
        yield ports
    finally:
        for server in servers:
            server.should_exit = True
        for task in tasks:
            await task


# -- the process --------------------------------------------------------------------------------


def _ready(ports: Sequence[int]) -> None:
    # Everything alive now lives until exit: keep the collector from scanning it again.
    gc.collect()
    gc.freeze()
    print("ready", *ports, flush=True)


async def _serve(kind: str) -> tuple[int, int]:
    spans = _SpanCount()
    servers = _aiohttp_servers if kind == "aiohttp" else _asgi_servers
    async with servers(spans) as ports:
        _ready(ports)
        # stdin is read in a thread so the loop stays free to serve.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    return counted_requests(), spans.spans


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0] not in KINDS:
        print(f"usage: python -m bench.http_target {{{'|'.join(KINDS)}}}", file=sys.stderr)
        return 2
    # Reporting is off: the per-request path never touches the reporter, and its periodic
    # snapshots would only add noise to whichever requests they land on.
    drainwatch.configure(enabled=False)
    requests, spans = asyncio.run(_serve(argv[0]))
    print("counted", requests, spans, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
