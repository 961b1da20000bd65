"""The aiohttp integration against real aiohttp servers and clients on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from drainwatch import _inflight, _runtime, _shutdown
from drainwatch.integrations import _aiohttp_count
from drainwatch.integrations import aiohttp as drainwatch_aiohttp

from .conftest import active, outcomes, run, until

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def declared_ready() -> bool | None:
    """The declared readiness, read afresh (not narrowed by earlier assertions)."""
    return _shutdown.STATE.ready


def app_with(routes: Mapping[str, Handler], *, instrumented: bool = True) -> web.Application:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*" if path.startswith("/any") else "GET", path, handler)
    if instrumented:
        drainwatch_aiohttp.setup(app)
    return app


@dataclass
class Served:
    """An app served on an ephemeral loopback port, and a client session for it."""

    url: str
    runner: web.AppRunner
    session: aiohttp.ClientSession


@contextlib.asynccontextmanager
async def serving(
    app: web.Application, *, track: bool = True, **runner_options: Any
) -> AsyncIterator[Served]:
    """Serve ``app``; close the client, then clean the runner up, on the way out."""
    runner = web.AppRunner(app, shutdown_timeout=2.0, **runner_options)
    if track:
        drainwatch_aiohttp.track_runner(runner)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Served(f"http://127.0.0.1:{site.port}", runner, session)
    finally:
        await runner.cleanup()


class Gate:
    """Holds a handler until the test releases it, and says when the handler got there."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.request: web.Request | None = None

    async def hold(self, request: web.Request) -> None:
        self.request = request
        self.entered.set()
        await self.release.wait()


@pytest.fixture(params=[True, False], ids=["aiohttp-fields", "properties"])
def outcome_fields(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways a route handler tells a returned response's outcome: from aiohttp's own
    fields (this aiohttp has them), and through its public properties (an aiohttp that
    does not)."""
    assert _aiohttp_count._FIELDS_KNOWN, "this aiohttp lacks the fields the fast path reads"
    known: bool = request.param
    monkeypatch.setattr(_aiohttp_count, "_FIELDS_KNOWN", known)
    return known


# -- requests -------------------------------------------------------------------------------------


def test_outcomes_follow_status_and_exceptions(
    registry: _inflight.InflightRegistry, outcome_fields: bool
) -> None:
    """Status < 500 and HTTPExceptions below 500 are ok; 5xx and raised errors are errors."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down")

    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound(text="no such order")

    async def broken(request: web.Request) -> web.Response:
        raise web.HTTPInternalServerError(text="broken")

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    async def scenario() -> None:
        app = app_with(
            {"/ok": ok, "/unavailable": unavailable, "/missing": missing, "/broken": broken}
            | {"/boom": boom}
        )
        async with serving(app) as served:
            seen = {}
            for path in ("/ok", "/unavailable", "/missing", "/broken", "/boom"):
                async with served.session.get(served.url + path) as response:
                    seen[path] = (response.status, await response.text())
        assert seen == {
            "/ok": (200, "fine"),
            "/unavailable": (503, "down"),
            "/missing": (404, "no such order"),
            "/broken": (500, "broken"),
            "/boom": (500, "500 Internal Server Error\n\nServer got itself in trouble"),
        }

    run(scenario())
    assert outcomes(registry) == {
        ("http", "GET /ok"): {"ok": 1},
        ("http", "GET /unavailable"): {"error": 1},
        ("http", "GET /missing"): {"ok": 1},
        ("http", "GET /broken"): {"error": 1},
        ("http", "GET /boom"): {"error": 1},
    }
    assert registry.active() == 0


