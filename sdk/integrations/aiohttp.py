"""aiohttp: requests in flight per route, how each ended, and each site's listener.

    from drainwatch.integrations import aiohttp as drainwatch_aiohttp

    app = web.Application()
    drainwatch_aiohttp.setup(app)                       # before the app starts
    runner = drainwatch_aiohttp.track_runner(web.AppRunner(app))
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", 8080).start()  # the runner tracks its sites
    ...
    await runner.cleanup()

``setup(app)`` counts the requests of every route from its handler (when the app starts,
the handlers of its routes and its sub-apps' routes are replaced by counting ones) and
records ``app.on_shutdown`` and ``app.on_cleanup`` as the shutdown steps
``aiohttp:on_shutdown`` and ``aiohttp:on_cleanup``. ``app.middlewares.append(middleware())``
counts the same requests from a middleware, and also those no route matches (404, 405,
as ``GET unmatched``), at several times the cost per request (aiohttp adds two
coroutines per request to any app with a middleware); with it, ``setup(app)`` leaves the
handlers alone and adds the shutdown steps only.

Each request is counted (protocol ``http``) under its method and route template
(``GET /orders/{id}``), and each WebSocket
upgrade (protocol ``websocket``, labelled by its route template alone) from the handshake
until the handler returns. Outcomes: ``ok`` (status < 500; an ``HTTPException`` raised
counts by its status; a WebSocket whose ``close_code`` is 1000, 1001 or 1005, noting that
for a close the server starts aiohttp reports the code the client answered with);
``error`` (the handler raised, status >= 500, other close codes); ``cancelled``, or
``aborted_at_shutdown`` once the process is shutting down (the handler was cancelled, the
client went away before its response could be sent, or a WebSocket dropped without a close
frame). A response the handler prepared itself (``StreamResponse``, ``WebSocketResponse``)
is in flight until the handler returns, i.e. until its body was written. Responses,
exceptions (the same object) and cancellation pass through untouched; bookkeeping errors
are counted, never raised. A middleware of the application runs outside the count: the
requests it answers itself are not counted. Responses on the readiness routes
(``/readyz``, ``/ready``,
``/health/ready``) and liveness routes (``/livez``, ``/live``, ``/healthz``, ``/health``,
``/ping``, ``/health/live``) tell when readiness turns off and when liveness fails during a
shutdown (see ``drainwatch.integrations._health_paths``).

Listeners: ``track_site`` reports a site's port as the listener ``http:<port>`` when its
server socket is bound, and its stop. ``track_runner`` tracks every site of a runner, and
its ``cleanup()`` records each listener as closed when the cleanup returns, that is after
in-flight requests finished or ``shutdown_timeout`` expired (as for gRPC and uvicorn,
"closed" means the server has stopped); a cancelled cleanup records nothing as closed.
A role is ``health`` for a port listed in ``DRAINWATCH_HEALTH_PORTS`` (read when the site
starts), else the ``role`` given to ``track_site``/``track_runner``/``setup``, else
``health`` when every route of the app is a health path, else ``business``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, TypeVar, cast

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from drainwatch import _inflight, _runtime, _shutdown

from ._aiohttp_count import MARK, count_routes, counted
from ._health_paths import (
    OBSERVED_PATHS,
    UNMATCHED,
    check_role,
    guarded,
    listener_name,
    listener_role,
    method_label,
)

__all__ = ["middleware", "setup", "track_runner", "track_site"]

ON_SHUTDOWN_STEP: Final = "aiohttp:on_shutdown"
ON_CLEANUP_STEP: Final = "aiohttp:on_cleanup"

SiteT = TypeVar("SiteT", bound=web.BaseSite)
RunnerT = TypeVar("RunnerT", bound=web.BaseRunner)
_Stats = _inflight.MethodStats
_Signal = Callable[[web.Application], Awaitable[None]]

_MAX_CACHED_ROUTES: Final = 4096


# -- requests -------------------------------------------------------------------------------------


class _StatsCache:
    """Per (method, resource, websocket): the stats, and the route's path if it is one whose
    responses tell readiness or liveness. No label is built after a route's first request."""

    __slots__ = ("by_route", "registry")

    def __init__(self) -> None:
        self.registry: _inflight.InflightRegistry | None = None
        self.by_route: dict[tuple[str, object, bool], tuple[_Stats, str | None]] = {}

    def lookup(
        self, registry: _inflight.InflightRegistry, request: web.Request
    ) -> tuple[_Stats, str | None]:
        if registry is not self.registry:
            self.registry = registry
            self.by_route = {}
        resource = request.match_info.route.resource
        upgrade = request.headers.get("Upgrade")
        websocket = upgrade is not None and upgrade.lower() == "websocket"
        key = (request.method, resource, websocket)
        found = self.by_route.get(key)
        if found is None:
            template = None if resource is None else resource.canonical
            if websocket:
                stats = registry.stats("websocket", template or UNMATCHED)
            else:
                stats = registry.stats("http", method_label(request.method, template))
            found = (stats, template if template in OBSERVED_PATHS else None)
            if len(self.by_route) >= _MAX_CACHED_ROUTES:
                self.by_route = {}
            self.by_route[key] = found
        return found


