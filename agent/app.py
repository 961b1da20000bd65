"""The agent process: ingest endpoints, state, HTTP server, in that order; torn down in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web
from drainwatch.collectors.sdk_ingest import Ingest, open_ingest
from prometheus_client import CollectorRegistry, ProcessCollector

from .config import AgentConfig, ListenAddress
from .http_api import build_app
from .metrics import StateCollector
from .report_store import DrainReports
from .state import State

logger = logging.getLogger("drainwatch.agent")

_EXPIRY_PERIOD_SECONDS = 10.0
_HTTP_SHUTDOWN_SECONDS = 5.0


class Agent:
    """One agent: call ``run(stop)`` inside an event loop; returns when ``stop`` is set."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state = State(config.limits, config.service)
        self.reports = DrainReports(self.state, config.drain_budget_seconds)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StateCollector(self.state, self.reports))
        ProcessCollector(registry=self.registry)
        self.ingests: list[Ingest] = []
        self.http_address: ListenAddress | None = None
        self.started = asyncio.Event()

    def ready(self) -> bool:
        return self.started.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        async with contextlib.AsyncExitStack() as stack:
            for endpoint in self.config.ingest:
                ingest = open_ingest(endpoint, self.state)
                await ingest.start()
                stack.push_async_callback(ingest.close)
                self.ingests.append(ingest)
                logger.info("drainwatch agent: ingest on %s", _describe(ingest))
            await self._start_http(stack)
            expiry = asyncio.create_task(self._expire_forever(), name="drainwatch-expiry")
            stack.callback(expiry.cancel)
            self.started.set()
            await stop.wait()
            logger.info("drainwatch agent: stopping")

    async def _start_http(self, stack: contextlib.AsyncExitStack) -> None:
        app = build_app(self.state, self.registry, self.ready, self.reports)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_HTTP_SHUTDOWN_SECONDS
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        listen = self.config.listen
        site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
        await site.start()
        port = listen.port
        for address in runner.addresses:
            port = address[1]
            break
        self.http_address = ListenAddress(listen.host, port)
        logger.info("drainwatch agent: listening on http://%s", self.http_address)

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(_EXPIRY_PERIOD_SECONDS)
            self.state.expire(self.config.retention_seconds)


def _describe(ingest: Ingest) -> str:
    endpoint = ingest.endpoint
    if endpoint.scheme == "udp":
        return f"udp://{endpoint.host}:{getattr(ingest, 'port', endpoint.port)}"
    return f"{endpoint} (mode 0660)"
