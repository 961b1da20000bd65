"""The agent's HTTP surface: /metrics, /healthz, /readyz, the read-only JSON API
(``/api/v1/state``, ``/api/v1/report``) and the status page at ``/`` (``status_page.py``).

Scrapes are rendered in a worker thread so a large exposition never stalls ingest on the
event loop. Only GET (and HEAD) exist; everything is read-only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from .exposition import Exposition, take
from .query_params import query_error as _query_error
from .report_store import DrainReports
from .state import State
from .state_json import state_document
from .status_page import add_page_routes
from .tasks_json import tasks_document

_STATE_PARAMETERS = frozenset({"service"})
_REPORT_PARAMETERS = frozenset({"service", "all"})
_FLAGS = {"1": True, "true": True, "0": False, "false": False}
_PAGE_BATCH_BYTES = 1 << 20

STATE_KEY = web.AppKey("state", State)
REPORTS_KEY = web.AppKey("reports", DrainReports)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
EXPOSITION_KEY = web.AppKey("exposition", Exposition)
READY_KEY: web.AppKey[Callable[[], bool]] = web.AppKey("ready")
SCRAPED_KEY: web.AppKey[Callable[[float], None]] = web.AppKey("scraped")
TASKS_KEY: web.AppKey[Callable[[str | None], dict[str, Any]]] = web.AppKey("tasks")


# In JSON, <, > and & can only occur inside strings, where their escapes mean the same: a
# body that echoes a hostile value (an error naming it, a label a service chose) then holds
# no markup, should anything ever render it as HTML.
_MARKUP_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _json_dumps(value: Any) -> str:
    return json.dumps(value, indent=1).translate(_MARKUP_ESCAPES)


def _json(document: Any, status: int = 200) -> web.Response:
    return web.json_response(document, status=status, dumps=_json_dumps)


def _bad_request(message: str) -> web.Response:
    return _json({"error": message}, status=400)


async def metrics(request: web.Request) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    # Taken before the collectors run: a page rendered from an older state must not count as
    # the one that carried a stopping agent's final values.
    began = time.monotonic()
    exposition = request.app[EXPOSITION_KEY]
    pieces, content_type = exposition.page(request.headers.get("Accept", ""))
    # Rendered in a worker thread a batch at a time and sent as it comes: a big page never
    # stalls ingest on the loop, nor sits in memory whole. The next batch is rendered while
    # this one is sent.
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    executor = exposition.executor
    rendering = loop.run_in_executor(executor, take, pieces, _PAGE_BATCH_BYTES)
    while batch := await rendering:
        rendering = loop.run_in_executor(executor, take, pieces, _PAGE_BATCH_BYTES)
        for piece in batch:
            await response.write(piece)
    # Counted once the whole page was handed to the scraper, not when it was rendered: a
    # stopping agent leaves after the first scrape that really got its final values.
    await response.write_eof()
    request.app[SCRAPED_KEY](began)
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    if request.app[READY_KEY]():
        return web.Response(text="ready\n")
    return web.Response(text="ingest is not listening yet\n", status=503)


async def api_state(request: web.Request) -> web.Response:
    error = _query_error(request, _STATE_PARAMETERS)
    if error is not None:
        return _bad_request(error)
    service = request.query.get("service")
    loop = asyncio.get_running_loop()
    document = await loop.run_in_executor(None, state_document, request.app[STATE_KEY], service)
    return _json(document)


async def api_tasks(request: web.Request) -> web.Response:
    """What every task and thread waits on, per service and process (``?service=NAME``)."""
    error = _query_error(request, _STATE_PARAMETERS)
    if error is not None:
        return _bad_request(error)
    loop = asyncio.get_running_loop()
    document = await loop.run_in_executor(
        None, request.app[TASKS_KEY], request.query.get("service")
    )
    return _json(document)


async def api_report(request: web.Request) -> web.Response:
    """Drain reports: the latest per service, ``?service=NAME`` for one, ``?all=1`` for
    every kept report (newest first)."""
    error = _query_error(request, _REPORT_PARAMETERS)
    if error is not None:
        return _bad_request(error)
    everything = _FLAGS.get(request.query.get("all", "0").lower())
    if everything is None:
        return _bad_request(f'"all" must be 1, 0, true or false: {request.query["all"]!r}')
    reports = request.app[REPORTS_KEY]
    loop = asyncio.get_running_loop()
    document = await loop.run_in_executor(
        None, reports.document, request.query.get("service"), everything
    )
    return _json(document)


async def _close_exposition(app: web.Application) -> None:
    app[EXPOSITION_KEY].close()


def _nothing(began: float) -> None:
    return None


def build_app(
    state: State,
    registry: CollectorRegistry,
    ready: Callable[[], bool],
    reports: DrainReports | None = None,
    scraped: Callable[[float], None] | None = None,
    tasks: Callable[[str | None], dict[str, Any]] | None = None,
) -> web.Application:
    """``scraped(began)`` is called after each /metrics page was sent whole, with the
    ``time.monotonic()`` at which its rendering began (a stopping agent waits for a page begun
    after its final state was settled); ``tasks(service)`` builds the /api/v1/tasks document
    (default: from the state alone, without py-spy's threads)."""
    app = web.Application(client_max_size=1024)
    app[STATE_KEY] = state
    app[REPORTS_KEY] = reports if reports is not None else DrainReports(state)
    app[TASKS_KEY] = tasks if tasks is not None else lambda service: tasks_document(state, service)
    app[REGISTRY_KEY] = registry
    app[EXPOSITION_KEY] = Exposition(registry)
    app.on_cleanup.append(_close_exposition)
    app[READY_KEY] = ready
    app[SCRAPED_KEY] = scraped if scraped is not None else _nothing
    add_page_routes(app, state, app[REPORTS_KEY])
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/state", api_state)
    app.router.add_get("/api/v1/report", api_report)
    app.router.add_get("/api/v1/tasks", api_tasks)
    return app
