"""An order service on FastAPI under uvicorn, with health endpoints on a second uvicorn
server in the same event loop.

It knows nothing about drainwatch; run it under ``drainwatch run``.

``--shutdown good``: ``/readyz`` answers 503, a propagation wait, the business server
shuts down (uvicorn waits for in-flight requests), then the health server.
``--shutdown broken``: the health server stops first and the business server is
force-exited without waiting for requests in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvicorn
from fastapi import FastAPI, Response

state = {"ready": True}
business = FastAPI()
health = FastAPI()


@business.get("/orders/{order_id}")
async def order(order_id: str, ms: int = 100) -> dict[str, str]:
    await asyncio.sleep(ms / 1000)
    return {"order": order_id, "status": "placed"}


@health.get("/healthz")
async def liveness() -> Response:
    return Response("ok\n")


@health.get("/readyz")
async def readiness() -> Response:
    return Response("ready\n") if state["ready"] else Response(status_code=503)


def server(app: FastAPI, port: int) -> uvicorn.Server:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    instance = uvicorn.Server(config)
    instance.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    return instance


async def main(port: int, health_port: int, shutdown: str, propagation: float) -> None:
    business_server = server(business, port)
    health_server = server(health, health_port)
    serving = [
        asyncio.create_task(business_server.serve()),
        asyncio.create_task(health_server.serve()),
    ]
    while not (business_server.started and health_server.started):
        await asyncio.sleep(0.01)
    print(f"orders-fastapi: serving on {port}, health on {health_port}", flush=True)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()

    if shutdown == "broken":
        health_server.should_exit = True  # health first
        await serving[1]
        business_server.force_exit = True  # no wait for requests in flight
        business_server.should_exit = True
        return  # asyncio.run() cancels what is left
    state["ready"] = False
    await asyncio.sleep(propagation)
    business_server.should_exit = True  # uvicorn finishes in-flight requests
    await serving[0]
    health_server.should_exit = True
    await serving[1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--health-port", type=int, default=8080)
    parser.add_argument("--shutdown", choices=("good", "broken"), default="good")
    parser.add_argument("--propagation", type=float, default=0.5)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.health_port, args.shutdown, args.propagation))