def test_counts_go_on_into_new_shards_after_a_reset(registry: _inflight.InflightRegistry) -> None:
    """A route keeps its shard between requests; a reset (as in a forked child) retires it,
    and the next request is counted afresh, not into the dropped shard."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    async def scenario() -> None:
        async with serving(app_with({"/ok": ok})) as served:
            for _ in range(3):
                async with served.session.get(served.url + "/ok") as response:
                    assert response.status == 200
            assert outcomes(registry) == {("http", "GET /ok"): {"ok": 3}}
            registry.reset()
            assert outcomes(registry) == {("http", "GET /ok"): {}}
            for _ in range(2):
                async with served.session.get(served.url + "/ok") as response:
                    assert response.status == 200

    run(scenario())
    assert outcomes(registry) == {("http", "GET /ok"): {"ok": 2}}
    assert registry.active() == 0


def test_slow_handler_is_in_flight_until_it_returns(registry: _inflight.InflightRegistry) -> None:
    """A request held by its handler counts as active under its route until it returns."""
    gate = Gate()

    async def slow(request: web.Request) -> web.Response:
        await gate.hold(request)
        return web.Response(text="done")

    async def scenario() -> None:
        async with serving(app_with({"/slow": slow})) as served:
            request = asyncio.create_task(served.session.get(served.url + "/slow"))
            await gate.entered.wait()
            assert active(registry, "http", "GET /slow") == 1
            assert registry.active_by_protocol()["http"] == 1
            gate.release.set()
            async with await request as response:
                assert await response.text() == "done"
        assert registry.active() == 0

    run(scenario())
    assert outcomes(registry) == {("http", "GET /slow"): {"ok": 1}}


@pytest.mark.parametrize("counting", ["setup", "middleware"])
def test_route_templates_are_the_method_labels(
    registry: _inflight.InflightRegistry, counting: str
) -> None:
    """Requests are labelled by method and route template (sub-apps included), never by
    path; the middleware also counts what no route matches, as ``unmatched``."""

    async def order(request: web.Request) -> web.Response:
        return web.Response(text=next(iter(request.match_info.values())))

    async def scenario() -> None:
        items = web.Application()
        items.router.add_get("/items/{item_id}", order)
        app = web.Application()
        app.router.add_get("/orders/{id}", order)
        app.router.add_post("/orders/{id}", order)
        app.add_subapp("/api", items)
        if counting == "setup":
            drainwatch_aiohttp.setup(app)
        else:
            app.middlewares.append(drainwatch_aiohttp.middleware())
        async with serving(app) as served:
            for method, path in [
                ("GET", "/orders/42"),
                ("GET", "/orders/43"),
                ("POST", "/orders/42"),
                ("PUT", "/orders/42"),
                ("GET", "/api/items/7"),
                ("GET", "/nowhere/1"),
                ("PROPFIND", "/orders/42"),
            ]:
                async with served.session.request(method, served.url + path) as response:
                    await response.read()

    run(scenario())
    matched = {
        ("http", "GET /orders/{id}"): {"ok": 2},
        ("http", "POST /orders/{id}"): {"ok": 1},
        ("http", "GET /api/items/{item_id}"): {"ok": 1},
    }
    unmatched = {
        ("http", "PUT unmatched"): {"ok": 1},  # 405
        ("http", "GET unmatched"): {"ok": 1},  # 404
        ("http", "OTHER unmatched"): {"ok": 1},  # an unknown method is not a label
    }
    assert outcomes(registry) == (matched if counting == "setup" else matched | unmatched)


def test_streaming_response_is_in_flight_until_fully_sent(
    registry: _inflight.InflightRegistry,
) -> None:
    """A response the handler streams itself stays in flight until its last chunk is sent."""
    gate = Gate()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first\n")
        await gate.hold(request)
        await response.write(b"last\n")
        await response.write_eof()
        return response

    async def scenario() -> None:
        async with (
            serving(app_with({"/stream": stream})) as served,
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


@pytest.mark.parametrize("handler_cancellation", [True, False])
@pytest.mark.parametrize(
    ("shutting_down", "expected"), [(False, "cancelled"), (True, "aborted_at_shutdown")]
)
def test_client_disconnect_during_slow_handler(
    registry: _inflight.InflightRegistry,
    outcome_fields: bool,
    handler_cancellation: bool,
    shutting_down: bool,
    expected: str,
) -> None:
    """A client leaving a slow handler is cancelled, or aborted once the process shuts down."""
    gate = Gate()
    responded = []

    async def slow(request: web.Request) -> web.Response:
        await gate.hold(request)
        responded.append(True)
        return web.Response(text="too late")

    async def scenario() -> None:
        app = app_with({"/slow": slow})
        async with serving(app, handler_cancellation=handler_cancellation) as served:
            request = asyncio.create_task(served.session.get(served.url + "/slow"))
            await gate.entered.wait()
            if shutting_down:
                _shutdown.STATE.note_signal(signal.SIGTERM)
            request.cancel()  # the client gives up and closes its connection
            with pytest.raises(asyncio.CancelledError):
                await request
            assert gate.request is not None
            held = gate.request
            await until(lambda: held.transport is None)
            gate.release.set()  # a handler that is not cancelled answers into the void
            await until(lambda: registry.active() == 0)

    run(scenario())
    assert outcomes(registry) == {("http", "GET /slow"): {expected: 1}}
    assert responded == ([] if handler_cancellation else [True])


def test_websocket_is_counted_from_handshake_to_close(
    registry: _inflight.InflightRegistry,
) -> None:
    """A WebSocket is in flight under protocol websocket; a clean close is ok, a raise an error."""
    connected = asyncio.Event()

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connected.set()
        async for message in ws:
            if message.data == "fail":
                raise RuntimeError("the handler failed mid-conversation")
            await ws.send_str(message.data)
        return ws

    async def scenario() -> None:
        async with serving(app_with({"/ws/{room}": echo})) as served:
            async with served.session.ws_connect(served.url + "/ws/lobby") as ws:
                await connected.wait()
                assert active(registry, "websocket", "/ws/{room}") == 1
                assert registry.active_by_protocol() == {"grpc": 0, "http": 0, "websocket": 1}
                await ws.send_str("hi")
                assert (await ws.receive_str()) == "hi"
            async with served.session.ws_connect(served.url + "/ws/kitchen") as ws:
                await ws.send_str("fail")
                assert (await ws.receive()).type in {
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                }
            await until(lambda: registry.active() == 0)

    run(scenario())
    assert outcomes(registry) == {("websocket", "/ws/{room}"): {"ok": 1, "error": 1}}


# -- health and readiness -------------------------------------------------------------------------


def test_readiness_503_after_ready_turns_readiness_off() -> None:
    """/readyz answering 2xx declares readiness; a 503 afterwards records readiness_off."""
    ready = {"now": False}

    async def readiness(request: web.Request) -> web.Response:
        return web.Response(status=200 if ready["now"] else 503)

    async def scenario() -> None:
        async with serving(app_with({"/readyz": readiness})) as served:
            async with served.session.get(served.url + "/readyz") as response:
                assert response.status == 503
            assert declared_ready() is None  # not ready yet is not a shutdown
            ready["now"] = True
            async with served.session.get(served.url + "/readyz") as response:
                assert response.status == 200
            assert declared_ready() is True
            ready["now"] = False
            async with served.session.get(served.url + "/readyz") as response:
                assert response.status == 503
            record = _shutdown.STATE.record()
            assert record["ready"] is False
            assert "readiness_off" in record["steps"]
            assert record["phase"] == "draining"

    run(scenario())


def test_liveness_failing_while_shutting_down_is_a_step() -> None:
    """/healthz answering 500 is recorded as liveness_failed only once shutting down."""

    async def liveness(request: web.Request) -> web.Response:
        raise RuntimeError("database pool closed")

    async def scenario() -> None:
        async with serving(app_with({"/healthz": liveness})) as served:
            async with served.session.get(served.url + "/healthz") as response:
                assert response.status == 500
            assert "liveness_failed" not in _shutdown.STATE.record()["steps"]
            _shutdown.STATE.note_signal(signal.SIGTERM)
            async with served.session.get(served.url + "/healthz") as response:
                assert response.status == 500
            step = _shutdown.STATE.record()["steps"]["liveness_failed"]
            assert step["detail"] == "/healthz 500"

    run(scenario())


# -- app shutdown steps ---------------------------------------------------------------------------


def test_setup_records_on_shutdown_and_on_cleanup_steps() -> None:
    """on_shutdown and on_cleanup are steps that include handlers appended after setup()."""
    ran: dict[str, float] = {}

    async def close_pool(app: web.Application) -> None:
        ran["on_shutdown"] = time.time()
        await asyncio.sleep(0.02)

    async def close_files(app: web.Application) -> None:
        ran["on_cleanup"] = time.time()
        await asyncio.sleep(0.02)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def scenario() -> None:
        app = app_with({"/hello": hello})
        drainwatch_aiohttp.setup(app)  # again: nothing more is added
        assert len(app.middlewares) == 0  # counted from the route handlers
        by_hand = web.Application(middlewares=[drainwatch_aiohttp.middleware()])
        assert len(drainwatch_aiohttp.setup(by_hand).middlewares) == 1
        app.on_shutdown.append(close_pool)
        app.on_cleanup.append(close_files)
        async with serving(app):
            pass
        frozen = web.Application()
        frozen.freeze()
        with pytest.raises(RuntimeError, match='"app" must not have started yet'):
            drainwatch_aiohttp.setup(frozen)

    with pytest.raises(ValueError, match='"role" must be one of business, health or None'):
        drainwatch_aiohttp.setup(web.Application(), role="db")
    run(scenario())
    steps = _shutdown.STATE.record()["steps"]
    for name, handler in (
        ("aiohttp:on_shutdown", "on_shutdown"),
        ("aiohttp:on_cleanup", "on_cleanup"),
    ):
        step = steps[name]
        assert step["ok"] is True
        assert step["started"] <= ran[handler] < ran[handler] + 0.02 <= step["finished"]
    assert steps["aiohttp:on_shutdown"]["finished"] <= steps["aiohttp:on_cleanup"]["started"]


# -- listeners ------------------------------------------------------------------------------------


def test_site_listener_opens_and_closes_with_its_site() -> None:
    """A tracked site reports its port when bound and its stop as started and closed."""

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def scenario() -> None:
        runner = web.AppRunner(app_with({"/hello": hello}))
        await runner.setup()
        site = drainwatch_aiohttp.track_site(web.TCPSite(runner, "127.0.0.1", 0))
        assert isinstance(site, web.TCPSite)
        assert _shutdown.STATE.record()["listeners"] == {}
        await site.start()
        name = f"http:{site.port}"
        listener = _shutdown.STATE.record()["listeners"][name]
        assert (listener["role"], listener["port"]) == ("business", site.port)
        assert listener["stop_started"] is None
        await site.stop()
        listener = _shutdown.STATE.record()["listeners"][name]
        assert listener["opened"] <= listener["stop_started"] <= listener["closed"]
        await runner.cleanup()

    run(scenario())


def test_runner_cleanup_closes_listeners_after_in_flight_requests(
    registry: _inflight.InflightRegistry,
) -> None:
    """runner.cleanup() records stop at once and closed only once in-flight requests ended."""
    gate = Gate()
    finished_at: list[float] = []

    async def slow(request: web.Request) -> web.Response:
        await gate.hold(request)
        finished_at.append(time.time())
        return web.Response(text="done")

    async def scenario() -> None:
        runner = web.AppRunner(app_with({"/slow": slow}), shutdown_timeout=3.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        drainwatch_aiohttp.track_runner(runner)  # after start: recorded as opened now
        name = f"http:{site.port}"
        assert name in _shutdown.STATE.record()["listeners"]
        async with aiohttp.ClientSession() as session:
            request = asyncio.create_task(session.get(f"http://127.0.0.1:{site.port}/slow"))
            await gate.entered.wait()
            cleanup = asyncio.create_task(runner.cleanup())
            await until(
                lambda: _shutdown.STATE.record()["listeners"][name]["stop_started"] is not None
            )
            await asyncio.sleep(0.05)
            assert _shutdown.STATE.record()["listeners"][name]["closed"] is None
            assert active(registry, "http", "GET /slow") == 1
            gate.release.set()
            async with await request as response:
                assert await response.text() == "done"
            await cleanup
        listener = _shutdown.STATE.record()["listeners"][name]
        assert listener["closed"] >= finished_at[0]
        assert _shutdown.STATE.record()["steps"][name]["ok"] is True

    run(scenario())
    assert outcomes(registry) == {("http", "GET /slow"): {"ok": 1}}


def test_listener_role_is_health_for_health_only_apps_and_listed_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Health-only apps, DRAINWATCH_HEALTH_PORTS and an explicit role make a health listener."""

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def scenario() -> None:
        health = web.AppRunner(app_with({"/healthz": hello, "/readyz": hello}))
        business = web.AppRunner(app_with({"/orders": hello}))
        explicit = web.AppRunner(app_with({"/metrics": hello}))
        listed = web.AppRunner(app_with({"/orders": hello}))
        for runner in (health, business, explicit, listed):
            drainwatch_aiohttp.track_runner(runner, role="health" if runner is explicit else None)
            await runner.setup()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            listed_port = sock.getsockname()[1]
            monkeypatch.setenv("DRAINWATCH_HEALTH_PORTS", f"1, {listed_port}, x")
            sites: list[web.BaseSite] = [
                web.TCPSite(runner, "127.0.0.1", 0) for runner in (health, business, explicit)
            ]
            sites.append(web.SockSite(listed, sock))
            for site in sites:
                await site.start()
            for runner in (health, business, explicit, listed):
                await runner.cleanup()
        roles = {name: item["role"] for name, item in _shutdown.STATE.record()["listeners"].items()}
        ports = [site.name.rsplit(":", 1)[1] for site in sites]
        assert roles == {
            f"http:{ports[0]}": "health",
            f"http:{ports[1]}": "business",
            f"http:{ports[2]}": "health",
            f"http:{listed_port}": "health",
        }

    run(scenario())