def middleware() -> Middleware:
    """A new-style aiohttp middleware that counts requests in flight (see the module doc).

    A factory: ``app.middlewares.append(middleware())``. Starts the reporter if needed.
    ``setup(app)`` counts the same requests at a lower cost per request, from the route
    handlers, but for the requests no route matches (404, 405), which only a middleware
    sees.
    """
    _runtime.current()
    cache = _StatsCache()

    # A plain function returning the counting coroutine: no coroutine frame of its own.
    @web.middleware
    def drainwatch_middleware(
        request: web.Request, handler: Handler
    ) -> Awaitable[web.StreamResponse]:
        try:
            registry = _inflight.REGISTRY
            stats, health_path = cache.lookup(registry, request)
            shard = registry.shard(stats)  # the loop's thread starts and finishes it
        except Exception:
            _runtime.note_internal_error()
            return handler(request)
        return counted(request, handler, shard, health_path)

    setattr(drainwatch_middleware, MARK, True)
    return drainwatch_middleware


def _is_ours(candidate: object) -> bool:
    return getattr(candidate, MARK, False) is True


# -- app setup and shutdown steps -----------------------------------------------------------------


class _AppSetup:
    """What ``setup`` left on an app: the listeners' role and the step recorders."""

    def __init__(self, role: str | None) -> None:
        self.role = role
        self.finish_shutdown = _step_recorder(ON_SHUTDOWN_STEP, finished=True)
        self.finish_cleanup = _step_recorder(ON_CLEANUP_STEP, finished=True)


_SETUP_KEY: Final = web.AppKey("drainwatch", _AppSetup)


def _step_recorder(name: str, *, finished: bool) -> _Signal:
    async def record(app: web.Application) -> None:
        if finished:
            guarded(_shutdown.STATE.step_finished, name)
        else:
            guarded(_shutdown.STATE.step_started, name)

    record.__name__ = record.__qualname__ = f"drainwatch_{'finish' if finished else 'start'}"
    return record


async def _finishers_last(app: web.Application) -> None:
    # Runs in on_startup, before aiohttp freezes the signals: handlers the application
    # appended after setup() must run before the step is recorded as finished. The router
    # is frozen by now: its routes are final, and counted from their handlers unless a
    # drainwatch middleware counts them already.
    recorded = app.get(_SETUP_KEY)
    if recorded is None:
        return
    if not any(_is_ours(candidate) for candidate in app.middlewares):
        count_routes(app)
    for signal, finisher in (
        (app.on_shutdown, recorded.finish_shutdown),
        (app.on_cleanup, recorded.finish_cleanup),
    ):
        if not signal.frozen and finisher in signal:
            signal.remove(finisher)
            signal.append(finisher)


