"""Counting one aiohttp request, and counting them from the route handlers.

``counted`` is the count of one request, shared by the middleware and the route handlers.
``count_routes`` is how ``setup(app)`` counts: when the app starts (its router frozen,
sub-apps included), each route's handler is replaced by one that counts it and calls the
original. A middleware costs more per request than its own work: with any middleware
aiohttp builds a chain for the request and adds one of its own that sets the current app,
two coroutines more per request; and a middleware has to find the route of each request
to label it, which a route's handler knows from the start. Requests that no route matches
(404, 405) reach no handler: only a middleware counts them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from drainwatch import _inflight, _runtime

from ._health_paths import (
    OBSERVED_PATHS,
    UNMATCHED,
    method_label,
    observe_health_response,
    websocket_outcome,
)

_Stats = _inflight.MethodStats
_Shard = _inflight.Shard
_Registry = _inflight.InflightRegistry
_UPGRADE: Final = hdrs.UPGRADE  # case-insensitive already: no conversion per look-up
MARK: Final = "__drainwatch__"  # set on what drainwatch made: middlewares, route handlers


def _status_outcome(status: int) -> str:
    return _inflight.ERROR if status >= 500 else _inflight.OK


def _client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _prepared_outcome(response: web.StreamResponse) -> str:
    """A response the handler sent itself: a WebSocket by its close code, else its status."""
    if isinstance(response, web.WebSocketResponse):
        return websocket_outcome(response.close_code)
    return _status_outcome(response.status)


def _finish_raised(
    request: web.BaseRequest,
    exc: BaseException,
    shard: _Shard,
    started: float,
    health_path: str | None,
) -> None:
    """Count a request whose handler raised ``exc`` (the caller re-raises it)."""
    try:
        if isinstance(exc, web.HTTPException):  # a response, raised
            status = exc.status
            outcome = _status_outcome(status)
        elif isinstance(exc, asyncio.CancelledError):
            shard.finish(started, _inflight.aborted_or_cancelled())
            return
        else:
            status = 500
            # Reading from or writing to a client that went away raises ConnectionResetError.
            gone = isinstance(exc, ConnectionError) and _client_gone(request)
            outcome = _inflight.aborted_or_cancelled() if gone else _inflight.ERROR
        shard.finish(started, outcome)
        if health_path is not None:
            observe_health_response(health_path, status)
    except Exception:
        _runtime.note_internal_error()


async def counted(
    request: web.Request, handler: Handler, shard: _Shard, health_path: str | None
) -> web.StreamResponse:
    """Run ``handler`` counted into ``shard``, the loop thread's shard of the request's
    method (the outcomes are in the module doc of ``drainwatch.integrations.aiohttp``);
    ``health_path``: a readiness or liveness path whose responses tell how health went.
    Responses, exceptions and cancellation pass through untouched."""
    try:
        started = shard.start()
    except Exception:
        _runtime.note_internal_error()
        return await handler(request)
    try:
        response = await handler(request)
    except BaseException as exc:
        _finish_raised(request, exc, shard, started, health_path)
        raise
    try:  # the common path, inlined: it runs on every request
        if response.prepared:
            outcome = _prepared_outcome(response)
        else:
            # A response the handler did not send itself goes out after the handler
            # returns: with the connection gone, the client never gets it.
            transport = request.transport
            if transport is None or transport.is_closing():
                outcome = _inflight.aborted_or_cancelled()
            else:
                outcome = _inflight.ERROR if response.status >= 500 else _inflight.OK
        shard.finish(started, outcome)
        if health_path is not None:
            observe_health_response(health_path, response.status)
    except Exception:
        _runtime.note_internal_error()
    return response


class _RouteStats:
    """The stats of one route, made by its first request of each kind (most routes serve
    no WebSocket), and again for another registry; per method for a ``*`` route."""

    __slots__ = ("by_method", "http", "method", "registry", "template", "websocket")

    def __init__(self, method: str, template: str | None) -> None:
        self.method = method
        self.template = template
        self.registry: _Registry | None = None
        self.http: _Stats | None = None
        self.websocket: _Stats | None = None
        self.by_method: dict[str, _Stats] = {}

    def stats(self, registry: _Registry, request: web.BaseRequest) -> _Stats:
        if registry is not self.registry:
            self.registry = registry
            self.http = self.websocket = None
            self.by_method = {}
        upgrade = request.headers.get(_UPGRADE)
        if upgrade is not None and upgrade.lower() == "websocket":
            if self.websocket is None:
                self.websocket = registry.stats("websocket", self.template or UNMATCHED)
            return self.websocket
        if self.method != "*":
            if self.http is None:
                self.http = registry.stats("http", method_label(self.method, self.template))
            return self.http
        method = request.method
        found = self.by_method.get(method)
        if found is None:
            found = registry.stats("http", method_label(method, self.template))
            if len(self.by_method) < _MAX_METHODS_PER_ROUTE:
                self.by_method[method] = found
        return found


_MAX_METHODS_PER_ROUTE: Final = 64


def counting_handler(handler: Handler, method: str, template: str | None) -> Handler:
    """``handler``, counted under its route's label. A plain function returning the
    counting coroutine, so the count adds no coroutine of its own. Never raises its own
    errors into the request."""
    route = _RouteStats(method, template)
    health_path = template if template in OBSERVED_PATHS else None

    def drainwatch_counted(request: web.Request) -> Awaitable[web.StreamResponse]:
        try:
            registry = _inflight.REGISTRY
            stats = route.http
            # The parser's verdict on Connection: upgrade plus an Upgrade header (a
            # WebSocket, most likely): a field read, not a header looked up per request.
            if stats is None or registry is not route.registry or request._message.upgrade:
                stats = route.stats(registry, request)
            shard = registry.shard(stats)
        except Exception:
            _runtime.note_internal_error()
            return handler(request)
        return counted(request, handler, shard, health_path)

    setattr(drainwatch_counted, MARK, True)
    drainwatch_counted.__wrapped__ = handler  # type: ignore[attr-defined]
    return drainwatch_counted


def count_routes(app: web.Application) -> None:
    """Count every request a route of ``app`` (or of its sub-apps) handles, from its
    handler. Call once the router is frozen; handlers already counted are left alone.
    Never raises."""
    try:
        _count_routes(app, depth=0)
    except Exception:
        _runtime.note_internal_error()


_MAX_SUBAPP_DEPTH: Final = 16


def _count_routes(app: web.Application, depth: int) -> None:
    for resource in app.router.resources():
        subapp = getattr(resource, "_app", None)
        if isinstance(subapp, web.Application):
            if depth < _MAX_SUBAPP_DEPTH:
                _count_routes(subapp, depth + 1)
            continue
        template = resource.canonical
        for route in resource:
            handler = route.handler
            if getattr(handler, MARK, False) is True:
                continue
            # aiohttp reads a route's handler from this attribute on every request.
            route._handler = counting_handler(handler, route.method, template)  # type: ignore[assignment]
