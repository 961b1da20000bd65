"""An order service on aiohttp, with its health endpoints on a second aiohttp site.

It knows nothing about drainwatch; run it under ``drainwatch run``.

``--shutdown good``: ``/readyz`` answers 503, a propagation wait, the business runner is
cleaned up with a shutdown timeout that lets in-flight orders finish, health last.
``--shutdown broken``: the health runner is cleaned up first, and the process exits without
cleaning up the business runner: asyncio.run() cancels the orders still in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web


async def order(request: web.Request) -> web.Response:
    delay = int(request.query.get("ms", "100")) / 1000
    await asyncio.sleep(delay)
    return web.json_response({"order": request.match_info["order_id"], "status": "placed"})


def business_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/orders/{order_id}", order)
    return app


def health_app(state: dict[str, bool]) -> web.Application:
    async def liveness(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readiness(request: web.Request) -> web.Response:
        return web.Response(text="ready\n") if state["ready"] else web.Response(status=503)

    app = web.Application()
    app.router.add_get("/healthz", liveness)
    app.router.add_get("/readyz", readiness)
    return app


async def main(
    port: int, health_port: int, shutdown: str, grace: float, propagation: float
) -> None:
    state = {"ready": True}
    business = web.AppRunner(business_app(), shutdown_timeout=grace)
    health = web.AppRunner(health_app(state))
    await business.setup()
    await health.setup()
    await web.TCPSite(business, "127.0.0.1", port).start()
    await web.TCPSite(health, "127.0.0.1", health_port).start()
    print(f"orders-aiohttp: serving on {port}, health on {health_port}", flush=True)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()

    if shutdown == "broken":
        await health.cleanup()  # health first
        return  # the business runner is never cleaned up: in-flight orders are cancelled
    state["ready"] = False
    await asyncio.sleep(propagation)
    await business.cleanup()  # waits up to the grace for in-flight orders
    await health.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--health-port", type=int, default=8080)
    parser.add_argument("--shutdown", choices=("good", "broken"), default="good")
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--propagation", type=float, default=0.5)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.health_port, args.shutdown, args.grace, args.propagation))
