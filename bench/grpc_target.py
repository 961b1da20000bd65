"""The server process for the gRPC figures: ``python -m bench.grpc_target sync|aio``.

Serves the same raw-bytes unary method on three loopback ports at once, one server per
variant: plain ``grpc.server()``/``grpc.aio.server()``; drainwatch's ``server()``/
``aio_server()``, which instrument the handlers as they are registered; and the plain
server with OpenTelemetry's interceptor and a real ``TracerProvider``. Prints ``ready
<port> <port> <port>`` (in ``VARIANTS`` order) once all three serve. When stdin closes it
stops them and prints ``counted <rpcs> <spans>``: the RPCs drainwatch counted as ended and
the spans OpenTelemetry ended, so the bench can check that both did their work on every
call.

OpenTelemetry's ``TracerProvider`` gets one span processor that only counts ended spans:
every span is sampled, recorded, given its attributes and ended, which is the work a traced
service does per RPC, but nothing is exported, so the figure holds no I/O and no batching
thread.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Final

import drainwatch
import grpc
import grpc.aio
from drainwatch import _inflight

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

SERVICE: Final = "bench.Echo"
METHOD: Final = "Call"
FULL_METHOD: Final = f"/{SERVICE}/{METHOD}"
VARIANTS: Final = ("baseline", "drainwatch", "opentelemetry")
KINDS: Final = ("sync", "aio")
# Calls arrive one at a time; a few workers keep a worker hand-off out of the way.
_WORKERS = 4
_LOOPBACK = "127.0.0.1:0"


def _echo(request: bytes, context: object) -> bytes:
    return request


async def _aio_echo(request: bytes, context: object) -> bytes:
    return request


def _generic_handler(behavior: object) -> object:
    # No serializers: grpc hands the handler the request bytes and sends back its bytes.
    handler = grpc.unary_unary_rpc_method_handler(behavior)
    return grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler})


class _Variants:
    """How to build each variant's server of one kind, and what the instrumented ones counted."""

    def __init__(self, kind: str) -> None:
        from opentelemetry.instrumentation import grpc as otel_grpc
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

        spans = [0]

        class SpanCounter(SpanProcessor):
            # RPCs arrive one at a time, so the increment needs no lock.
            def on_end(self, span: ReadableSpan) -> None:
                spans[0] += 1

        provider = TracerProvider()
        provider.add_span_processor(SpanCounter())
        self._spans = spans
        if kind == "sync":
            self.otel_interceptor: object = otel_grpc.server_interceptor(  # type: ignore[no-untyped-call]
                tracer_provider=provider
            )
        else:
            self.otel_interceptor = otel_grpc.aio_server_interceptor(  # type: ignore[no-untyped-call]
                tracer_provider=provider
            )

    def counted(self) -> tuple[int, int]:
        """(RPCs drainwatch counted as ended, spans OpenTelemetry ended)."""
        rpcs = 0
        for record in _inflight.REGISTRY.records():
            if record["protocol"] == "grpc" and record["method"] == FULL_METHOD:
                rpcs += sum(record["outcomes"].values())
        return rpcs, self._spans[0]


def _sync_server(variant: str, variants: _Variants) -> grpc.Server:
    from drainwatch.integrations import grpc as drainwatch_grpc

    pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix=variant)
    handlers = [_generic_handler(_echo)]
    if variant == "drainwatch":
        built: grpc.Server = drainwatch_grpc.server(pool, handlers=handlers)
        return built
    interceptors = [variants.otel_interceptor] if variant == "opentelemetry" else []
    return grpc.server(pool, handlers=handlers, interceptors=interceptors)


def _aio_server(variant: str, variants: _Variants) -> grpc.aio.Server:
    from drainwatch.integrations import grpc as drainwatch_grpc

    handlers = [_generic_handler(_aio_echo)]
    if variant == "drainwatch":
        built: grpc.aio.Server = drainwatch_grpc.aio_server(handlers=handlers)
        return built
    interceptors = [variants.otel_interceptor] if variant == "opentelemetry" else []
    return grpc.aio.server(handlers=handlers, interceptors=interceptors)


def _sync_servers(variants: _Variants) -> tuple[list[grpc.Server], list[int]]:
    servers: list[grpc.Server] = []
    ports: list[int] = []
    for variant in VARIANTS:
        server = _sync_server(variant, variants)
        ports.append(server.add_insecure_port(_LOOPBACK))
        server.start()
        servers.append(server)
    return servers, ports


async def _aio_servers(variants: _Variants) -> tuple[list[grpc.aio.Server], list[int]]:
    servers: list[grpc.aio.Server] = []
    ports: list[int] = []
    for variant in VARIANTS:
        server = _aio_server(variant, variants)
        ports.append(server.add_insecure_port(_LOOPBACK))
        await server.start()
        servers.append(server)
    return servers, ports


def _ready(ports: Sequence[int]) -> None:
    # Everything alive now lives until exit: keep the collector from scanning it again.
    gc.collect()
    gc.freeze()
    print("ready", *ports, flush=True)


def _serve_sync(variants: _Variants) -> None:
    servers, ports = _sync_servers(variants)
    _ready(ports)
    sys.stdin.read()
    for server in servers:
        server.stop(None).wait()


async def _serve_aio(variants: _Variants) -> None:
    servers, ports = await _aio_servers(variants)
    _ready(ports)
    # stdin is read in a thread so the loop stays free to serve.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for server in servers:
        await server.stop(None)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0] not in KINDS:
        print(f"usage: python -m bench.grpc_target {{{'|'.join(KINDS)}}}", file=sys.stderr)
        return 2
    # Reporting is off: the per-RPC path never touches the reporter, and its periodic
    # snapshots would only add noise to whichever calls they land on.
    drainwatch.configure(enabled=False)
    variants = _Variants(argv[0])
    if argv[0] == "sync":
        _serve_sync(variants)
    else:
        asyncio.run(_serve_aio(variants))
    print("counted", *variants.counted(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
