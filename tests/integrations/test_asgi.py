"""The ASGI integration: FastAPI, Starlette and plain ASGI apps under a real uvicorn server."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import uvicorn
from drainwatch import _inflight, _runtime, _shutdown
from drainwatch.integrations.asgi import (
    ASGIApp,
    DrainwatchMiddleware,
    Message,
    Receive,
    Scope,
    Send,
    track_uvicorn,
)
from fastapi import APIRouter, FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.applications import Starlette

from .conftest import active, outcomes, run, until

needs_websocket_server = pytest.mark.skipif(
    importlib.util.find_spec("websockets") is None and importlib.util.find_spec("wsproto") is None,
    reason="uvicorn serves WebSockets only with websockets or wsproto installed",
)


@dataclass
class Served:
    """An app served by uvicorn on an ephemeral loopback port, and a client session for it."""

    url: str
    port: int
    server: uvicorn.Server
    session: aiohttp.ClientSession


@contextlib.asynccontextmanager
async def serving(
    app: ASGIApp,
    *,
    track: bool = True,
    sock: socket.socket | None = None,
    timeout_graceful_shutdown: float | None = None,
) -> AsyncIterator[Served]:
    """Serve ``app`` with uvicorn in this loop; close the client, then stop the server."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        # Annotated int by uvicorn, used as an asyncio timeout: a fraction of a second works.
        timeout_graceful_shutdown=timeout_graceful_shutdown,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    if track:
        track_uvicorn(server)
    serve = asyncio.create_task(server.serve(sockets=None if sock is None else [sock]))
    await until(lambda: server.started or serve.done())
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            yield Served(f"http://127.0.0.1:{port}", port, server, session)
    finally:
        server.should_exit = True
        await serve


