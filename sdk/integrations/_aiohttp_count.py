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
from bisect import bisect_left
from typing import Final

from aiohttp import hdrs, web, web_protocol
from aiohttp.typedefs import Handler
from drainwatch import _inflight, _runtime, _shutdown
from drainwatch._histogram import WAIT_BUCKETS

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
_BUCKET_BOUNDS: Final = WAIT_BUCKETS
_FIRST_BOUND: Final = WAIT_BUCKETS[0]
_OUTCOME_BASE: Final = _inflight.OUTCOME_BASE
_OK_BASE: Final = _inflight.OK_BASE
_ERROR_BASE: Final = _inflight.ERROR_BASE
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


def _returned_outcome(request: web.BaseRequest, response: web.StreamResponse) -> str:
    """The outcome of a response the handler returned."""
    if response.prepared:
        return _prepared_outcome(response)
    # A response the handler did not send itself goes out after the handler returns: with
    # the connection gone, the client never gets it.
    if _client_gone(request):
        return _inflight.aborted_or_cancelled()
    return _status_outcome(response.status)


def _fields_known() -> bool:
    """Whether this aiohttp keeps the private fields the route handlers read to tell the
    outcome of a common response without calling properties (aiohttp 3.9 to 3.14 do)."""
    try:
        response = web.Response()
        return (
            response._payload_writer is None
            and response._eof_sent is False
            and isinstance(response._status, int)
            and "_force_close" in web_protocol.RequestHandler.__slots__
        )
    except Exception:
        return False


_FIELDS_KNOWN: Final = _fields_known()


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
    try:
        shard.finish(started, _returned_outcome(request, response))
        if health_path is not None:
            observe_health_response(health_path, response.status)
    except Exception:
        _runtime.note_internal_error()
    return response


class _RouteStats:
    """The stats of one route, made by its first request of each kind (most routes serve
    no WebSocket), and again for another registry; per method for a ``*`` route."""

    __slots__ = ("by_method", "http", "method", "registry", "shard", "template", "websocket")

    def __init__(self, method: str, template: str | None) -> None:
        self.method = method
        self.template = template
        self.registry: _Registry | None = None
        self.http: _Stats | None = None
        self.websocket: _Stats | None = None
        self.by_method: dict[str, _Stats] = {}
        # The loop thread's shard of ``http``, kept while it is the registry's.
        self.shard: _Shard = _inflight.UNSET_SHARD

    def take_shard(self, request: web.BaseRequest) -> _Shard:
        """The shard to count ``request`` into; kept for the next requests when it is the
        shard of the route's plain HTTP requests."""
        registry = _inflight.REGISTRY
        stats = self.stats(registry, request)
        shard = registry.shard(stats)
        if stats is self.http:
            self.shard = shard
        return shard

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
    """``handler``, counted under its route's label (the outcomes are in the module doc of
    ``drainwatch.integrations.aiohttp``). Responses, exceptions and cancellation pass
    through untouched; bookkeeping errors are counted, never raised into the request.

    This runs on every request of every route, so the count is written out here rather
    than through ``counted``: the handler's own coroutine is awaited from this one, and
    the route keeps its shard (an app serves from one event loop, so from one thread at a
    time) instead of looking it up per request.
    """
    route = _RouteStats(method, template)
    health_path = template if template in OBSERVED_PATHS else None
    state = _shutdown.STATE
    clock = _inflight.clock
    fields_known = _FIELDS_KNOWN

    async def drainwatch_counted(request: web.Request) -> web.StreamResponse:
        try:
            shard = route.shard
            # The parser's verdict on Connection: upgrade plus an Upgrade header (a
            # WebSocket, most likely) is a field read, not a header looked up.
            if shard.registry is not _inflight.REGISTRY or request._message.upgrade:
                shard = route.take_shard(request)
            shard.started += 1
            if state.shutting_down:
                shard.started_during_drain += 1
            started = clock()
        except Exception:
            _runtime.note_internal_error()
            return await handler(request)
        try:
            response = await handler(request)
        except BaseException as exc:
            _finish_raised(request, exc, shard, started, health_path)
            raise
        try:
            elapsed = clock() - started
            # The common case, a response the handler returned for aiohttp to send on a
            # connection nothing is closing, told from aiohttp's fields where this aiohttp
            # has them (``prepared``, ``status`` and ``transport`` are properties: a call
            # each, on every request); ``_force_close`` is set by whatever closes the
            # connection (the client gone, the server shutting down), so anything else
            # takes the full check.
            if (
                fields_known
                and response._payload_writer is None
                and not response._eof_sent
                and (protocol := request._protocol) is not None
                and not protocol._force_close
            ):
                base = _ERROR_BASE if response._status >= 500 else _OK_BASE
            else:
                base = _OUTCOME_BASE[_returned_outcome(request, response)]
            # Most requests end within the first bucket: no search for them.
            if elapsed > _FIRST_BOUND:
                base += bisect_left(_BUCKET_BOUNDS, elapsed)
            shard.counts[base] += 1
            shard.total += elapsed
            if state.shutting_down:
                shard.registry.check_drained()
            if health_path is not None:
                observe_health_response(health_path, response.status)
        except Exception:
            _runtime.note_internal_error()
        return response

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
