"""gRPC: RPCs in flight per method, how each ended, and when each listener opened and closed.

    from drainwatch.integrations import grpc as drainwatch_grpc

    server = drainwatch_grpc.server(ThreadPoolExecutor(16))  # or aio_server() for grpc.aio
    # or, for a server built elsewhere:
    #   server = grpc.server(pool, interceptors=[drainwatch_grpc.ServerInterceptor()])
    #   drainwatch_grpc.instrument_server(server)

Every RPC of the four kinds is counted, in the sync and the ``grpc.aio`` server alike,
whatever the handler style (function, generator, coroutine, async generator,
``context.read()``/``context.write()``). An RPC ends when its handler has produced its
last response: for a unary response, when the handler returns it (grpc sends it next); for a
response-streaming handler, when its iterator is exhausted or closed, not when the
handler function returns. Outcomes: ``ok``; ``error`` (the handler raised or aborted, or
set a non-OK code); ``cancelled`` (client cancellation or deadline); ``aborted_at_shutdown``
(cut short while the process was shutting down). Handlers, their results, exceptions,
status and cancellation pass through untouched; bookkeeping errors are counted, never
raised. Known limit: a *sync* handler served by a ``grpc.aio`` server cannot see its
status code or cancellation (grpc gives it no ``code()``/``is_active()``), so it is
counted by whether it raised.

``server()`` and ``aio_server()`` count from the method handlers, instrumented once as
they are registered, so nothing runs per RPC but the count itself; an interceptor goes
through grpc's interceptor pipeline on every RPC first. ``counting_factory`` makes
``grpc.server``/``grpc.aio.server`` build servers the same way (``drainwatch run`` installs
it). ``instrument_server`` moves the count of a sync server whose last interceptor is a
``ServerInterceptor`` to its handlers the same way; ``grpc.aio`` offers no way to, so there
the interceptor keeps counting.

``instrument_server`` reports the server's listeners (opened on ``start``, stop started
and closed on ``stop``) so the agent can check that the health port closes last and that
a stop finished before the process exited. ``instrument_health_servicer`` reports
``grpc.health.v1`` status changes.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final, TypeVar

import grpc  # type: ignore[import-untyped, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, unused-ignore]
from drainwatch import _runtime, _shutdown

from ._grpc_handlers import HandlerCache
from ._grpc_registration import RegistrationCounter, adopt_interceptor
from ._health_paths import HEALTH_PORTS_ENV, health_ports

__all__ = [
    "HEALTH_PORTS_ENV",
    "AioServerInterceptor",
    "ServerInterceptor",
    "aio_server",
    "counting_factory",
    "instrument_health_servicer",
    "instrument_server",
    "server",
]

logger = logging.getLogger("drainwatch")

HEALTH_SERVICE: Final = "grpc.health.v1.Health"
_LISTENERS_ATTRIBUTE: Final = "_drainwatch_listeners"
_HEALTH_ATTRIBUTE: Final = "_drainwatch_health"

ServerT = TypeVar("ServerT")
ServicerT = TypeVar("ServicerT")
T = TypeVar("T")


class ServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """For ``grpc.server(..., interceptors=[ServerInterceptor()])``: counts every RPC.

    Thread-safe. The count is closed in grpc's termination callback, after the response
    went out. As the last interceptor of a server passed to ``instrument_server`` it hands
    the count over to the server's handlers, which spares every RPC a trip through grpc's
    interceptor pipeline (``python -m bench`` measures that way of counting, as
    ``server()`` does it). Constructing it starts drainwatch's reporter.
    """

    def __init__(self) -> None:
        self._handlers = HandlerCache(aio=False)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        return self._handlers.instrumented(handler, handler_call_details.method)


class AioServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """For ``grpc.aio.server(interceptors=[AioServerInterceptor()])``: counts every RPC.

    Handles coroutine, async-generator and ``context.read()``/``write()`` handlers, and
    the sync handlers an aio server runs in its thread pool. ``aio_server()`` counts the
    same RPCs from the handlers, without an interceptor, at a lower cost per RPC.
    """

    def __init__(self) -> None:
        self._handlers = HandlerCache(aio=True)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        return self._handlers.instrumented(handler, handler_call_details.method)


# -- listeners ------------------------------------------------------------------------------------


class _Listeners:
    """What ``instrument_server`` learned about one server: its ports and services."""

    def __init__(self, role: str | None, name_prefix: str, health_ports: frozenset[int]) -> None:
        self.role = role
        self.name_prefix = name_prefix
        self.health_ports = health_ports
        self.ports: list[int] = []
        self.services: set[str] = set()
        self.unnamed_services = False
        self.watching_stop = False
        self.started = False

    def names(self) -> list[str]:
        # A server stopped before it started had no listener: its stop is no shutdown step.
        return [f"{self.name_prefix}:{port}" for port in self.ports] if self.started else []

    def role_of(self, port: int) -> str:
        if port in self.health_ports:
            return _shutdown.HEALTH
        if self.role is not None:
            return self.role
        if self.services == {HEALTH_SERVICE} and not self.unnamed_services:
            return _shutdown.HEALTH
        return _shutdown.BUSINESS

    def note_handlers(self, generic_handlers: object) -> None:
        if not isinstance(generic_handlers, Collection):
            self.unnamed_services = True  # an iterator: looking would consume it
            return
        for generic_handler in generic_handlers:
            service_name = getattr(generic_handler, "service_name", None)
            name = service_name() if callable(service_name) else None
            if isinstance(name, str):
                self.services.add(name)
            else:
                self.unnamed_services = True

    def opened(self) -> None:
        self.started = True
        for port in self.ports:
            _shutdown.STATE.listener_opened(f"{self.name_prefix}:{port}", self.role_of(port), port)

    def stop_started(self, grace: float | None) -> None:
        for name in self.names():
            _shutdown.STATE.listener_stop_started(name, detail=f"grace={grace}")

    def closed(self) -> None:
        for name in self.names():
            _shutdown.STATE.listener_closed(name)

    def stop_failed(self, error: BaseException) -> None:
        for name in self.names():
            _shutdown.STATE.step_finished(name, ok=False, detail=f"{type(error).__name__}: {error}")


def _guarded(action: Callable[[], None]) -> None:
    try:
        action()
    except Exception:
        _runtime.note_internal_error()


def instrument_server(
    server: ServerT, *, role: str | None = None, name_prefix: str = "grpc"
) -> ServerT:
    """Report ``server``'s listeners; returns ``server`` itself, instrumented in place.

    Works for ``grpc.Server`` and ``grpc.aio.Server``. Each bound port becomes a listener
    named ``f"{name_prefix}:{port}"``, opened when ``start()`` returns. Its role is
    ``"health"`` if the port is listed in ``DRAINWATCH_HEALTH_PORTS`` (read now), else
    ``role`` if given, else ``"health"`` when the only service registered is
    ``grpc.health.v1.Health``, else ``"business"``. ``stop(grace)`` records the stop as
    started at once and the listener as closed when the stop completes (when the sync
    server's returned event is set, or when the aio coroutine finishes; a cancelled aio
    stop records nothing as closed). Instrumenting again only applies a ``role`` given
    now (e.g. to a server that ``drainwatch run`` instrumented already). If the last
    interceptor of a sync server is a ``ServerInterceptor``, it leaves the pipeline and
    the server's handlers, those it has and those registered later, count instead: the
    same RPCs, at a lower cost per RPC. Raises ``TypeError`` for anything but a grpc
    server and ``ValueError`` for a ``role`` other than ``"business"`` or ``"health"``.
    """
    if not isinstance(server, grpc.Server | grpc.aio.Server):
        raise TypeError(
            "instrument_server() takes a grpc.Server or grpc.aio.Server (from grpc.server() "
            f"or grpc.aio.server()), not {type(server).__name__}"
        )
    _check_role(role)
    known = getattr(server, _LISTENERS_ATTRIBUTE, None)
    if isinstance(known, _Listeners):
        if role is not None:
            known.role = role
        return server
    # A grpc.aio server keeps its interceptors out of reach: its interceptor stays.
    aio = isinstance(server, grpc.aio.Server)
    counter = None if aio else adopt_interceptor(server, ServerInterceptor)
    return _instrument(server, role, name_prefix, counter)


def _check_role(role: str | None) -> None:
    if role is not None and role not in _shutdown.ROLES:
        raise ValueError(f'"role" must be one of {", ".join(_shutdown.ROLES)} or None: {role!r}')


def _instrument(
    server: ServerT, role: str | None, name_prefix: str, counter: RegistrationCounter | None
) -> ServerT:
    """Hook ``server``'s registration and lifecycle; ``counter`` (if any) instruments the
    handlers registered from now on."""
    listeners = _Listeners(role, name_prefix, health_ports())
    setattr(server, _LISTENERS_ATTRIBUTE, listeners)
    _hook_registration(server, listeners, counter)
    if isinstance(server, grpc.aio.Server):
        _hook_aio_lifecycle(server, listeners)
    else:
        _hook_sync_lifecycle(server, listeners)
    return server


def _counted(count: Callable[[], T], fallback: T) -> T:
    try:
        return count()
    except Exception:
        _runtime.note_internal_error()
        return fallback


def _hook_registration(
    server: Any, listeners: _Listeners, counter: RegistrationCounter | None
) -> None:
    add_insecure_port = server.add_insecure_port
    add_secure_port = server.add_secure_port
    add_generic_rpc_handlers = server.add_generic_rpc_handlers
    add_registered_method_handlers = getattr(server, "add_registered_method_handlers", None)

    @functools.wraps(add_insecure_port)
    def insecure_port(address: str) -> int:
        port: int = add_insecure_port(address)
        listeners.ports.append(port)
        return port

    @functools.wraps(add_secure_port)
    def secure_port(address: str, server_credentials: Any) -> int:
        port: int = add_secure_port(address, server_credentials)
        listeners.ports.append(port)
        return port

    @functools.wraps(add_generic_rpc_handlers)
    def generic_handlers(generic_rpc_handlers: Any) -> None:
        if counter is None:
            _guarded(lambda: listeners.note_handlers(generic_rpc_handlers))
            add_generic_rpc_handlers(generic_rpc_handlers)
            return
        given = list(generic_rpc_handlers)  # grpc takes any iterable, and so looks at it once
        _guarded(lambda: listeners.note_handlers(given))
        add_generic_rpc_handlers(_counted(lambda: counter.generic(given), given))

    server.add_insecure_port = insecure_port
    server.add_secure_port = secure_port
    server.add_generic_rpc_handlers = generic_handlers
    if add_registered_method_handlers is not None:

        @functools.wraps(add_registered_method_handlers)
        def registered_handlers(service_name: str, method_handlers: Any) -> None:
            if counter is not None:
                given = method_handlers
                method_handlers = _counted(lambda: counter.registered(given, service_name), given)
            add_registered_method_handlers(service_name, method_handlers)
            listeners.services.add(service_name)

        server.add_registered_method_handlers = registered_handlers


def _hook_sync_lifecycle(server: Any, listeners: _Listeners) -> None:
    original_start = server.start
    original_stop = server.stop

    @functools.wraps(original_start)
    def start() -> None:
        original_start()
        _guarded(listeners.opened)

    @functools.wraps(original_stop)
    def stop(grace: float | None) -> threading.Event:
        _guarded(lambda: listeners.stop_started(grace))
        stopped: threading.Event = original_stop(grace)
        _guarded(lambda: _watch_stop(stopped, listeners))
        return stopped

    server.start = start
    server.stop = stop


def _watch_stop(stopped: threading.Event, listeners: _Listeners) -> None:
    if stopped.is_set():
        listeners.closed()
        return
    if listeners.watching_stop:
        return  # every stop() event is set at the same moment: one watcher is enough
    listeners.watching_stop = True

    def wait_then_record() -> None:
        stopped.wait()
        _guarded(listeners.closed)

    threading.Thread(target=wait_then_record, name="drainwatch-grpc-stop", daemon=True).start()


def _hook_aio_lifecycle(server: Any, listeners: _Listeners) -> None:
    original_start = server.start
    original_stop = server.stop

    @functools.wraps(original_start)
    async def start() -> None:
        await original_start()
        _guarded(listeners.opened)

    async def stopping(grace: float | None) -> None:
        try:
            await original_stop(grace)
        except asyncio.CancelledError:
            raise  # never finished: the listener is not known to be closed
        except BaseException as error:
            failed = error
            _guarded(lambda: listeners.stop_failed(failed))
            raise
        _guarded(listeners.closed)

    # A plain function returning the coroutine, so the stop counts as started when it is
    # called: ``create_task(server.stop(5))`` that never gets to run is still seen.
    @functools.wraps(original_stop)
    def stop(grace: float | None) -> Awaitable[None]:
        _guarded(lambda: listeners.stop_started(grace))
        return stopping(grace)

    mark = getattr(inspect, "markcoroutinefunction", None)  # Python 3.12+
    server.start = start
    server.stop = mark(stop) if mark is not None else stop


# -- constructors ---------------------------------------------------------------------------------


def server(
    thread_pool: Any,
    handlers: Any = None,
    interceptors: Any = None,
    options: Any = None,
    maximum_concurrent_rpcs: int | None = None,
    compression: Any = None,
    xds: bool = False,
    *,
    role: str | None = None,
    name_prefix: str = "grpc",
) -> Any:
    """``grpc.server(...)`` that counts every RPC, passed to ``instrument_server``.

    Without ``interceptors``, the handlers are instrumented as they are registered and no
    interceptor runs per RPC. With some, a ``ServerInterceptor`` goes first, so that the
    RPCs they turn away are counted too.
    """
    _check_role(role)
    counter, handlers, interceptors = _counting_arguments(False, handlers, interceptors)
    created = grpc.server(
        thread_pool,
        handlers=handlers,
        interceptors=interceptors,
        options=options,
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
        compression=compression,
        xds=xds,
    )
    return _instrument_built(created, role, name_prefix, counter)


def aio_server(
    migration_thread_pool: Any = None,
    handlers: Any = None,
    interceptors: Any = None,
    options: Any = None,
    maximum_concurrent_rpcs: int | None = None,
    compression: Any = None,
    *,
    role: str | None = None,
    name_prefix: str = "grpc",
) -> Any:
    """``grpc.aio.server(...)`` that counts every RPC, as ``server()`` does (with an
    ``AioServerInterceptor`` first only if ``interceptors`` are given), then instrumented."""
    _check_role(role)
    counter, handlers, interceptors = _counting_arguments(True, handlers, interceptors)
    created = grpc.aio.server(
        migration_thread_pool,
        handlers=handlers,
        interceptors=interceptors,
        options=options,
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
        compression=compression,
    )
    return _instrument_built(created, role, name_prefix, counter)


def counting_factory(factory: Callable[..., T], *, aio: bool) -> Callable[..., T]:
    """``factory`` (``grpc.server`` or ``grpc.aio.server``, same signature) made to build
    servers that count every RPC as ``server()``/``aio_server()`` do, and that report their
    listeners. What ``drainwatch run`` installs. The servers are the factory's own; if
    drainwatch cannot take part, the factory's arguments reach it untouched."""

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> T:
        try:
            counter, counted_args, counted_kwargs = _counting_call(aio, args, kwargs)
        except Exception:
            _runtime.note_internal_error()
            return factory(*args, **kwargs)
        created = factory(*counted_args, **counted_kwargs)
        try:
            return _instrument_built(created, None, "grpc", counter)  # type: ignore[no-any-return]
        except Exception:
            _runtime.note_internal_error()
            return created

    return build