class Gate:
    """Holds a handler until the test releases it, and says when the handler got there."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def hold(self) -> None:
        self.entered.set()
        await self.release.wait()


def instrumented(app: FastAPI | Starlette) -> FastAPI | Starlette:
    app.add_middleware(DrainwatchMiddleware)
    return app


# -- requests -------------------------------------------------------------------------------------


def test_outcomes_follow_status_and_exceptions(registry: _inflight.InflightRegistry) -> None:
    """Status < 500 and HTTPExceptions below 500 are ok; 5xx and raised errors are errors."""
    app = FastAPI()

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"fine": True}

    @app.get("/unavailable")
    async def unavailable() -> JSONResponse:
        return JSONResponse({"down": True}, status_code=503)

    @app.get("/missing")
    async def missing() -> None:
        raise HTTPException(404, "no such order")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    async def scenario() -> None:
        async with serving(instrumented(app)) as served:
            seen = {}
            for path in ("/ok", "/unavailable", "/missing", "/boom"):
                async with served.session.get(served.url + path) as response:
                    seen[path] = (response.status, await response.text())
        assert seen == {
            "/ok": (200, '{"fine":true}'),
            "/unavailable": (503, '{"down":true}'),
            "/missing": (404, '{"detail":"no such order"}'),
            "/boom": (500, "Internal Server Error"),
        }

    run(scenario())
    assert outcomes(registry) == {
        ("http", "GET /ok"): {"ok": 1},
        ("http", "GET /unavailable"): {"error": 1},
        ("http", "GET /missing"): {"ok": 1},
        ("http", "GET /boom"): {"error": 1},
    }
    assert registry.active() == 0


def test_slow_handler_is_in_flight_until_it_returns(registry: _inflight.InflightRegistry) -> None:
    """A request held by its handler counts as active under its route until it returns."""
    gate = Gate()
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        await gate.hold()
        return {"order": order_id}

    async def scenario() -> None:
        async with serving(instrumented(app)) as served:
            request = asyncio.create_task(served.session.get(served.url + "/orders/7"))
            await gate.entered.wait()
            assert active(registry, "http", "GET /orders/{order_id}") == 1
            assert registry.active_by_protocol()["http"] == 1
            gate.release.set()
            async with await request as response:
                assert await response.json() == {"order": 7}
            await until(lambda: registry.active() == 0)

    run(scenario())
    assert outcomes(registry) == {("http", "GET /orders/{order_id}"): {"ok": 1}}


def test_route_templates_are_the_method_labels(registry: _inflight.InflightRegistry) -> None:
    """Requests are labelled by method and route template, through routers and mounts."""
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def order(order_id: str) -> str:
        return order_id

    items = APIRouter()

    @items.get("/items/{item_id}")
    async def item(item_id: str) -> str:
        return item_id

    app.include_router(items, prefix="/api")
    inner = FastAPI()

    @inner.get("/things/{thing}")
    async def thing(thing: str) -> str:
        return thing

    app.mount("/v2", inner)

    async def scenario() -> None:
        async with serving(instrumented(app)) as served:
            for method, path, status in [
                ("GET", "/orders/42", 200),
                ("GET", "/orders/43", 200),
                ("POST", "/orders/42", 405),
                ("GET", "/api/items/7", 200),
                ("GET", "/v2/things/3", 200),
                ("GET", "/nowhere/1", 404),
                ("PROPFIND", "/orders/42", 405),
            ]:
                async with served.session.request(method, served.url + path) as response:
                    assert response.status == status, path

    run(scenario())
    assert outcomes(registry) == {
        ("http", "GET /orders/{order_id}"): {"ok": 2},
        ("http", "POST /orders/{order_id}"): {"ok": 1},
        ("http", "GET /api/items/{item_id}"): {"ok": 1},
        ("http", "GET /v2/things/{thing}"): {"ok": 1},
        ("http", "GET unmatched"): {"ok": 1},
        ("http", "OTHER /orders/{order_id}"): {"ok": 1},
    }


def test_streaming_response_is_in_flight_until_fully_sent(
    registry: _inflight.InflightRegistry,
) -> None:
    """A StreamingResponse stays in flight until its last chunk has been sent."""
    gate = Gate()
    app = FastAPI()

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first\n"
            await gate.hold()
            yield b"last\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    async def scenario() -> None:
        async with (
            serving(instrumented(app)) as served,
            served.session.get(served.url + "/stream") as response,
        ):
            assert await response.content.readline() == b"first\n"
            await gate.entered.wait()
            assert active(registry, "http", "GET /stream") == 1
            gate.release.set()
            assert await response.read() == b"last\n"
            await until(lambda: registry.active() == 0)

    run(scenario())
    assert outcomes(registry) == {("http", "GET /stream"): {"ok": 1}}


@pytest.mark.parametrize(
    ("shutting_down", "expected"), [(False, "cancelled"), (True, "aborted_at_shutdown")]
)
def test_client_disconnect_during_slow_stream(
    registry: _inflight.InflightRegistry, shutting_down: bool, expected: str
) -> None:
    """A client leaving a slow stream is cancelled, or aborted once the process shuts down."""
    gate = Gate()
    app = FastAPI()

    @app.get("/feed")
    async def feed() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first\n"
            await gate.hold()
            yield b"never sent\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    async def scenario() -> None:
        async with serving(instrumented(app)) as served:
            response = await served.session.get(served.url + "/feed")
            assert await response.content.readline() == b"first\n"
            await gate.entered.wait()
            if shutting_down:
                _shutdown.STATE.note_signal(signal.SIGTERM)
            response.close()  # the client gives up and closes its connection
            await until(lambda: registry.active() == 0)

    run(scenario())
    assert outcomes(registry) == {("http", "GET /feed"): {expected: 1}}


def test_graceful_timeout_cancelling_a_request_aborts_it(
    registry: _inflight.InflightRegistry,
) -> None:
    """uvicorn cancelling a request at its graceful timeout counts it aborted at shutdown."""
    gate = Gate()
    app = FastAPI()

    @app.get("/slow")
    async def slow() -> str:
        await gate.hold()
        return "never"

    async def scenario() -> None:
        async with serving(instrumented(app), timeout_graceful_shutdown=0.2) as served:
            request = asyncio.create_task(served.session.get(served.url + "/slow"))
            await gate.entered.wait()
            served.server.should_exit = True
            await until(lambda: registry.active() == 0)
            with contextlib.suppress(aiohttp.ClientError):
                (await request).close()
        listener = _shutdown.STATE.record()["listeners"][f"http:{served.port}"]
        assert listener["stop_started"] < listener["closed"]

    run(scenario())
    assert outcomes(registry) == {("http", "GET /slow"): {"aborted_at_shutdown": 1}}


# -- WebSockets -----------------------------------------------------------------------------------


def chat_app() -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws/{room}")
    async def chat(websocket: WebSocket, room: str) -> None:
        await websocket.accept()
        while True:  # a client's close raises WebSocketDisconnect out of the app
            text = await websocket.receive_text()
            if text == "fail":
                raise RuntimeError("the handler failed mid-conversation")
            await websocket.send_text(f"{room}: {text}")

    @app.websocket("/private")
    async def private(websocket: WebSocket) -> None:
        await websocket.close(code=1008)  # refused before accept

    return app


class WebSocketPeer:
    """Talks ASGI WebSocket messages to an app directly, as a server would."""

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.inbound: asyncio.Queue[Message] = asyncio.Queue()
        self.outbound: asyncio.Queue[Message] = asyncio.Queue()
        scope: Scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "scheme": "ws",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:8000")],
            "subprotocols": [],
            "state": {},
        }
        self.inbound.put_nowait({"type": "websocket.connect"})
        self.task = asyncio.create_task(self._run(app, scope))

    async def _run(self, app: ASGIApp, scope: Scope) -> None:
        await app(scope, self.inbound.get, self.outbound.put)

    async def finished(self) -> BaseException | None:
        with contextlib.suppress(Exception):
            await self.task
        return self.task.exception()


def test_websocket_is_counted_from_accept_to_close(registry: _inflight.InflightRegistry) -> None:
    """WebSockets count under protocol websocket from accept; the close code decides the outcome."""

    async def scenario() -> None:
        app = DrainwatchMiddleware(chat_app())
        clean = WebSocketPeer(app, "/ws/lobby")
        assert (await clean.outbound.get())["type"] == "websocket.accept"
        assert active(registry, "websocket", "/ws/{room}") == 1
        assert registry.active_by_protocol() == {"grpc": 0, "http": 0, "websocket": 1}
        clean.inbound.put_nowait({"type": "websocket.receive", "text": "hi"})
        assert (await clean.outbound.get())["text"] == "lobby: hi"
        clean.inbound.put_nowait({"type": "websocket.disconnect", "code": 1000})
        assert type(await clean.finished()).__name__ == "WebSocketDisconnect"

        failing = WebSocketPeer(app, "/ws/kitchen")
        failing.inbound.put_nowait({"type": "websocket.receive", "text": "fail"})
        assert isinstance(await failing.finished(), RuntimeError)

        dropped = WebSocketPeer(app, "/ws/attic")
        dropped.inbound.put_nowait({"type": "websocket.disconnect", "code": 1006})
        await dropped.finished()

        refused = WebSocketPeer(app, "/private")
        assert (await refused.outbound.get()) == {
            "type": "websocket.close",
            "code": 1008,
            "reason": "",
        }
        await refused.finished()

    run(scenario())
    assert outcomes(registry) == {
        ("websocket", "/ws/{room}"): {"ok": 1, "error": 1, "cancelled": 1},
        ("websocket", "/private"): {},  # refused before accept: never in flight
    }
    assert registry.active() == 0


@needs_websocket_server
def test_websocket_through_uvicorn(registry: _inflight.InflightRegistry) -> None:
    """A real WebSocket through uvicorn is in flight while open and ok after a clean close."""

    async def scenario() -> None:
        async with serving(instrumented(chat_app())) as served:
            async with served.session.ws_connect(served.url + "/ws/lobby") as ws:
                await ws.send_str("hi")
                assert await ws.receive_str() == "lobby: hi"
                assert active(registry, "websocket", "/ws/{room}") == 1
            await until(lambda: registry.active() == 0)

    run(scenario())
    assert outcomes(registry) == {("websocket", "/ws/{room}"): {"ok": 1}}


# -- health, readiness and lifespan ---------------------------------------------------------------


def test_readiness_and_liveness_are_observed_from_responses() -> None:
    """/readyz 503 after 200 records readiness_off; /livez 500 while draining, liveness_failed."""
    state = {"ready": True, "alive": True}
    app = FastAPI()

    @app.get("/readyz")
    async def readiness() -> JSONResponse:
        return JSONResponse({}, status_code=200 if state["ready"] else 503)

    @app.get("/livez")
    async def liveness() -> JSONResponse:
        return JSONResponse({}, status_code=200 if state["alive"] else 500)

    async def get(served: Served, path: str) -> int:
        async with served.session.get(served.url + path) as response:
            return response.status

    async def scenario() -> None:
        async with serving(instrumented(app)) as served:
            assert await get(served, "/readyz") == 200
            assert _shutdown.STATE.ready is True
            state["alive"] = False
            assert await get(served, "/livez") == 500
            assert "liveness_failed" not in _shutdown.STATE.record()["steps"]
            state["ready"] = False
            assert await get(served, "/readyz") == 503
            record = _shutdown.STATE.record()
            assert (record["ready"], record["phase"]) == (False, "draining")
            assert "readiness_off" in record["steps"]
            assert await get(served, "/livez") == 500
            step = _shutdown.STATE.record()["steps"]["liveness_failed"]
            assert step["detail"] == "/livez 500"

    run(scenario())


def test_lifespan_shutdown_is_a_step() -> None:
    """The app's lifespan shutdown is the step asgi:lifespan_shutdown, with its failure."""
    ran: list[float] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        ran.append(time.time())
        await asyncio.sleep(0.02)

    @contextlib.asynccontextmanager
    async def failing_lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        raise RuntimeError("pool did not close")

    async def scenario() -> None:
        async with serving(instrumented(FastAPI(lifespan=lifespan))):
            pass
        step = _shutdown.STATE.record()["steps"]["asgi:lifespan_shutdown"]
        assert step["ok"] is True
        assert step["started"] <= ran[0] < ran[0] + 0.02 <= step["finished"]

        _shutdown.STATE.reset()
        async with serving(instrumented(Starlette(lifespan=failing_lifespan))):
            pass
        step = _shutdown.STATE.record()["steps"]["asgi:lifespan_shutdown"]
        assert step["ok"] is False
        assert step["detail"] == "RuntimeError: pool did not close"

    run(scenario())