def setup(app: web.Application, *, role: str | None = None) -> web.Application:
    """Instrument ``app``: count the requests its routes handle (its sub-apps' too), from
    the route handlers once the app starts, and record its shutdown and cleanup steps.

    Call it before the app starts (aiohttp freezes its signals then), on the top-level app
    only. ``role`` applies to the listeners of tracked sites serving this app. Calling it
    again does nothing more; a ``role`` given now applies. An app that has drainwatch's
    ``middleware()`` is counted by the middleware instead (it sees the requests no route
    matches, 404 and 405, too).
    Returns ``app``. Raises ``ValueError`` for an unknown ``role`` and
    ``RuntimeError`` for an app that has started already.
    """
    check_role(role)
    recorded = app.get(_SETUP_KEY)
    if recorded is not None:
        if role is not None:
            recorded.role = role
        return app
    if app.pre_frozen or app.middlewares.frozen:
        raise RuntimeError(
            '"app" must not have started yet: drainwatch.integrations.aiohttp.setup(app) '
            "adds startup, shutdown and cleanup hooks, which aiohttp forbids once the app is "
            "frozen; call it right after creating the Application"
        )
    _runtime.current()
    recorded = _AppSetup(role)
    app[_SETUP_KEY] = recorded
    app.on_startup.append(_finishers_last)
    app.on_shutdown.insert(0, _step_recorder(ON_SHUTDOWN_STEP, finished=False))
    app.on_shutdown.append(recorded.finish_shutdown)
    app.on_cleanup.insert(0, _step_recorder(ON_CLEANUP_STEP, finished=False))
    app.on_cleanup.append(recorded.finish_cleanup)
    return app


# -- listeners ------------------------------------------------------------------------------------

# aiohttp sites and runners use __slots__: they cannot carry a wrapper as an attribute, so
# tracking swaps the instance's class for a subclass (same layout, no new slots) that
# observes the ``_server`` slot being bound in start() and overrides stop()/cleanup().
# One subclass per (class, role): their number stays tiny.
_SERVER_SLOT: Final[Any] = web.BaseSite.__dict__.get("_server")
_SITE_CLASSES: dict[tuple[type[web.BaseSite], str | None], type[web.BaseSite]] = {}
_RUNNER_CLASSES: dict[tuple[type[web.BaseRunner], str | None], type[web.BaseRunner]] = {}
_TRACKED_ROLE: Final = "_drainwatch_role"
_TRACKED_BASE: Final = "_drainwatch_base"
# Runners whose cleanup() is running: their sites' listeners close when it returns.
_CLEANING: set[int] = set()


def _site_server(site: web.BaseSite) -> asyncio.AbstractServer | None:
    server: asyncio.AbstractServer | None = _SERVER_SLOT.__get__(site, type(site))
    return server


def _site_listeners(*sites: web.BaseSite) -> list[tuple[str, int | None]]:
    """The listener names and ports of started sites (none before start). Never raises."""
    found: dict[str, int | None] = {}
    try:
        for site in sites:
            for sock in getattr(_site_server(site), "sockets", None) or ():
                name, port = listener_name(sock.getsockname())
                found[name] = port
    except Exception:
        _runtime.note_internal_error()
    return list(found.items())


def _app_of(site: web.BaseSite) -> web.Application | None:
    app = getattr(getattr(site, "_runner", None), "app", None)
    return app if isinstance(app, web.Application) else None


def _route_paths(app: web.Application | None) -> Iterator[str]:
    if app is None:
        return
    for route in app.router.routes():
        resource = route.resource
        if resource is not None:
            yield resource.canonical


def _site_opened(site: web.BaseSite) -> None:
    app = _app_of(site)
    explicit = getattr(type(site), _TRACKED_ROLE, None)
    if explicit is None and app is not None:
        recorded = app.get(_SETUP_KEY)
        explicit = recorded.role if recorded is not None else None
    for name, port in _site_listeners(site):
        role = listener_role(port, explicit, lambda: _route_paths(app))
        _shutdown.STATE.listener_opened(name, role, port)


def _stop_started(names: list[tuple[str, int | None]]) -> None:
    for name, _ in names:
        _shutdown.STATE.listener_stop_started(name)


def _closed(names: list[tuple[str, int | None]]) -> None:
    for name, _ in names:
        _shutdown.STATE.listener_closed(name)


def _stop_failed(names: list[tuple[str, int | None]], error: BaseException) -> None:
    for name, _ in names:
        _shutdown.STATE.step_finished(name, ok=False, detail=f"{type(error).__name__}: {error}")


