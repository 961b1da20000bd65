"""Counting ASGI HTTP requests: the shard a request counts into, and what its messages said.

``DrainwatchMiddleware`` counts each HTTP request from the call, before the app runs, under
its method and route template (``GET /orders/{order_id}``), found by matching the app's
routes as its router will. For an app of plain Starlette routes the match is written out
here (``HttpShards.shard``): the routes' compiled patterns are tried in order, and the
shard of the route and method is kept, so a request costs one pattern match per route
tried and a few look-ups. Other apps are matched through ``RouteTemplates``, and their
paths kept by method when the template depends on the path only.

Everything here runs on the thread of the event loop that serves the app, which alone
writes its shards, without a lock (see ``drainwatch._inflight``); another thread starts
its own state.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, MutableMapping
from types import CodeType
from typing import Any, Final

from drainwatch import _inflight, _runtime

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


class HttpCall:
    """What one HTTP request's messages said: the response's start, the last message sent,
    and a client that went away.

    ``send`` is a plain function that returns the server's awaitable: a coroutine of its
    own per message would cost more than the count. It keeps the first message (the
    response's start, or the server rejects it) and the last one; the outcome is read
    from them when the app returns. The middleware makes it without ``__init__`` (no
    call): ``new_call(HttpCall)``, then sets every field.
    """

    __slots__ = ("_receive", "_send", "client_gone", "first", "last")

    _receive: Receive
    _send: Send
    client_gone: bool
    first: Message | None
    last: Message | None

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
    """One event loop thread's shards of HTTP requests, for one registry."""

    __slots__ = ("by_label", "by_path", "holder", "plain", "registry", "route_shards", "thread")

    def __init__(self, registry: _Registry, thread: int) -> None:
        self.registry = registry
        self.thread = thread
        # An app of plain routes: the object whose ``routes`` they are, the routes compiled,
        # and the shards by route index, then request method (the last list item: requests
        # no route matches).
        self.holder: Any = None
        self.plain: PlainRoutes | None = None
        self.route_shards: list[dict[str, _Shard]] = []
        # Other apps: by (method, template), and by (method, path) for paths whose template
        # depends on the path only.
        self.by_label: dict[tuple[str, str | None], _Shard] = {}
        self.by_path: dict[tuple[str, str], _Shard] = {}

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


class HttpShards:
    """Where the HTTP requests of one middleware count (see the module doc). The state of
    the loop thread that serves the app (``LoopShards``) is kept, and made afresh for
    another thread (a second loop, a test client's) and after a registry reset."""

    __slots__ = ("loop", "templates")

    def __init__(self, templates: RouteTemplates) -> None:
        self.templates = templates
        self.loop = LoopShards(_inflight.RETIRED, -1)

    def shard(self, scope: Scope) -> _Shard:
        """The shard to count the request of ``scope`` into. Raises on a malformed scope."""
        loop = self.loop
        plain = loop.plain
        if (
            plain is None
            or loop.thread != _thread_id()
            or scope.get("root_path")
            or loop.holder.routes is not plain.routes
        ):
            return self._shard_slowly(scope)
        # PlainRoutes.find, written out: no call per request.
        method: str = scope["method"]
        path: str = scope["path"]
        found = -1
        full = False
        for index, (match, methods) in enumerate(plain.matchers):
            if match(path) is not None:
                if methods is None or method in methods:
                    found = index
                    full = True
                    break
                if found < 0:
                    found = index  # a 405, unless a later route takes the method
        # Routes are added at the end of the list: one added since the routes were compiled
        # can only change the choice for a request no compiled route took fully.
        if not full and len(plain.routes) != plain.count:
            return self._shard_slowly(scope)
        shard = loop.route_shards[found].get(method)
        if shard is None or shard.registry is not _inflight.REGISTRY:
            return self._shard_slowly(scope)
        return shard

    def _shard_slowly(self, scope: Scope) -> _Shard:
        loop = self._current_loop(scope)
        method: str = scope["method"]
        plain = loop.plain
        if plain is None or scope.get("root_path"):
            return self._matched_shard(loop, scope)
        index = plain.find(method, scope["path"])
        by_method = loop.route_shards[index]
        shard = loop.label_shard(method, None if index < 0 else plain.templates[index])
        if len(by_method) < _MAX_CACHED_METHODS:
            by_method[method] = shard
        return shard

    def _current_loop(self, scope: Scope) -> LoopShards:
        """This thread's state, made afresh when it is another's or stale; the app's routes
        compiled again when they changed."""
        registry = _inflight.REGISTRY
        thread = _thread_id()
        loop = self.loop
        if loop.registry is not registry or loop.thread != thread:
            loop = LoopShards(registry, thread)
        try:
            holder = self.templates.holder(scope)
            routes = getattr(holder, "routes", None)
            plain = self.templates.plain_routes(routes) if isinstance(routes, list) else None
        except Exception:
            _runtime.note_internal_error()
            holder, plain = None, None
        if plain is not loop.plain:
            loop.holder, loop.plain = holder, plain
            loop.route_shards = [] if plain is None else [{} for _ in range(plain.count + 1)]
        self.loop = loop
        return loop

    def _matched_shard(self, loop: LoopShards, scope: Scope) -> _Shard:
        """The shard of the request's route, found through ``RouteTemplates``."""
        method: str = scope["method"]
        path: str = scope["path"]
        shard = loop.by_path.get((method, path))
        if shard is not None and shard.registry is loop.registry:
            return shard
        try:
            template, by_path = self.templates.template(scope)
        except Exception:
            _runtime.note_internal_error()
            template, by_path = None, True
        shard = loop.label_shard(method, template)
        if by_path:
            if len(loop.by_path) >= _MAX_CACHED:
                loop.by_path = {}
            loop.by_path[method, path] = shard
        return shard