# -- listeners ------------------------------------------------------------------------------------


def test_uvicorn_listener_opens_and_closes_after_shutdown() -> None:
    """track_uvicorn reports the bound port, and closed only after shutdown() returned."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    async def scenario() -> None:
        async with serving(instrumented(FastAPI(lifespan=lifespan))) as served:
            listener = _shutdown.STATE.record()["listeners"][f"http:{served.port}"]
            assert (listener["role"], listener["port"]) == ("business", served.port)
            assert listener["stop_started"] is None
        record = _shutdown.STATE.record()
        listener = record["listeners"][f"http:{served.port}"]
        lifespan_step = record["steps"]["asgi:lifespan_shutdown"]
        assert listener["opened"] <= listener["stop_started"] <= lifespan_step["started"]
        assert lifespan_step["finished"] <= listener["closed"]
        assert record["steps"][f"http:{served.port}"]["ok"] is True

    with pytest.raises(ValueError, match='"role" must be one of business, health or None'):
        track_uvicorn(uvicorn.Server(uvicorn.Config(FastAPI())), role="db")
    run(scenario())


def test_uvicorn_listener_role(monkeypatch: pytest.MonkeyPatch) -> None:
    """Health-only apps, DRAINWATCH_HEALTH_PORTS and an explicit role make a health listener."""

    def app_serving(*paths: str) -> FastAPI:
        app = FastAPI()
        for path in paths:
            app.add_api_route(path, lambda: "ok")
        return app

    async def role_of(app: FastAPI, sock: socket.socket | None = None) -> str:
        async with serving(app, sock=sock) as served:
            role: str = _shutdown.STATE.record()["listeners"][f"http:{served.port}"]["role"]
            return role

    async def scenario() -> None:
        assert await role_of(app_serving("/healthz", "/readyz")) == "health"
        assert await role_of(app_serving("/healthz", "/orders")) == "business"
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("DRAINWATCH_HEALTH_PORTS", str(sock.getsockname()[1]))
        assert await role_of(app_serving("/orders"), sock) == "health"
        monkeypatch.delenv("DRAINWATCH_HEALTH_PORTS")
        server = uvicorn.Server(uvicorn.Config(app_serving("/metrics"), port=0))
        assert track_uvicorn(server, role="health") is server
        assert track_uvicorn(server) is server  # tracking again changes nothing

    run(scenario())


# -- the app's behaviour is untouched -------------------------------------------------------------


@dataclass
class BehaviourApp:
    """The same app with or without drainwatch, its error, and what its handler saw."""

    app: FastAPI
    failure: RuntimeError
    seen: list[Exception]


def behaviour_app(with_drainwatch: bool) -> BehaviourApp:
    failure = RuntimeError("the handler's own error")
    seen: list[Exception] = []
    app = FastAPI()

    @app.get("/ok")
    async def ok() -> JSONResponse:
        return JSONResponse({"id": 1}, status_code=201, headers={"X-Custom": "yes"})

    @app.get("/missing")
    async def missing() -> None:
        raise HTTPException(404, "nope", headers={"X-Reason": "gone"})

    @app.get("/failing")
    async def failing() -> None:
        raise failure

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for chunk in (b"a", b"b", b"c"):
                yield chunk

        return StreamingResponse(chunks(), media_type="text/plain", headers={"X-Stream": "1"})

    async def handle(request: Request, error: Exception) -> PlainTextResponse:
        seen.append(error)
        return PlainTextResponse(f"handled: {error}", status_code=500)

    app.add_exception_handler(Exception, handle)
    if with_drainwatch:
        instrumented(app)
    return BehaviourApp(app, failure, seen)


def test_instrumentation_never_changes_behaviour(registry: _inflight.InflightRegistry) -> None:
    """Status, body and headers are as without drainwatch; errors reach Starlette as is."""

    async def responses(served_app: BehaviourApp, track: bool) -> list[tuple[Any, ...]]:
        got = []
        async with serving(served_app.app, track=track) as served:
            for path in ("/ok", "/missing", "/failing", "/stream"):
                async with served.session.get(served.url + path) as response:
                    headers = {k: v for k, v in response.headers.items() if k.lower() != "date"}
                    got.append((response.status, await response.read(), headers))
        return got

    plain_app, instrumented_app = behaviour_app(False), behaviour_app(True)
    plain = run(responses(plain_app, False))
    with_drainwatch = run(responses(instrumented_app, True))
    assert with_drainwatch == plain
    assert [response[0] for response in plain] == [201, 404, 500, 200]
    assert plain[2][1] == b"handled: the handler's own error"
    assert len(instrumented_app.seen) == 1
    assert instrumented_app.seen[0] is instrumented_app.failure
    assert outcomes(registry) == {
        ("http", "GET /ok"): {"ok": 1},
        ("http", "GET /missing"): {"ok": 1},
        ("http", "GET /failing"): {"error": 1},
        ("http", "GET /stream"): {"ok": 1},
    }


async def plain_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """An ASGI app without a framework or routes."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]
            await send({"type": f"{message['type']}.complete"})
            if kind == "shutdown":
                return
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/silent":
        return  # no response at all: the server answers 500
    status = 503 if path == "/down" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": path.encode()})


