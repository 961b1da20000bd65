"""The agent's HTTP surface: /metrics, /healthz, /readyz and the read-only JSON API.

Scrapes are rendered in a worker thread so a large exposition never stalls ingest on the
event loop. Only GET (and HEAD) exist; everything is read-only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .state import State
from .state_json import state_document

_MAX_QUERY_VALUE = 256
_STATE_PARAMETERS = frozenset({"service"})

STATE_KEY = web.AppKey("state", State)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
READY_KEY: web.AppKey[Callable[[], bool]] = web.AppKey("ready")


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY_KEY]
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    loop = asyncio.get_running_loop()
    body = await loop.run_in_executor(None, encoder, registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    if request.app[READY_KEY]():
        return web.Response(text="ready\n")
    return web.Response(text="ingest is not listening yet\n", status=503)


async def api_state(request: web.Request) -> web.Response:
    unknown = sorted(set(request.query) - _STATE_PARAMETERS)
    if unknown:
        return _bad_request(
            f"unknown query parameter {unknown[0][:_MAX_QUERY_VALUE]!r}; "
            f"this endpoint takes: {', '.join(sorted(_STATE_PARAMETERS))}"
        )
    services = request.query.getall("service", [])
    if len(services) > 1:
        return _bad_request('"service" may be given once')
    service = services[0] if services else None
    if service is not None and not 0 < len(service) <= _MAX_QUERY_VALUE:
        return _bad_request(f'"service" must be 1 to {_MAX_QUERY_VALUE} characters')
    loop = asyncio.get_running_loop()
    document = await loop.run_in_executor(None, state_document, request.app[STATE_KEY], service)
    return web.json_response(document, dumps=lambda value: json.dumps(value, indent=1))


async def index(request: web.Request) -> web.Response:
    return web.Response(
        text=(
            "drainwatch agent\n\n"
            "/metrics        Prometheus exposition (OpenMetrics when asked)\n"
            "/api/v1/state   everything the agent knows, as JSON (?service=NAME)\n"
            "/healthz        liveness\n"
            "/readyz         readiness: ingest is listening\n"
        )
    )


def build_app(
    state: State, registry: CollectorRegistry, ready: Callable[[], bool]
) -> web.Application:
    app = web.Application(client_max_size=1024)
    app[STATE_KEY] = state
    app[REGISTRY_KEY] = registry
    app[READY_KEY] = ready
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/state", api_state)
    return app
