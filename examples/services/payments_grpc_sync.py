"""The payment gateway on a sync gRPC server (thread pool), health on its own gRPC port.

It knows nothing about drainwatch; run it under ``drainwatch run``. The health port
serves only ``grpc.health.v1``, so drainwatch recognises it as the health listener.

``--shutdown good``: health goes NOT_SERVING, a propagation wait, then
``server.stop(grace).wait()`` (the stop is waited for), and the health server stops last.
``--shutdown broken``: the health server stops first, ``server.stop(grace)`` is called
and its Event never waited for, and the process exits at once with payments in flight.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "payments.Payments"


def pay(request: bytes, context: grpc.ServicerContext) -> bytes:
    time.sleep(int(request or b"100") / 1000)  # a slow downstream bank
    return b"paid:" + request


def main(port: int, health_port: int, shutdown: str, grace: float, propagation: float) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"Pay": grpc.unary_unary_rpc_method_handler(pay)}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
    health_server.add_insecure_port(f"127.0.0.1:{health_port}")
    server.start()
    health_server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"payments-sync: serving on {port}, health on {health_port}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    stop.wait()

    if shutdown == "broken":
        health_server.stop(0)  # health first
        server.stop(grace)  # the returned Event is never waited for
        os._exit(0)  # and the process is gone with payments in flight
    health_servicer.enter_graceful_shutdown()  # readiness off
    time.sleep(propagation)
    server.stop(grace).wait()  # in-flight payments finish within the grace
    health_server.stop(0).wait()  # health last


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--health-port", type=int, default=50052)
    parser.add_argument("--shutdown", choices=("good", "broken"), default="good")
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--propagation", type=float, default=0.5)
    args = parser.parse_args()
    main(args.port, args.health_port, args.shutdown, args.grace, args.propagation)