def test_plain_asgi_app(registry: _inflight.InflightRegistry) -> None:
    """An app without routes counts as unmatched, with outcomes and health as for any app."""

    async def scenario() -> None:
        async with serving(DrainwatchMiddleware(plain_asgi)) as served:
            for path, status in [
                ("/orders/1", 200),
                ("/down", 503),
                ("/boom", 500),
                ("/silent", 500),
                ("/readyz", 200),
            ]:
                async with served.session.get(served.url + path) as response:
                    assert response.status == status, path
        assert _shutdown.STATE.ready is True
        record = _shutdown.STATE.record()["listeners"][f"http:{served.port}"]
        assert record["role"] == "business"

    run(scenario())
    assert outcomes(registry) == {("http", "GET unmatched"): {"ok": 2, "error": 3}}


def test_nested_middlewares_count_a_request_once(registry: _inflight.InflightRegistry) -> None:
    """An app instrumented by hand and wrapped again (as drainwatch run does) counts once."""
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def order(order_id: str) -> str:
        return order_id

    async def scenario() -> None:
        async with (
            serving(DrainwatchMiddleware(instrumented(app))) as served,
            served.session.get(served.url + "/orders/1") as response,
        ):
            assert response.status == 200

    run(scenario())
    assert outcomes(registry) == {("http", "GET /orders/{order_id}"): {"ok": 1}}


