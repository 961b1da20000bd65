"""ASGI (Starlette, FastAPI, any ASGI app): requests in flight per route, and uvicorn listeners.

    from drainwatch.integrations.asgi import DrainwatchMiddleware, track_uvicorn

    app = FastAPI()
    app.add_middleware(DrainwatchMiddleware)         # or: app = DrainwatchMiddleware(app)
    server = track_uvicorn(uvicorn.Server(uvicorn.Config(app, port=8000)))
    await server.serve()

``DrainwatchMiddleware`` is a pure ASGI middleware (it imports no framework):

- ``http``: each request is in flight from the call until the app returns, i.e. until the
  last body chunk of a streaming response was sent (and background tasks ran). It is
  counted under its method and route template (``GET /orders/{order_id}``): for an app of
  plain Starlette routes or FastAPI routes of its own (no mount, no included router), the
  route its router chose (taken when the request ends; while it runs, reports label it by
  matching its path); for other apps, the route found by matching the Starlette/FastAPI
  routes (mounts and included routers too) before the app runs. An app
  without Starlette-style routes, or a path no route matches, counts as ``GET unmatched``.
  Outcomes: ``ok`` (status < 500), ``error`` (status >= 500, no response, or the app
  raised), ``cancelled``/``aborted_at_shutdown`` (the task was cancelled, or the client
  went away before the response was complete, as far as the app could see it: an
  ``http.disconnect`` received, as Starlette's ``StreamingResponse`` and
  ``Request.is_disconnected()`` do, or an ``OSError`` from ``send`` on ASGI 2.4 servers).
  uvicorn runs a handler that reads nothing to its end after its client left; it is then
  counted by its response.
- ``websocket``: in flight from ``websocket.accept`` until the app returns, labelled by
  its route template; ``ok`` for close codes 1000, 1001 and 1005 (also when the app raised
  on the client's clean close, e.g. an uncaught ``WebSocketDisconnect``), ``error`` for
  other codes or an exception, ``cancelled``/``aborted_at_shutdown`` for cancellation or
  a dropped connection (1006). A connection refused before accept is not counted.
- ``lifespan``: ``lifespan.shutdown`` received starts the shutdown step
  ``asgi:lifespan_shutdown``; ``lifespan.shutdown.complete``/``failed`` finishes it.

Responses on the readiness paths (``/readyz``, ``/ready``, ``/health/ready``) and liveness
paths (``/livez``, ``/live``, ``/healthz``, ``/health``, ``/ping``, ``/health/live``) tell
when readiness turns off and when liveness fails during a shutdown (see
``drainwatch.integrations._health_paths``). Messages, responses, exceptions (the same
object) and cancellation pass through untouched; bookkeeping errors are counted, never
raised. Nested instances count a request once: the outermost marks the scope with the key
``"drainwatch.counted"``. How a request is labelled and counted cheaply is in
``drainwatch.integrations._asgi_count``.

``track_uvicorn(server)`` reports the ports a ``uvicorn.Server`` binds as listeners
``http:<port>`` (opened when ``startup()`` returns) and its ``shutdown()``: stop started
when it begins (uvicorn closes its sockets first), closed when it returns, after open
connections and tasks finished; a cancelled shutdown records nothing as closed.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
from bisect import bisect_left
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

from drainwatch import _inflight, _runtime, _shutdown
from drainwatch._histogram import WAIT_BUCKETS

from ._asgi_count import (
    COUNTED_SCOPE_KEY,
    HttpCall,
    HttpShards,
    LoopShards,
    guarded_template,
    new_call,
)
from ._asgi_routes import RouteTemplates, route_paths
from ._health_paths import (
    OBSERVED_PATHS,
    UNMATCHED,
    check_role,
    guarded,
    listener_name,
    listener_role,
    observe_health_response,
    websocket_outcome,
)

if TYPE_CHECKING:
    import uvicorn

__all__ = [
    "ASGIApp",
    "DrainwatchMiddleware",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "track_uvicorn",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LIFESPAN_SHUTDOWN_STEP: Final = "asgi:lifespan_shutdown"

ServerT = TypeVar("ServerT", bound="uvicorn.Server")
_Stats = _inflight.MethodStats
_Registry = _inflight.InflightRegistry

_MAX_CACHED_PATHS: Final = 4096
_OUTCOME_BASE: Final = _inflight.OUTCOME_BASE
_OK_BASE: Final = _inflight.OK_BASE
_ERROR_BASE: Final = _inflight.ERROR_BASE
_BUCKET_BOUNDS: Final = WAIT_BUCKETS
_FIRST_BOUND: Final = WAIT_BUCKETS[0]
_clock: Final = _inflight.clock
_NO_MESSAGE: Final[Message | None] = None
_thread_id: Final = threading.get_ident
_id: Final = id


class _WebSocketStats:
    """Stats of WebSocket connections per path (HTTP requests count through
    ``_asgi_count.HttpShards``), so a path seen before costs one dict lookup."""

    __slots__ = ("by_path", "registry", "templates")

    def __init__(self, templates: RouteTemplates) -> None:
        self.templates = templates
        self.registry: _Registry | None = None
        self.by_path: dict[str, _Stats] = {}

    def stats(self, registry: _Registry, scope: Scope) -> _Stats:
        if registry is not self.registry:
            self.registry = registry
            self.by_path = {}
        path: str = scope["path"]
        stats = self.by_path.get(path)
        if stats is not None:
            return stats
        template, by_path = guarded_template(self.templates, scope)
        stats = registry.stats("websocket", template or UNMATCHED)
        if by_path:
            if len(self.by_path) >= _MAX_CACHED_PATHS:
                self.by_path = {}
            self.by_path[path] = stats
        return stats


# -- per-call bookkeeping --------------------------------------------------------------------------


def _finish(shard: _inflight.Shard, started: float, outcome: str) -> None:
    try:
        shard.finish(started, outcome)
    except Exception:
        _runtime.note_internal_error()


class _WebSocketCall:
    """One WebSocket connection: counted from accept; how and by whom it was closed."""

    __slots__ = (
        "_receive",
        "_send",
        "close_code",
        "peer_closed",
        "registry",
        "shard",
        "started",
        "stats",
    )

    def __init__(self, registry: _Registry, stats: _Stats, receive: Receive, send: Send) -> None:
        self.registry = registry
        self.stats = stats
        self._receive = receive
        self._send = send
        self.shard: _inflight.Shard | None = None
        self.started: float | None = None
        self.close_code: int | None = None
        self.peer_closed = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message.get("type") == "websocket.disconnect" and self.close_code is None:
            self.close_code = message.get("code", 1005)
            self.peer_closed = True
        return message

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "websocket.accept" and self.started is None:
            try:
                self.shard = self.registry.shard(self.stats)
                self.started = self.shard.start()
            except Exception:
                _runtime.note_internal_error()
        elif kind == "websocket.close" and self.close_code is None:
            self.close_code = message.get("code", 1000)
        await self._send(message)

    def end(self, error: BaseException | None) -> None:
        if self.shard is None or self.started is None:
            return
        if isinstance(error, asyncio.CancelledError):
            outcome = _inflight.aborted_or_cancelled()
        elif error is None or self.peer_closed:
            # An app that raises on the client's clean close (an uncaught
            # WebSocketDisconnect) did not fail.
            outcome = websocket_outcome(self.close_code)
        else:
            outcome = _inflight.ERROR
        _finish(self.shard, self.started, outcome)


def _last_line(text: object) -> str | None:
    """The last line of a lifespan failure message (Starlette sends the whole traceback)."""
    if not isinstance(text, str):
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def _raised(
    shards: HttpShards,
    loop: LoopShards,
    shard: _inflight.Shard | None,
    started: float,
    call: HttpCall,
    scope: Scope,
    error: BaseException,
) -> None:
    """Count an HTTP request whose app raised ``error`` (the caller re-raises it); a
    ``shard`` of None: the request is labelled now."""
    try:
        if shard is None:
            loop.calls.discard(call)
            shard = shards.end_shard(loop, scope)
            shard.started += 1
        cancelled = isinstance(error, asyncio.CancelledError)
        if cancelled or call.gone_by(error):
            outcome = _inflight.aborted_or_cancelled()
        else:
            outcome = _inflight.ERROR
        shard.finish(started, outcome)
        if not cancelled:
            observe_health_response(scope["path"], call.status() or 500)
    except Exception:
        _runtime.note_internal_error()


# -- the middleware --------------------------------------------------------------------------------


class DrainwatchMiddleware:
    """Counts HTTP requests and WebSocket connections in flight; records lifespan shutdown.

    Wrap the outermost app (``DrainwatchMiddleware(app)``) or add it with Starlette's
    ``app.add_middleware(DrainwatchMiddleware)``; see the module doc for what is counted.
    Nested instances count a request once (the outermost counts it).
    Constructing it starts the reporter if needed. Never raises its own errors into the app.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        templates = RouteTemplates(app)
        self._websocket_stats = _WebSocketStats(templates)
        self._shards = HttpShards(templates)
        _runtime.current()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: PLR0912, PLR0915
        # HTTP, the path every request takes, is written out here: no call on the common
        # path but the app's, as a call costs about as much as the count itself (see
        # ``_asgi_count`` for how a request is labelled).
        if scope["type"] != "http" or COUNTED_SCOPE_KEY in scope:
            await self._other(scope, receive, send)
            return
        shard: _inflight.Shard | None = None
        try:
            loop = self._shards.loop
            plain = loop.plain
            if (
                plain is None
                or loop.thread != _thread_id()
                or scope.get("root_path")
                or _shutdown.STATE.shutting_down
            ):
                shard = self._shards.start_now(scope)
        except Exception:
            _runtime.note_internal_error()
            await self.app(scope, receive, send)
            return
        call: HttpCall = new_call(HttpCall)
        call._receive = receive
        call._send = send
        call.first = call.last = _NO_MESSAGE
        call.client_gone = False
        call.scope = scope
        scope[COUNTED_SCOPE_KEY] = True
        if shard is None:
            # Labelled when it ends; in flight in its loop's set meanwhile.
            loop.calls.add(call)
        started = _clock()
        try:
            await self.app(scope, call.receive, call.send)
        except BaseException as error:
            _raised(self._shards, loop, shard, started, call, scope, error)
            raise
        try:
            elapsed = _clock() - started
            if shard is None:
                loop.calls.discard(call)
                # The route Starlette's router chose, its shard kept by the route's id.
                by_method = loop.by_route_id.get(_id(scope.get("route")))
                shard = None if by_method is None else by_method.get(scope["method"])
                if shard is None or shard.registry is not _inflight.REGISTRY:
                    shard = self._shards.end_shard(loop, scope)
                # The start counts with the end: never ended before started.
                shard.started += 1
            first = call.first
            last = call.last
            status = None if first is None else first.get("status")
            if call.client_gone:
                base = _OUTCOME_BASE[_inflight.aborted_or_cancelled()]
            elif (
                status is None
                or status >= 500
                # The response's end: a message after the start (a body message, or a
                # pathsend) that does not say more body follows.
                or last is first
                or last.get("more_body", False)  # type: ignore[union-attr]  # not None: first is not
            ):
                base = _ERROR_BASE
            else:
                base = _OK_BASE
            # Most requests end within the first bucket: no search for them.
            if elapsed > _FIRST_BOUND:
                base += bisect_left(_BUCKET_BOUNDS, elapsed)
            shard.counts[base] += 1
            shard.total += elapsed
            if _shutdown.STATE.shutting_down:
                shard.registry.check_drained()
            if status is not None and scope["path"] in OBSERVED_PATHS:
                observe_health_response(scope["path"], status)
        except Exception:
            _runtime.note_internal_error()

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" and COUNTED_SCOPE_KEY not in scope:
            scope[COUNTED_SCOPE_KEY] = True
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            registry = _inflight.REGISTRY
            call = _WebSocketCall(
                registry, self._websocket_stats.stats(registry, scope), receive, send
            )
        except Exception:
            _runtime.note_internal_error()
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, call.receive, call.send)
        except BaseException as error:
            call.end(error)
            raise
        call.end(None)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        shutting_down = False

        async def receive_lifespan() -> Message:
            nonlocal shutting_down
            message = await receive()
            if message.get("type") == "lifespan.shutdown" and not shutting_down:
                shutting_down = True
                guarded(_shutdown.STATE.step_started, LIFESPAN_SHUTDOWN_STEP)
            return message

        async def send_lifespan(message: Message) -> None:
            kind = message.get("type")
            if kind == "lifespan.shutdown.complete":
                guarded(_shutdown.STATE.step_finished, LIFESPAN_SHUTDOWN_STEP)
            elif kind == "lifespan.shutdown.failed":
                guarded(
                    _shutdown.STATE.step_finished,
                    LIFESPAN_SHUTDOWN_STEP,
                    False,
                    _last_line(message.get("message")),
                )
            await send(message)

        try:
            await self.app(scope, receive_lifespan, send_lifespan)
        except Exception as error:
            if shutting_down:  # no-op when the app already reported how it ended
                detail = f"{type(error).__name__}: {error}"
                guarded(_shutdown.STATE.step_finished, LIFESPAN_SHUTDOWN_STEP, False, detail)
            raise


