"""Real gRPC servers and clients for the gRPC integration tests, without generated code.

The business service ``payments.Payments`` has one method per RPC kind and carries raw
bytes (no serializers). Servers listen on 127.0.0.1 with a port the kernel picks; every
helper closes its channel and stops its server, so no test leaks a thread or a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import grpc  # type: ignore[import-untyped, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, unused-ignore]
from drainwatch import _inflight, _shutdown
from drainwatch.integrations import grpc as drainwatch_grpc
from drainwatch.integrations.grpc import (
    AioServerInterceptor,
    ServerInterceptor,
    instrument_server,
)

SERVICE: Final = "payments.Payments"
KINDS: Final = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
METHOD_NAMES: Final = {
    "unary_unary": "Pay",
    "unary_stream": "List",
    "stream_unary": "Upload",
    "stream_stream": "Chat",
}
_FACTORIES: Final = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}
SYNC_WAYS: Final = ("interceptor", "adopted", "constructor", "registered", "factory")
"""How a sync server is counted: a ``ServerInterceptor`` in grpc's pipeline; the same, then
``instrument_server`` (which moves the count from the interceptor to the handlers);
``drainwatch_grpc.server()`` with a generic handler; the same with registered method
handlers, as generated code adds them; ``grpc.server`` wrapped by ``counting_factory``, as
``drainwatch run`` wraps it, with a generic handler registered after it was built."""
AIO_WAYS: Final = ("interceptor", "constructor", "registered", "factory")
"""The same for ``grpc.aio``, whose interceptors ``instrument_server`` cannot move."""
Behaviors = dict[str, Callable[..., Any]]
Record = dict[str, Any]


def method(kind: str) -> str:
    """The full method name of ``kind``, as interceptors and the registry see it."""
    return f"/{SERVICE}/{METHOD_NAMES[kind]}"


def method_handlers(behaviors: Behaviors) -> dict[str, Any]:
    """``payments.Payments``'s method handlers, by method name, for ``behaviors`` by kind."""
    return {METHOD_NAMES[kind]: _FACTORIES[kind](fn) for kind, fn in behaviors.items()}


def generic_handler(behaviors: Behaviors) -> Any:
    """``payments.Payments`` with ``behaviors`` keyed by RPC kind."""
    return grpc.method_handlers_generic_handler(SERVICE, method_handlers(behaviors))


def serve(server: Any, behaviors: Behaviors, way: str) -> None:
    """Register ``behaviors`` with ``server``: as registered methods for ``way``
    ``"registered"``, else as a generic handler."""
    if way == "registered":
        server.add_registered_method_handlers(SERVICE, method_handlers(behaviors))
    else:
        server.add_generic_rpc_handlers((generic_handler(behaviors),))


# -- what the registry and the shutdown state say ------------------------------------------------


def stats(kind_or_method: str) -> Record | None:
    """The in-flight record of one method (a kind of ``payments.Payments`` or a full name)."""
    name = method(kind_or_method) if kind_or_method in METHOD_NAMES else kind_or_method
    for record in _inflight.REGISTRY.records():
        if record["method"] == name:
            return record
    return None


def active(kind: str) -> int:
    record = stats(kind)
    return 0 if record is None else int(record["active"])


def outcomes(kind: str) -> dict[str, int]:
    """The outcomes counted so far, leaving out those at zero."""
    record = stats(kind)
    counted: dict[str, int] = {} if record is None else record["outcomes"]
    return {outcome: count for outcome, count in counted.items() if count}