# -- the app's behaviour is untouched -------------------------------------------------------------


@dataclass
class BehaviourApp:
    """The same app with or without drainwatch, its errors, and what outer code saw."""

    app: web.Application
    not_found: web.HTTPNotFound
    failure: RuntimeError
    seen: list[BaseException]


def behaviour_app(instrumented: bool) -> BehaviourApp:
    seen: list[BaseException] = []
    # An HTTPException is a response too: one object per app, as aiohttp sends it once.
    not_found = web.HTTPNotFound(text="nope", headers={"X-Reason": "gone"})
    failure = RuntimeError("the handler's own error")

    @web.middleware
    async def outer(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BaseException as error:
            seen.append(error)
            raise

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"id": 1}, headers={"X-Custom": "yes"}, status=201)

    async def missing(request: web.Request) -> web.Response:
        raise not_found

    async def failing(request: web.Request) -> web.Response:
        raise failure

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"X-Stream": "1"})
        response.content_type = "text/plain"
        await response.prepare(request)
        for chunk in (b"a", b"b", b"c"):
            await response.write(chunk)
        return response

    app = web.Application(middlewares=[outer])
    for path, handler in {"/ok": ok, "/missing": missing, "/failing": failing}.items():
        app.router.add_get(path, handler)
    app.router.add_get("/stream", stream)
    if instrumented:
        drainwatch_aiohttp.setup(app)
    return BehaviourApp(app, not_found, failure, seen)