def test_import_does_nothing_and_construction_starts_the_reporter() -> None:
    """Importing the integration imports no framework and starts nothing; the middleware does."""
    code = (
        "import sys, threading\n"
        "from drainwatch import _runtime\n"
        "from drainwatch.integrations import asgi\n"
        "assert not {'starlette', 'fastapi', 'uvicorn'} & set(sys.modules), sys.modules\n"
        "assert _runtime._reporter is None and threading.active_count() == 1\n"
        "async def app(scope, receive, send): pass\n"
        "asgi.DrainwatchMiddleware(app)\n"
        "assert _runtime._reporter is not None\n"
    )
    env = {**os.environ, "DRAINWATCH_DISABLED": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_bookkeeping_failures_never_reach_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry that fails is counted as an internal error; the request is served anyway."""

    class BrokenRegistry(_inflight.InflightRegistry):
        def stats(self, protocol: str, method: str) -> _inflight.MethodStats:
            raise OSError("bookkeeping failed")

    async def scenario() -> None:
        monkeypatch.setattr(_inflight, "REGISTRY", BrokenRegistry())
        async with (
            serving(DrainwatchMiddleware(plain_asgi)) as served,
            served.session.get(served.url + "/hello") as response,
        ):
            assert (response.status, await response.text()) == (200, "/hello")

    before = _runtime.current().internal_errors
    run(scenario())
    assert _runtime.current().internal_errors == before + 1


def test_plain_routes_match_as_starlettes_router_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """For an app of plain Starlette routes, the patterns-only match names the template
    Starlette's own matching names, 405s and misses included; other apps keep the latter."""
    from drainwatch.integrations._asgi_routes import RouteTemplates
    from starlette.routing import Mount, Route

    async def endpoint(request: Any) -> PlainTextResponse:
        return PlainTextResponse("x")

    app = Starlette(
        routes=[
            Route("/orders/{order_id:int}", endpoint, methods=["GET"]),
            Route("/orders/{order_id}", endpoint, methods=["POST"]),
            Route("/files/{path:path}", endpoint),
            Route("/health", endpoint, methods=["GET", "DELETE"]),
        ]
    )
    requests = [
        ("GET", "/orders/12"),
        ("POST", "/orders/12"),
        ("PUT", "/orders/abc"),
        ("HEAD", "/orders/7"),
        ("GET", "/files/a/b/c.txt"),
        ("DELETE", "/health"),
        ("PATCH", "/health"),
        ("GET", "/nowhere"),
    ]

    def scope(method: str, path: str) -> dict[str, Any]:
        return {"type": "http", "method": method, "path": path, "root_path": ""}

    fast = RouteTemplates(app)
    slow = RouteTemplates(app)
    monkeypatch.setattr(slow, "plain_routes", lambda routes: None)
    for method, path in requests:
        assert fast.template(scope(method, path)) == slow.template(scope(method, path)), path
    assert fast._plain is not None and fast._plain[2] is not None
    mounted = RouteTemplates(Starlette(routes=[Mount("/api", routes=app.routes)]))
    assert mounted.template(scope("GET", "/api/orders/3")) == ("/api/orders/{order_id:int}", True)
    assert mounted._plain is not None and mounted._plain[2] is None


def test_an_oserror_from_send_is_a_client_gone_and_the_apps_own_an_error(
    registry: _inflight.InflightRegistry,
) -> None:
    """ASGI 2.4: an OSError raised by the server's send means the client left; an OSError the
    app raises itself is the app's error. Both reach the caller unchanged."""

    class DisconnectedError(OSError):
        pass

    async def server_send(message: Message) -> None:
        if message["type"] == "http.response.body":
            raise DisconnectedError("client went away")

    async def server_receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/own":
            raise OSError("the app's own disk")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    middleware = DrainwatchMiddleware(app)

    async def call(path: str) -> BaseException:
        scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
        with pytest.raises(OSError) as raised:
            await middleware(scope, server_receive, server_send)
        return raised.value

    assert isinstance(run(call("/gone")), DisconnectedError)
    assert str(run(call("/own"))) == "the app's own disk"
    assert outcomes(registry) == {("http", "GET unmatched"): {"cancelled": 1, "error": 1}}


# -- apps of plain Starlette routes: labelled when a request ends -----------------------------


def held_routes_app(
    gate: Gate, hold_before_routing: Gate
) -> tuple[Starlette, DrainwatchMiddleware]:
    """A Starlette app of plain routes, wrapped as ``drainwatch run`` wraps it: a held order
    route, a failing route, and a middleware that holds some requests before routing and
    answers them itself."""
    from starlette.middleware import Middleware
    from starlette.routing import Route

    async def order(request: Request) -> PlainTextResponse:
        if request.query_params.get("hold"):
            await gate.hold()
        return PlainTextResponse(request.path_params["order_id"])

    async def fail(request: Request) -> PlainTextResponse:
        raise RuntimeError("the handler's own error")

    class AnswersBeforeRouting:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["query_string"] == b"deny":
                await hold_before_routing.hold()
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"denied"})
                return
            await self.app(scope, receive, send)

    app = Starlette(
        routes=[
            Route("/orders/{order_id}", order, methods=["GET"]),
            Route("/fail", fail),
        ],
        middleware=[Middleware(AnswersBeforeRouting)],
    )
    return app, DrainwatchMiddleware(app)