# ``handlers`` and ``interceptors``: the second and third parameters of both factories.
_HANDLERS_POSITION: Final = 1
_INTERCEPTORS_POSITION: Final = 2


def _counting_call(
    aio: bool, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[RegistrationCounter | None, tuple[Any, ...], dict[str, Any]]:
    """A factory call's arguments rewritten by ``_counting_arguments``."""
    positional = list(args)
    kwargs = dict(kwargs)

    def take(position: int, name: str) -> Any:
        return positional[position] if len(positional) > position else kwargs.pop(name, None)

    def put(position: int, name: str, value: Any) -> None:
        if len(positional) > position:
            positional[position] = value
        elif value is not None:
            kwargs[name] = value

    handlers = take(_HANDLERS_POSITION, "handlers")
    interceptors = take(_INTERCEPTORS_POSITION, "interceptors")
    counter, handlers, interceptors = _counting_arguments(aio, handlers, interceptors)
    put(_HANDLERS_POSITION, "handlers", handlers)
    put(_INTERCEPTORS_POSITION, "interceptors", interceptors)
    return counter, tuple(positional), kwargs


def _counting_arguments(
    aio: bool, handlers: Any, interceptors: Any
) -> tuple[RegistrationCounter | None, Any, Any]:
    """(counter, handlers, interceptors) for a server that counts every RPC: from its
    handlers when it has no interceptor (the counter instruments those registered later),
    else through an interceptor placed first (no counter)."""
    if interceptors:
        first = AioServerInterceptor() if aio else ServerInterceptor()
        return None, handlers, [first, *interceptors]
    counter = RegistrationCounter(aio=aio)
    counted = handlers if handlers is None else counter.generic(handlers)
    return counter, counted, interceptors


def _instrument_built(
    server: Any, role: str | None, name_prefix: str, counter: RegistrationCounter | None
) -> Any:
    known = getattr(server, _LISTENERS_ATTRIBUTE, None)
    if isinstance(known, _Listeners):  # built by a factory that counts already
        if role is not None:
            known.role = role
        return server
    if counter is None:  # counted by the interceptor the server was built with
        return instrument_server(server, role=role, name_prefix=name_prefix)
    return _instrument(server, role, name_prefix, counter)


# -- health ---------------------------------------------------------------------------------------


def instrument_health_servicer(servicer: ServicerT) -> ServicerT:
    """Report ``set()`` and ``enter_graceful_shutdown()`` of a grpc.health.v1 servicer.

    Takes ``grpc_health.v1.health.HealthServicer`` or its asyncio twin
    (``grpc_health.v1.health.aio.HealthServicer``) and returns it, instrumented in place.
    The statuses it serves are recorded at once (a new servicer serves ``""`` as
    ``SERVING``), then after each change, as the servicer serves them (``set()`` is
    ignored once it is shutting down), so the service ``""`` turning ``NOT_SERVING``
    marks readiness off and starts the shutdown. Instrumenting twice is a no-op.
    """
    from grpc_health.v1 import health_pb2  # type: ignore[import-untyped, unused-ignore]

    if getattr(servicer, _HEALTH_ATTRIBUTE, False):
        return servicer
    setattr(servicer, _HEALTH_ATTRIBUTE, True)
    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name
    target: Any = servicer
    original_set = target.set
    original_shutdown = target.enter_graceful_shutdown

    def record(service: str, fallback: object) -> None:
        statuses = getattr(target, "_server_status", None)
        status = statuses.get(service, fallback) if isinstance(statuses, dict) else fallback
        try:
            name = status_name(status)
        except (ValueError, TypeError):
            name = str(status)
        _shutdown.STATE.set_health(service, name)

    def record_all(fallback: object) -> None:
        statuses = getattr(target, "_server_status", None)
        for service in list(statuses) if isinstance(statuses, dict) else [""]:
            record(service, fallback)

    if inspect.iscoroutinefunction(original_set):

        @functools.wraps(original_set)
        async def set_async(service: str, status: Any) -> None:
            await original_set(service, status)
            _guarded(lambda: record(service, status))

        @functools.wraps(original_shutdown)
        async def shutdown_async() -> None:
            await original_shutdown()
            _guarded(lambda: record_all(health_pb2.HealthCheckResponse.NOT_SERVING))

        target.set = set_async
        target.enter_graceful_shutdown = shutdown_async
    else:

        @functools.wraps(original_set)
        def set_sync(service: str, status: Any) -> None:
            original_set(service, status)
            _guarded(lambda: record(service, status))

        @functools.wraps(original_shutdown)
        def shutdown_sync() -> None:
            original_shutdown()
            _guarded(lambda: record_all(health_pb2.HealthCheckResponse.NOT_SERVING))

        target.set = set_sync
        target.enter_graceful_shutdown = shutdown_sync
    # What it serves from the start ("" is SERVING), so turning it off is a change.
    _guarded(lambda: record_all(health_pb2.HealthCheckResponse.SERVING))
    return servicer