def test_instrumentation_never_changes_behaviour(registry: _inflight.InflightRegistry) -> None:
    """Status, body and headers are as without drainwatch; errors reach outer code as is."""

    async def responses(served_app: BehaviourApp, instrumented: bool) -> list[tuple[Any, ...]]:
        got = []
        async with serving(served_app.app, track=instrumented) as served:
            for path in ("/ok", "/missing", "/failing", "/stream"):
                async with served.session.get(served.url + path) as response:
                    headers = {k: v for k, v in response.headers.items() if k != "Date"}
                    got.append((response.status, await response.read(), headers))
        return got

    plain_app, instrumented_app = behaviour_app(False), behaviour_app(True)
    plain = run(responses(plain_app, False))
    instrumented = run(responses(instrumented_app, True))
    assert instrumented == plain
    assert [response[0] for response in plain] == [201, 404, 500, 200]
    assert instrumented_app.seen == [instrumented_app.not_found, instrumented_app.failure]
    assert instrumented_app.seen[0] is instrumented_app.not_found
    assert instrumented_app.seen[1] is instrumented_app.failure
    assert sum(sum(item.values()) for item in outcomes(registry).values()) == 4


def test_import_does_nothing_and_setup_starts_the_reporter() -> None:
    """Importing the integration starts nothing; setup() starts the reporter."""
    code = (
        "import threading\n"
        "from aiohttp import web\n"
        "from drainwatch import _runtime\n"
        "from drainwatch.integrations import aiohttp\n"
        "assert _runtime._reporter is None and threading.active_count() == 1\n"
        "aiohttp.setup(web.Application())\n"
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
        def shard(self, stats: _inflight.MethodStats) -> _inflight.Shard:
            raise OSError("bookkeeping failed")

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def scenario() -> None:
        monkeypatch.setattr(_inflight, "REGISTRY", BrokenRegistry())
        async with (
            serving(app_with({"/hello": hello})) as served,
            served.session.get(served.url + "/hello") as response,
        ):
            assert (response.status, await response.text()) == (200, "hello")

    before = _runtime.current().internal_errors
    run(scenario())
    assert _runtime.current().internal_errors == before + 1


def test_routes_are_counted_once_whichever_way_they_are_served(
    registry: _inflight.InflightRegistry,
) -> None:
    """Any-method routes count under the request's method, class-based views count, and an
    app that has the middleware by hand is counted by it alone after setup()."""

    class Item(web.View):
        async def get(self) -> web.Response:
            return web.Response(text="item")

    async def anything(request: web.Request) -> web.Response:
        return web.Response(text=request.method)

    async def scenario() -> None:
        app = web.Application()
        app.router.add_route("*", "/any", anything)
        app.router.add_view("/items/{id}", Item)
        drainwatch_aiohttp.setup(app)
        both = web.Application(middlewares=[drainwatch_aiohttp.middleware()])
        both.router.add_get("/twice", anything)
        drainwatch_aiohttp.setup(both)
        async with serving(app) as served:
            for method, path in [("GET", "/any"), ("DELETE", "/any"), ("GET", "/items/3")]:
                async with served.session.request(method, served.url + path) as response:
                    assert response.status == 200
        async with serving(both) as twice, twice.session.get(twice.url + "/twice") as response:
            assert await response.text() == "GET"

    run(scenario())
    assert outcomes(registry) == {
        ("http", "GET /any"): {"ok": 1},
        ("http", "DELETE /any"): {"ok": 1},
        ("http", "GET /items/{id}"): {"ok": 1},
        ("http", "GET /twice"): {"ok": 1},
    }