def test_plain_routes_are_in_flight_under_their_route_and_counted_by_the_routers_choice(
    registry: _inflight.InflightRegistry,
) -> None:
    """Requests to an app of plain routes are labelled by the route Starlette's router chose
    when they end, and by matching their path while they run: in the records, the totals and
    the exit figure alike. 405s, misses, errors and a middleware's own answer included."""
    gate, before_routing = Gate(), Gate()
    _, middleware = held_routes_app(gate, before_routing)

    async def scenario() -> None:
        async with serving(middleware) as served:
            async with served.session.get(served.url + "/orders/1") as response:
                assert (response.status, await response.text()) == (200, "1")
            held = asyncio.create_task(served.session.get(served.url + "/orders/7?hold=1"))
            denied = asyncio.create_task(served.session.get(served.url + "/orders/8?deny"))
            await gate.entered.wait()
            await before_routing.entered.wait()
            # Both are held in the loop's set of requests labelled when they end.
            assert len(middleware._shards.loop.calls) == 2
            assert active(registry, "http", "GET /orders/{order_id}") == 2
            assert registry.active() == 2
            assert registry.active_by_protocol()["http"] == 2
            assert registry.unfinished_by_protocol()["http"] == 2
            gate.release.set()
            before_routing.release.set()
            async with await held as response:
                assert (response.status, await response.text()) == (200, "7")
            async with await denied as response:
                assert (response.status, await response.text()) == (401, "denied")
            for method, path, status in [
                ("POST", "/orders/2", 405),
                ("GET", "/nowhere/3", 404),
                ("GET", "/fail", 500),
            ]:
                async with served.session.request(method, served.url + path) as response:
                    assert response.status == status, path
            assert registry.active() == 0

    run(scenario())
    assert outcomes(registry) == {
        ("http", "GET /orders/{order_id}"): {"ok": 3},
        ("http", "POST /orders/{order_id}"): {"ok": 1},
        ("http", "GET unmatched"): {"ok": 1},
        ("http", "GET /fail"): {"error": 1},
    }
    assert registry.active() == 0