def _tracked_site_class(base: type[web.BaseSite], role: str | None) -> type[web.BaseSite]:
    key = (base, role)
    tracked = _SITE_CLASSES.get(key)
    if tracked is not None:
        return tracked

    def get_server(self: web.BaseSite) -> asyncio.AbstractServer | None:
        return _site_server(self)

    def set_server(self: web.BaseSite, server: asyncio.AbstractServer | None) -> None:
        _SERVER_SLOT.__set__(self, server)
        if server is not None:
            guarded(_site_opened, self)

    async def stop(self: web.BaseSite) -> None:
        names = _site_listeners(self)
        guarded(_stop_started, names)
        try:
            await base.stop(self)
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            guarded(_stop_failed, names, error)
            raise
        if id(getattr(self, "_runner", None)) not in _CLEANING:
            guarded(_closed, names)

    namespace = {
        "__slots__": (),
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        "_server": property(get_server, set_server),
        "stop": functools.wraps(base.stop)(stop),
        _TRACKED_ROLE: role,
        _TRACKED_BASE: base,
    }
    tracked = cast("type[web.BaseSite]", type(base.__name__, (base,), namespace))
    _SITE_CLASSES[key] = tracked
    return tracked


def track_site(site: SiteT, role: str | None = None) -> SiteT:
    """Report ``site``'s listener: opened when its socket is bound, then its stop.

    Works on a site before or after ``start()`` (one already started is recorded as opened
    now), in place: the same object is returned. ``stop()`` records the stop as started,
    and the listener as closed when it returns, unless the site's tracked runner is
    cleaning up (then when ``cleanup()`` returns). Tracking again only applies a ``role``
    given now. Raises ``ValueError`` for an unknown ``role``; otherwise never raises.
    """
    check_role(role)
    try:
        _runtime.current()
        current = type(site)
        base: type[web.BaseSite] = getattr(current, _TRACKED_BASE, current)
        if base is current or role is not None:
            if _SERVER_SLOT is None:  # an aiohttp without the slot: leave the site alone
                _runtime.note_internal_error()
                return site
            site.__class__ = cast("type[SiteT]", _tracked_site_class(base, role))
            if base is current and _site_server(site) is not None:
                _site_opened(site)
    except Exception:
        _runtime.note_internal_error()
    return site


def _tracked_runner_class(base: type[web.BaseRunner], role: str | None) -> type[web.BaseRunner]:
    key = (base, role)
    tracked = _RUNNER_CLASSES.get(key)
    if tracked is not None:
        return tracked

    def reg_site(self: web.BaseRunner, site: web.BaseSite) -> None:
        base._reg_site(self, site)
        track_site(site, role)

    async def cleanup(self: web.BaseRunner) -> None:
        names = _site_listeners(*self.sites)
        guarded(_stop_started, names)
        _CLEANING.add(id(self))
        try:
            await base.cleanup(self)
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            guarded(_stop_failed, names, error)
            guarded(_unfinished_steps_failed, error)
            raise
        finally:
            _CLEANING.discard(id(self))
        guarded(_closed, names)

    namespace = {
        "__slots__": (),
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        "_reg_site": reg_site,
        "cleanup": functools.wraps(base.cleanup)(cleanup),
        _TRACKED_ROLE: role,
        _TRACKED_BASE: base,
    }
    tracked = cast("type[web.BaseRunner]", type(base.__name__, (base,), namespace))
    _RUNNER_CLASSES[key] = tracked
    return tracked


def _unfinished_steps_failed(error: BaseException) -> None:
    # A failing on_shutdown/on_cleanup handler stops aiohttp's signal before our finisher.
    for name in (ON_SHUTDOWN_STEP, ON_CLEANUP_STEP):
        _shutdown.STATE.step_finished(name, ok=False, detail=f"{type(error).__name__}: {error}")


def track_runner(runner: RunnerT, role: str | None = None) -> RunnerT:
    """Track every site of ``runner``, now and started later, and its ``cleanup()``.

    ``cleanup()`` records each site's listener stop as started when it begins and as
    closed when it returns (after in-flight requests were waited for); if it raises, the
    stop is recorded as failed; if it is cancelled, nothing is recorded as closed. Returns
    ``runner`` itself. Raises ``ValueError`` for an unknown ``role``; otherwise never raises.
    """
    check_role(role)
    try:
        _runtime.current()
        current = type(runner)
        base: type[web.BaseRunner] = getattr(current, _TRACKED_BASE, current)
        if base is current or role is not None:
            runner.__class__ = cast("type[RunnerT]", _tracked_runner_class(base, role))
        for site in runner.sites:
            track_site(site, role)
    except Exception:
        _runtime.note_internal_error()
    return runner