# -- uvicorn listeners -----------------------------------------------------------------------------

_LISTENERS_ATTRIBUTE: Final = "_drainwatch_listeners"


class _UvicornListeners:
    """The listeners of one ``uvicorn.Server``, learned when its startup returns."""

    def __init__(self, server: uvicorn.Server, role: str | None) -> None:
        self.server = server
        self.role = role
        self.names: list[tuple[str, int | None]] = []

    def opened(self) -> None:
        if not self.server.started:
            return
        found: dict[str, int | None] = {}
        for listening in getattr(self.server, "servers", None) or ():
            for sock in listening.sockets or ():
                name, port = listener_name(sock.getsockname())
                found[name] = port
        self.names = list(found.items())
        app = getattr(self.server.config, "loaded_app", None)
        for name, port in self.names:
            role = listener_role(port, self.role, lambda: route_paths(app))
            _shutdown.STATE.listener_opened(name, role, port)

    def stop_started(self) -> None:
        for name, _ in self.names:
            _shutdown.STATE.listener_stop_started(name)

    def closed(self) -> None:
        for name, _ in self.names:
            _shutdown.STATE.listener_closed(name)

    def stop_failed(self, error: BaseException) -> None:
        detail = f"{type(error).__name__}: {error}"
        for name, _ in self.names:
            _shutdown.STATE.step_finished(name, ok=False, detail=detail)