def test_plain_routes_changed_while_serving_are_followed(
    registry: _inflight.InflightRegistry,
) -> None:
    """A route added while the app serves, and a routes list replaced, label their requests
    by the routes the router uses then."""
    from starlette.routing import Route

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x")

    app = Starlette(routes=[Route("/orders/{order_id}", endpoint)])

    async def scenario() -> None:
        async with serving(DrainwatchMiddleware(app)) as served:

            async def get(path: str) -> None:
                async with served.session.get(served.url + path) as response:
                    assert response.status == 200, path

            await get("/orders/1")
            await get("/orders/2")
            app.router.routes.append(Route("/carts/{cart_id}", endpoint))
            await get("/carts/1")
            await get("/carts/2")
            app.router.routes = [Route("/v2/orders/{order_id}", endpoint)]
            await get("/v2/orders/1")
            await get("/v2/orders/2")

    run(scenario())
    assert outcomes(registry) == {
        ("http", "GET /orders/{order_id}"): {"ok": 2},
        ("http", "GET /carts/{cart_id}"): {"ok": 2},
        ("http", "GET /v2/orders/{order_id}"): {"ok": 2},
    }


def test_plain_routes_during_a_drain_and_across_a_reset(
    registry: _inflight.InflightRegistry,
) -> None:
    """A request that started before the drain is in flight during it and its end completes
    the drain; one that starts during the drain counts as such. A reset forgets a request
    in flight; when it ends it counts its start and end together."""
    gate, before_routing = Gate(), Gate()
    _, middleware = held_routes_app(gate, before_routing)

    async def scenario() -> None:
        async with serving(middleware) as served:
            async with served.session.get(served.url + "/orders/1") as response:
                assert response.status == 200
            held = asyncio.create_task(served.session.get(served.url + "/orders/2?hold=1"))
            await gate.entered.wait()
            registry.reset()
            assert registry.active() == 0
            gate.release.set()
            async with await held as response:
                assert response.status == 200
            assert outcomes(registry) == {("http", "GET /orders/{order_id}"): {"ok": 1}}
            assert registry.active() == 0

            gate.entered.clear()
            gate.release.clear()
            held = asyncio.create_task(served.session.get(served.url + "/orders/3?hold=1"))
            await gate.entered.wait()
            _shutdown.STATE.note_signal(signal.SIGTERM, send=False)
            drain = _shutdown.STATE.steps[_shutdown.DRAIN]
            async with served.session.get(served.url + "/orders/4") as response:
                assert response.status == 200
            assert active(registry, "http", "GET /orders/{order_id}") == 1
            assert drain.finished is None
            gate.release.set()
            async with await held as response:
                assert response.status == 200
            assert drain.finished is not None

    run(scenario())
    (record,) = [r for r in registry.records() if r["method"] == "GET /orders/{order_id}"]
    assert (record["active"], record["outcomes"]["ok"], record["started_during_drain"]) == (
        0,
        3,
        1,
    )