def listener(name: str) -> Record | None:
    found: Record | None = _shutdown.STATE.record()["listeners"].get(name)
    return found


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` s pass; return whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """``wait_until`` for the event loop: other tasks run while it polls."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.002)
    return True


# -- servers ---------------------------------------------------------------------------------------


@dataclass
class SyncRig:
    server: Any
    port: int
    channel: Any

    def call(self, kind: str, requests: Sequence[bytes], timeout: float = 5.0) -> Any:
        """Make one RPC of ``kind``; streams come back as lists."""
        name = method(kind)
        if kind == "unary_unary":
            return self.channel.unary_unary(name)(requests[0], timeout=timeout)
        if kind == "unary_stream":
            return list(self.channel.unary_stream(name)(requests[0], timeout=timeout))
        if kind == "stream_unary":
            return self.channel.stream_unary(name)(iter(requests), timeout=timeout)
        return list(self.channel.stream_stream(name)(iter(requests), timeout=timeout))

    def start_call(self, kind: str, requests: Sequence[bytes]) -> Any:
        """Start one RPC without waiting: a future (unary response) or a response iterator."""
        name = method(kind)
        if kind == "unary_unary":
            return self.channel.unary_unary(name).future(requests[0], timeout=5.0)
        if kind == "unary_stream":
            return self.channel.unary_stream(name)(requests[0], timeout=5.0)
        if kind == "stream_unary":
            return self.channel.stream_unary(name).future(iter(requests), timeout=5.0)
        return self.channel.stream_stream(name)(iter(requests), timeout=5.0)


@contextlib.contextmanager
def sync_server(
    behaviors: Behaviors,
    *,
    instrumented: bool = True,
    observe_listeners: bool = False,
    interceptors: Sequence[Any] = (),
    way: str = "interceptor",
    workers: int = 8,
) -> Iterator[SyncRig]:
    """A started ``grpc.server`` serving ``behaviors`` from a pool of ``workers`` threads,
    counted the ``SYNC_WAYS`` way ``way`` (or not at all), and a channel to it."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc-test")
    if instrumented and way in ("constructor", "registered"):
        server = drainwatch_grpc.server(pool, interceptors=list(interceptors))
    elif instrumented and way == "factory":
        build = drainwatch_grpc.counting_factory(grpc.server, aio=False)
        server = build(pool, None, list(interceptors) or None)
    else:
        chain = [ServerInterceptor(), *interceptors] if instrumented else list(interceptors)
        server = grpc.server(pool, interceptors=chain)
        if observe_listeners or (instrumented and way == "adopted"):
            instrument_server(server)
    serve(server, behaviors, way)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield SyncRig(server, port, channel)
    finally:
        channel.close()
        server.stop(None).wait(5.0)
        pool.shutdown(wait=True)


@dataclass
class AioRig:
    server: Any
    port: int
    channel: Any

    async def call(self, kind: str, requests: Sequence[bytes], timeout: float = 5.0) -> Any:
        """Make one RPC of ``kind``; streams come back as lists."""
        name = method(kind)
        if kind == "unary_unary":
            return await self.channel.unary_unary(name)(requests[0], timeout=timeout)
        if kind == "unary_stream":
            return [r async for r in self.channel.unary_stream(name)(requests[0], timeout=timeout)]
        if kind == "stream_unary":
            return await self.channel.stream_unary(name)(_aiter(requests), timeout=timeout)
        stream = self.channel.stream_stream(name)(_aiter(requests), timeout=timeout)
        return [r async for r in stream]


async def _aiter(items: Sequence[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


@contextlib.asynccontextmanager
async def aio_server(
    behaviors: Behaviors,
    *,
    instrumented: bool = True,
    observe_listeners: bool = False,
    thread_pool: ThreadPoolExecutor | None = None,
    way: str = "interceptor",
) -> AsyncIterator[AioRig]:
    """A started ``grpc.aio.server`` serving ``behaviors``, counted the ``AIO_WAYS`` way
    ``way`` (or not at all), and a channel to it."""
    if instrumented and way in ("constructor", "registered"):
        server = drainwatch_grpc.aio_server(thread_pool)
    elif instrumented and way == "factory":
        server = drainwatch_grpc.counting_factory(grpc.aio.server, aio=True)(thread_pool)
    else:
        server = grpc.aio.server(
            thread_pool, interceptors=[AioServerInterceptor()] if instrumented else None
        )
        if observe_listeners:
            instrument_server(server)
    serve(server, behaviors, way)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield AioRig(server, port, channel)
    finally:
        await channel.close()
        await server.stop(None)