def track_uvicorn(server: ServerT, role: str | None = None) -> ServerT:
    """Report the listeners of a ``uvicorn.Server``; returns ``server``, tracked in place.

    Each bound port becomes the listener ``http:<port>`` when ``startup()`` returns; its
    role is ``health`` for a port in ``DRAINWATCH_HEALTH_PORTS`` (read then), else
    ``role``, else ``health`` when every route of the app is a health path, else
    ``business``. ``shutdown()`` records the stop as started when it begins and the
    listeners as closed when it returns (failed if it raises; nothing if cancelled).
    Tracking again only applies a ``role`` given now. Raises ``ValueError`` for an unknown
    ``role``; otherwise never raises.
    """
    check_role(role)
    try:
        _runtime.current()
        known = getattr(server, _LISTENERS_ATTRIBUTE, None)
        if isinstance(known, _UvicornListeners):
            if role is not None:
                known.role = role
            return server
        listeners = _UvicornListeners(server, role)
        setattr(server, _LISTENERS_ATTRIBUTE, listeners)
        _hook_uvicorn(server, listeners)
    except Exception:
        _runtime.note_internal_error()
    return server


def _hook_uvicorn(server: uvicorn.Server, listeners: _UvicornListeners) -> None:
    original_startup = server.startup
    original_shutdown = server.shutdown

    @functools.wraps(original_startup)
    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original_startup(sockets=sockets)
        guarded(listeners.opened)

    @functools.wraps(original_shutdown)
    async def shutdown(sockets: list[socket.socket] | None = None) -> None:
        guarded(listeners.stop_started)
        try:
            await original_shutdown(sockets=sockets)
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            guarded(listeners.stop_failed, error)
            raise
        guarded(listeners.closed)

    server.startup = startup  # type: ignore[method-assign]
    server.shutdown = shutdown  # type: ignore[method-assign]
