"""Route templates of Starlette/FastAPI apps, found without importing a framework.

The ASGI middleware labels requests by route template (``GET /orders/{order_id}``) and
judges whether an app serves only health paths; both need the app's routes, reached by
duck typing down the ``.app`` chain of middlewares.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Final

Scope = MutableMapping[str, Any]

_MAX_MOUNT_DEPTH: Final = 8
_MAX_APP_CHAIN: Final = 32
# FastAPI's documentation routes do not make an app a business app.
_DOCS_URL_ATTRIBUTES: Final = (
    "openapi_url",
    "docs_url",
    "redoc_url",
    "swagger_ui_oauth2_redirect_url",
)


def routes_owner(app: object) -> object | None:
    """The first object with a ``routes`` list down the ``.app`` chain (a Starlette app or
    router behind middlewares), or None."""
    for _ in range(_MAX_APP_CHAIN):
        if app is None:
            return None
        if isinstance(getattr(app, "routes", None), list):
            return app
        app = getattr(app, "app", None)
    return None


def route_paths(app: object) -> Iterator[str]:
    """The paths an app serves (mounts as their prefix), without FastAPI's docs routes."""
    owner = routes_owner(app)
    if owner is None:
        return
    docs = {getattr(owner, name, None) for name in _DOCS_URL_ATTRIBUTES}
    for route in _candidates(getattr(owner, "routes", None) or []):
        path = getattr(route, "path", None)
        if isinstance(path, str) and path not in docs:
            yield path or "/"