def test_a_request_labelled_when_it_ends_counts_into_the_registry_of_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registry replaced between requests (as a test harness or a forked worker may):
    the next request labelled when it ends counts into the new one, not the old."""
    from starlette.routing import Route

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x")

    middleware = DrainwatchMiddleware(Starlette(routes=[Route("/orders/{order_id}", endpoint)]))

    async def server_receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def server_send(message: Message) -> None:
        return None

    async def get(path: str) -> None:
        scope = {
            "type": "http",
            "method": "GET",
            "path": path,
            "root_path": "",
            "query_string": b"",
            "headers": [],
        }
        await middleware(scope, server_receive, server_send)

    async def scenario() -> tuple[_inflight.InflightRegistry, _inflight.InflightRegistry]:
        original = _inflight.InflightRegistry()
        monkeypatch.setattr(_inflight, "REGISTRY", original)
        await get("/orders/1")
        await get("/orders/2")  # labelled when it ends: the loop's state is built
        replaced = _inflight.InflightRegistry()
        monkeypatch.setattr(_inflight, "REGISTRY", replaced)
        await get("/orders/3")
        await get("/orders/4")
        return original, replaced

    first, second = run(scenario())
    assert outcomes(first) == {("http", "GET /orders/{order_id}"): {"ok": 2}}
    assert outcomes(second) == {("http", "GET /orders/{order_id}"): {"ok": 2}}
    assert first.active() == second.active() == 0


def test_fastapi_routes_at_the_top_level_are_plain_and_included_routers_are_not() -> None:
    """FastAPI's APIRoute matches as Starlette's Route does when it is in the app's own
    routes list: the patterns-only match names the templates FastAPI's matching names.
    An app with an included router keeps FastAPI's own matching."""
    from drainwatch.integrations._asgi_routes import RouteTemplates

    app = FastAPI()

    @app.get("/orders/{order_id:int}")
    async def order(order_id: int) -> int:
        return order_id

    @app.post("/orders/{order_id}")
    async def replace(order_id: str) -> str:
        return order_id

    @app.api_route("/health", methods=["GET", "DELETE"])
    async def health() -> str:
        return "ok"

    def scope(method: str, path: str) -> dict[str, Any]:
        return {"type": "http", "method": method, "path": path, "root_path": ""}

    fast = RouteTemplates(app)
    slow = RouteTemplates(app)
    slow.plain_routes = lambda routes: None  # type: ignore[method-assign]
    for method, path in [
        ("GET", "/orders/12"),
        ("POST", "/orders/12"),
        ("PUT", "/orders/abc"),
        ("HEAD", "/orders/7"),
        ("DELETE", "/health"),
        ("PATCH", "/health"),
        ("GET", "/docs"),
        ("GET", "/nowhere"),
    ]:
        assert fast.template(scope(method, path)) == slow.template(scope(method, path)), path
    assert fast._plain is not None and fast._plain[2] is not None

    router = APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: str) -> str:
        return item_id

    app.include_router(router, prefix="/api")
    assert fast.template(scope("GET", "/api/items/3")) == ("/api/items/{item_id}", True)
    assert fast._plain[2] is None


def test_a_fastapi_app_is_labelled_when_a_request_ends(
    registry: _inflight.InflightRegistry,
) -> None:
    """A FastAPI app of top-level routes takes the path of plain routes: a held request
    waits in the loop's set, in flight under its route, and ends counted under it."""
    gate = Gate()
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def order(order_id: str) -> str:
        await gate.hold()
        return order_id

    middleware = DrainwatchMiddleware(app)

    async def scenario() -> None:
        async with serving(middleware) as served:
            async with served.session.get(served.url + "/docs") as response:
                assert response.status == 200
            held = asyncio.create_task(served.session.get(served.url + "/orders/7"))
            await gate.entered.wait()
            assert len(middleware._shards.loop.calls) == 1
            assert active(registry, "http", "GET /orders/{order_id}") == 1
            gate.release.set()
            async with await held as response:
                assert (response.status, await response.json()) == (200, "7")

    run(scenario())
    assert outcomes(registry) == {
        ("http", "GET /docs"): {"ok": 1},
        ("http", "GET /orders/{order_id}"): {"ok": 1},
    }
    assert registry.active() == 0
