"""A payment gateway: grpc.aio business port plus an aiohttp health server.

It knows nothing about drainwatch; run it under ``drainwatch run`` to see its shutdown:

    drainwatch run --service payments -- python payments_grpc_aio.py --port 50051 --health-port 8080

``--shutdown good`` drains the way the post-mortem's checklist says: readiness off
(``/readyz`` answers 503 and grpc.health.v1 goes NOT_SERVING), a propagation wait, the gRPC
server stopped with a grace period and *awaited*, the health server closed last.
``--shutdown broken`` makes the post-mortem's mistakes: the health server closes first,
``server.stop()`` is launched in a task nobody awaits, and the process exits with payments
still in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "payments.Payments"


async def pay(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    # The request body is the processing time in milliseconds (a slow downstream bank).
    delay = int(request or b"100") / 1000
    await asyncio.sleep(delay)
    return b"paid:" + request


async def watch(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]):  # type: ignore[no-untyped-def]
    for index in range(int(request or b"3")):
        await asyncio.sleep(0.05)
        yield b"status:%d" % index


def business_handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Pay": grpc.unary_unary_rpc_method_handler(pay),
            "Watch": grpc.unary_stream_rpc_method_handler(watch),
        },
    )


class HealthServer:
    """``/healthz`` (liveness) and ``/readyz`` (readiness) on their own port."""

    def __init__(self) -> None:
        self.ready = True
        app = web.Application()
        app.router.add_get("/healthz", self.liveness)
        app.router.add_get("/readyz", self.readiness)
        self.runner = web.AppRunner(app)

    async def liveness(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readiness(self, request: web.Request) -> web.Response:
        if self.ready:
            return web.Response(text="ready\n")
        return web.Response(text="draining\n", status=503)

    async def start(self, host: str, port: int) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port).start()


async def main(
    host: str, port: int, health_port: int, shutdown: str, grace: float, propagation: float
) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((business_handlers(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_server = HealthServer()
    await health_server.start(host, health_port)
    print(f"payments: serving on {port}, health on {health_port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()

    if shutdown == "broken":
        await health_server.runner.cleanup()  # health first: liveness probes start failing
        asyncio.create_task(server.stop(grace))  # noqa: RUF006 - the mistake under study
        return  # asyncio.run() cancels what is still running: payments in flight are cut
    health_server.ready = False  # readiness off, liveness stays OK
    await health_servicer.enter_graceful_shutdown()
    await asyncio.sleep(propagation)  # let endpoints and load balancers notice
    await server.stop(grace)  # awaited: in-flight payments finish within the grace
    await health_server.runner.cleanup()  # health last


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Loopback by default; a pod's probes and callers need 0.0.0.0 (deploy/kubernetes/).
    parser.add_argument("--host", default="127.0.0.1", help="address both servers bind")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--health-port", type=int, default=8080)
    parser.add_argument("--shutdown", choices=("good", "broken"), default="good")
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--propagation", type=float, default=0.5)
    args = parser.parse_args()
    asyncio.run(
        main(args.host, args.port, args.health_port, args.shutdown, args.grace, args.propagation)
    )