def _candidates(routes: list[Any]) -> Iterator[Any]:
    """The routes to try in order. A FastAPI ``include_router`` (0.16x) is one opaque route
    that applies its prefix while matching; its effective routes carry the full path."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if not callable(contexts):
            yield route
            continue
        for context in contexts():
            # A prefixed copy of a Starlette route, or the context of an APIRoute, whose
            # ``path`` includes the prefix.
            starlette_route = getattr(context, "starlette_route", None)
            yield context if starlette_route is None else starlette_route


class PlainRoutes:
    """A routes list of plain Starlette ``Route`` objects, compiled for matching a request
    as ``Route.matches`` does (its compiled path pattern, then its methods), without
    converting the parameters or building the scopes Starlette builds for the endpoint.
    Valid while ``routes`` is the holder's list and has ``count`` routes.
    """

    __slots__ = ("count", "index_by_id", "kept", "matchers", "routes", "templates")

    def __init__(self, routes: list[Any]) -> None:
        self.routes = routes
        self.count = len(routes)
        self.matchers: list[tuple[Callable[[str], object], frozenset[str] | None]] = [
            (route.path_regex.match, frozenset(route.methods) if route.methods else None)
            for route in routes
        ]
        self.templates: list[str] = [route.path for route in routes]
        # The route objects compiled, kept alive so that no other object takes one's id:
        # a route that Starlette's router put in the scope (``scope["route"]``) is found
        # by its id. (Starlette routes define ``__eq__``, so they cannot be dict keys.)
        self.kept: tuple[Any, ...] = tuple(routes)
        # A route listed twice is the router's at its first place.
        self.index_by_id: dict[int, int] = {}
        for index, route in enumerate(routes):
            self.index_by_id.setdefault(id(route), index)

    def find(self, method: str, path: str) -> int:
        """The index of the first route whose pattern and methods take the request, else
        of the first whose pattern does (a 405), else -1: Starlette's router's choice."""
        partial = -1
        for index, (match, methods) in enumerate(self.matchers):
            if match(path) is not None:
                if methods is None or method in methods:
                    return index
                if partial < 0:
                    partial = index
        return partial

    def chosen(self, route: object, method: str, path: object) -> int:
        """The index of ``route`` (the one the router put in the scope) if it is compiled
        here, else of the route ``path`` matches as the router will match it (``find``;
        -1 for a path that is not a string)."""
        index = self.index_by_id.get(id(route), -1)
        if index < 0 and isinstance(path, str):
            index = self.find(method, path)
        return index


class RouteTemplates:
    """Finds the route template of a request by asking the routes, as Starlette's router does.

    When every route is a plain Starlette ``Route`` or FastAPI ``APIRoute`` (no mount, no
    host, no included router, no subclass that matches its own way) and the app has no
    root path, a request is matched by
    ``PlainRoutes``: a fraction of the cost, on every request whose path is new (an id in
    the path makes most paths new).
    """

    def __init__(self, app: object) -> None:
        self._owner = routes_owner(app)
        self._full: object = None
        self._partial: object = None
        self._route_type: type | None = None
        # The routes list last compiled and its length, and the result (None: not plain).
        self._plain: tuple[list[Any], int, PlainRoutes | None] | None = None
        try:
            from starlette.routing import Match, Route
        except ImportError:
            return
        self._full, self._partial = Match.FULL, Match.PARTIAL
        self._route_type = Route

    def holder(self, scope: Scope) -> object | None:
        """The object whose ``routes`` attribute is the app's routes list (a router rather
        than an app, whose ``routes`` is a property), or None."""
        owner = self._owner
        if owner is None:
            # Added with app.add_middleware(): Starlette put itself in the scope.
            owner = routes_owner(scope.get("app"))
        router: object = getattr(owner, "router", None)
        routes = getattr(owner, "routes", None)
        if router is not None and getattr(router, "routes", None) is routes:
            return router
        return owner

    def plain_routes(self, routes: list[Any]) -> PlainRoutes | None:
        """``routes`` compiled if all are plain, else None; kept while the routes list is
        the same one with as many routes."""
        known = self._plain
        if known is not None and known[0] is routes and known[1] == len(routes):
            return known[2]
        compiled: PlainRoutes | None = None
        route_type: Any = self._route_type
        if route_type is not None:
            # A subclass that matches the way Route does (it keeps ``matches``) is plain
            # too, and so is FastAPI's APIRoute in a top-level routes list: its ``matches``
            # is Route's plus the route in the scope (an included router's prefix, which it
            # also knows, applies only below an ``include_router`` route, not plain).
            # Looked up among the modules already imported: FastAPI is never imported here.
            plain_matches = {route_type.matches}
            api_route = getattr(sys.modules.get("fastapi.routing"), "APIRoute", None)
            api_matches = getattr(api_route, "matches", None)
            if isinstance(api_route, type) and issubclass(api_route, route_type) and api_matches:
                plain_matches.add(api_matches)
            if all(
                isinstance(route, route_type) and type(route).matches in plain_matches
                for route in routes
            ):
                compiled = PlainRoutes(routes)
        self._plain = (routes, len(routes), compiled)
        return compiled

    def template(self, scope: Scope) -> tuple[str | None, bool]:
        """The template (None if nothing matches) and whether it depends on the path only."""
        owner = self._owner
        if owner is None:
            # Added with app.add_middleware(): Starlette put itself in the scope.
            owner = routes_owner(scope.get("app"))
            if owner is None or self._full is None:
                return None, True
        routes = getattr(owner, "routes", None)
        if not isinstance(routes, list) or self._full is None:
            return None, True
        plain = self.plain_routes(routes)
        if plain is not None and not scope.get("root_path") and scope.get("type") == "http":
            index = plain.find(scope.get("method", "GET"), scope["path"])
            return (None if index < 0 else plain.templates[index]), True
        # A copy: matching must not leave anything in the scope the app receives.
        return self._match(routes, {**scope}, 0)

    def _match(self, routes: list[Any], scope: Scope, depth: int) -> tuple[str | None, bool]:
        partial: tuple[Any, Scope] | None = None
        for route in _candidates(routes):
            match, child = route.matches(scope)
            if match is self._full:
                return self._join(route, scope, child, depth)
            if match is self._partial and partial is None:
                partial = (route, child)
        if partial is not None:
            return self._join(partial[0], scope, partial[1], depth)
        return None, True

    def _join(self, route: Any, scope: Scope, child: Scope, depth: int) -> tuple[str | None, bool]:
        path = getattr(route, "path", None)
        prefix = path if isinstance(path, str) else ""
        by_path = not hasattr(route, "host")  # Host routes match on a header
        inner_routes = getattr(route, "routes", None)
        if not isinstance(inner_routes, list):
            return prefix, by_path  # a Route or WebSocketRoute
        if not inner_routes:
            return f"{prefix}/{{path}}", by_path  # a Mount of a routeless ASGI app
        if depth >= _MAX_MOUNT_DEPTH:
            return None, by_path
        inner, inner_by_path = self._match(inner_routes, {**scope, **child}, depth + 1)
        return (None if inner is None else prefix + inner), by_path and inner_by_path
