"""Counting ASGI HTTP requests: the shard a request counts into, and what its messages said.

``DrainwatchMiddleware`` counts each HTTP request under its method and route template
(``GET /orders/{order_id}``), the route the app's router chooses. For an app of plain
Starlette routes (FastAPI's ``APIRoute`` of the app's own routes list included) the label
is taken when the request ends, from the route the router put in the scope
(``scope["route"]``): no matching of our own. The route's shard is
kept per route and method, so a request costs a few look-ups. While it runs the request
is held in its loop's set of requests in flight (``LoopShards.calls``), and readers (the
reporter, the drain check, the exit record) label those: by the route in the scope once
the router ran, before that by matching the path as the router will (``PlainRoutes.find``).
That is few requests, at a reader's pace, rather than every request at its start. A
request that ends counts its start and its end together, so the counts never say it
ended before it started.

Other apps, a request during a drain (its start counts at once, as started during the
drain) and a request on another thread are counted when they start, under the route
matched then (``HttpShards.shard``): by the compiled plain routes, else through
``RouteTemplates``, with paths kept by method when the template depends on the path only.

Everything here runs on the thread of the event loop that serves the app, which alone
writes its shards, without a lock (see ``drainwatch._inflight``); another thread starts
its own state. Readers only read: the set of requests in flight is copied whole.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, MutableMapping
from types import CodeType
from typing import Any, Final

from drainwatch import _inflight, _runtime, _shutdown

from ._asgi_routes import PlainRoutes, RouteTemplates
from ._health_paths import method_label

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_Shard = _inflight.Shard
_Registry = _inflight.InflightRegistry

# In the scope of a request or WebSocket connection a DrainwatchMiddleware counts, so that
# a second one (added by hand inside an app that ``drainwatch run`` wraps again) passes it
# through uncounted. A key in the scope rather than a context variable: a fifth of the cost,
# and the scope is the request's own (an app that copies it copies the key).
COUNTED_SCOPE_KEY: Final = "drainwatch.counted"

_MAX_CACHED: Final = 4096
_MAX_CACHED_METHODS: Final = 64
_MAX_TRACEBACK_FRAMES: Final = 256
_thread_id: Final = threading.get_ident
new_call: Final = object.__new__


def response_complete(last: Message | None) -> bool:
    """Whether ``last``, the last message sent, completed the response."""
    if last is None:
        return False
    kind = last.get("type")
    return (
        kind == "http.response.body" and not last.get("more_body", False)
    ) or kind == "http.response.pathsend"


def guarded_template(templates: RouteTemplates, scope: Scope) -> tuple[str | None, bool]:
    """``templates.template(scope)``; a failure is counted as an internal error and the
    request is unmatched (by its path)."""
    try:
        return templates.template(scope)
    except Exception:
        _runtime.note_internal_error()
        return None, True


class HttpCall:
    """What one HTTP request's messages said: the response's start, the last message sent,
    and a client that went away.

    ``send`` is a plain function that returns the server's awaitable: a coroutine of its
    own per message would cost more than the count. It keeps the first message (the
    response's start, or the server rejects it) and the last one; the outcome is read
    from them when the app returns. The middleware makes it without ``__init__`` (no
    call): ``new_call(HttpCall)``, then sets every field.
    """

    __slots__ = ("_receive", "_send", "client_gone", "first", "last", "scope")

    _receive: Receive
    _send: Send
    client_gone: bool
    first: Message | None
    last: Message | None
    scope: Scope  # set for a request labelled when it ends, which readers label meanwhile

    async def receive(self) -> Message:
        message = await self._receive()
        # After the response, servers answer every receive() with http.disconnect.
        if message.get("type") == "http.disconnect" and not response_complete(self.last):
            self.client_gone = True
        return message

    def send(self, message: Message) -> Awaitable[None]:
        if self.first is None:
            self.first = message
        self.last = message
        return self._send(message)

    def status(self) -> int | None:
        first = self.first
        return None if first is None else first.get("status")

    def gone_by(self, error: BaseException) -> bool:
        """Whether ``error``, raised by the app, says the client went away: an
        ``http.disconnect`` was received, or it is an ``OSError`` raised by the server's
        ``send`` (ASGI 2.4)."""
        if self.client_gone:
            return True
        if not isinstance(error, OSError):
            return False
        code = _code_of(self._send)
        if code is None:
            # A send without Python code (a server written in C or Rust) leaves no frame
            # to find: an OSError while the response was going out is taken as the
            # client's departure.
            return self.first is not None and not response_complete(self.last)
        traceback = error.__traceback__
        for _ in range(_MAX_TRACEBACK_FRAMES):
            if traceback is None:
                return False
            if traceback.tb_frame.f_code is code:
                return True
            traceback = traceback.tb_next
        return False


def _code_of(function: object) -> CodeType | None:
    """The code of a function, a bound method, a ``functools.partial`` of one, or of a
    callable object's ``__call__``."""
    for _ in range(4):
        code = getattr(function, "__code__", None)
        if isinstance(code, CodeType):
            return code
        inner = getattr(function, "__func__", None) or getattr(function, "func", None)
        if inner is None:
            call_method = type(function).__dict__.get("__call__")
            code = getattr(call_method, "__code__", None)
            return code if isinstance(code, CodeType) else None
        function = inner
    return None


class LoopShards:
    """One event loop thread's shards of HTTP requests, for one registry, and its requests
    in flight that are labelled when they end (a ``PendingSource``)."""

    __slots__ = (
        "__weakref__",
        "by_label",
        "by_path",
        "by_route_id",
        "calls",
        "holder",
        "plain",
        "registry",
        "route_shards",
        "thread",
    )

    def __init__(self, registry: _Registry, thread: int) -> None:
        self.registry = registry
        self.thread = thread
        # An app of plain routes: the object whose ``routes`` they are, the routes compiled,
        # and the shards by route index, then request method (the last list item: requests
        # no route matches); the same dicts by the id of their route.
        self.holder: Any = None
        self.plain: PlainRoutes | None = None
        self.route_shards: list[dict[str, _Shard]] = []
        self.by_route_id: dict[int, dict[str, _Shard]] = {}
        # Other apps: by (method, template), and by (method, path) for paths whose template
        # depends on the path only.
        self.by_label: dict[tuple[str, str | None], _Shard] = {}
        self.by_path: dict[tuple[str, str], _Shard] = {}
        # Requests in flight that are labelled when they end.
        self.calls: set[HttpCall] = set()

    def use_routes(self, holder: Any, plain: PlainRoutes | None) -> None:
        self.holder, self.plain = holder, plain
        if plain is None:
            self.route_shards, self.by_route_id = [], {}
            return
        self.route_shards = [{} for _ in range(plain.count + 1)]
        self.by_route_id = {
            route_id: self.route_shards[index] for route_id, index in plain.index_by_id.items()
        }

    def route_shard(self, index: int, method: str) -> _Shard:
        """The shard of the plain route at ``index`` (-1: no route) for ``method``, kept
        for the next requests of that route and method."""
        plain = self.plain
        template = None if plain is None or index < 0 else plain.templates[index]
        shard = self.label_shard(method, template)
        by_method = self.route_shards[index]
        if len(by_method) < _MAX_CACHED_METHODS:
            by_method[method] = shard
        return shard

    def label_shard(self, method: str, template: str | None) -> _Shard:
        key = (method, template)
        shard = self.by_label.get(key)
        if shard is None or shard.registry is not self.registry:
            registry = self.registry
            shard = registry.loop_shard(registry.stats("http", method_label(method, template)))
            if len(self.by_label) >= _MAX_CACHED:
                self.by_label = {}
            self.by_label[key] = shard
        return shard

    # -- PendingSource: called on readers' threads ------------------------------------------

    def pending_count(self) -> int:
        return len(self.calls)

    def pending_by_stats(self, registry: _Registry) -> dict[_inflight.MethodStats, int]:
        """The requests in flight by the stats they will count into: the route the router
        chose, or before it has, the path matched as it will match it (against the routes
        as compiled when a request last ended, should the app change them meanwhile)."""
        plain = self.plain
        # Grouped by route index and method first: a label is made once per group, not
        # once per request (a drain may hold thousands of long requests).
        groups: dict[tuple[int, str], int] = {}
        for call in list(self.calls):  # a copy made whole, under the GIL
            scope = call.scope
            method = scope.get("method")
            method = method if isinstance(method, str) else ""
            index = (
                -1 if plain is None else plain.chosen(scope.get("route"), method, scope.get("path"))
            )
            key = (index, method)
            groups[key] = groups.get(key, 0) + 1
        by_stats: dict[_inflight.MethodStats, int] = {}
        for (index, method), count in groups.items():
            template = None if plain is None or index < 0 else plain.templates[index]
            stats = registry.stats("http", method_label(method, template))
            by_stats[stats] = by_stats.get(stats, 0) + count
        return by_stats

    def clear_pending(self) -> None:
        self.calls.clear()


class HttpShards:
    """Where the HTTP requests of one middleware count (see the module doc). The state of
    the loop thread that serves the app (``LoopShards``) is kept, and made afresh for
    another thread (a second loop, a test client's) and after a registry reset."""

    __slots__ = ("loop", "templates")

    def __init__(self, templates: RouteTemplates) -> None:
        self.templates = templates
        self.loop = LoopShards(_inflight.RETIRED, -1)

    def start_now(self, scope: Scope) -> _Shard:
        """Count the request of ``scope`` as started now, under the route matched now; its
        shard. Raises on a malformed scope."""
        shard = self.shard(scope)
        shard.started += 1
        if _shutdown.STATE.shutting_down:
            shard.started_during_drain += 1
        return shard

    def shard(self, scope: Scope) -> _Shard:
        """The shard to count the request of ``scope`` into, under the route matched now.
        Only requests not labelled when they end come here (another app, a drain, another
        thread, a root path), so it takes the general path. Raises on a malformed scope."""
        loop = self._current_loop(scope)
        plain = loop.plain
        if plain is None or scope.get("root_path"):
            return self._matched_shard(loop, scope)
        method: str = scope["method"]
        return loop.route_shard(plain.find(method, scope["path"]), method)

    def _current_loop(self, scope: Scope) -> LoopShards:
        """This thread's state, made afresh when it is another's or stale; the app's routes
        compiled again when they changed."""
        registry = _inflight.REGISTRY
        thread = _thread_id()
        loop = self.loop
        if loop.registry is not registry or loop.thread != thread:
            loop = LoopShards(registry, thread)
            registry.add_pending_source(loop)
        try:
            holder = self.templates.holder(scope)
            routes = getattr(holder, "routes", None)
            plain = self.templates.plain_routes(routes) if isinstance(routes, list) else None
        except Exception:
            _runtime.note_internal_error()
            holder, plain = None, None
        if plain is not loop.plain:
            loop.use_routes(holder, plain)
        self.loop = loop
        return loop

    def end_shard(self, loop: LoopShards, scope: Scope) -> _Shard:
        """The shard of a request labelled when it ends (started on ``loop``, an app of
        plain routes then), when its route's shard is not kept yet: the route the router
        put in the scope, else (none: a 404, or a middleware answered before routing) the
        one its path matches. Raises on a malformed scope."""
        method: str = scope["method"]
        plain = loop.plain
        if (
            plain is None
            or loop.registry is not _inflight.REGISTRY
            or loop.holder.routes is not plain.routes
            or len(plain.routes) != plain.count
        ):
            # Another registry (this thread's state is made afresh), or the app's routes
            # changed (compiled again).
            loop = self._current_loop(scope)
            plain = loop.plain
            if plain is None:
                return self._matched_shard(loop, scope)
        return loop.route_shard(plain.chosen(scope.get("route"), method, scope["path"]), method)

    def _matched_shard(self, loop: LoopShards, scope: Scope) -> _Shard:
        """The shard of the request's route, found through ``RouteTemplates``."""
        method: str = scope["method"]
        path: str = scope["path"]
        shard = loop.by_path.get((method, path))
        if shard is not None and shard.registry is loop.registry:
            return shard
        template, by_path = guarded_template(self.templates, scope)
        shard = loop.label_shard(method, template)
        if by_path:
            if len(loop.by_path) >= _MAX_CACHED:
                loop.by_path = {}
            loop.by_path[method, path] = shard
        return shard
