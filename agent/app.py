"""The agent process: state dir, ingest endpoints, outside view, HTTP server, in that order;
torn down in reverse.

On its own SIGTERM the agent first waits (``target.exit_wait_seconds``) for the target to
exit: a native sidecar is stopped after the app, a plain sidecar at the same time, and in
both cases the interesting part, the target's drain, is still ahead. Then it saves the final
reports, pushes them to the Pushgateway when configured, and serves its final metrics until
a scrape has seen them (``state.final_metrics_seconds`` at most). A second signal cuts all
waiting short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import web
from drainwatch.collectors.probes import ProbeCollector
from drainwatch.collectors.sdk_ingest import Ingest, open_ingest
from prometheus_client import CollectorRegistry, ProcessCollector

from .config import AgentConfig, ListenAddress
from .http_api import build_app
from .ingest_metrics import IngestCollector
from .metrics import StateCollector
from .outside import OutsideView
from .outside_metrics import OutsideCollector, PySpyBlockedThreads, outside_target
from .outside_report import OutsideReports
from .pushgateway import grouping_key, push_final
from .report_persistence import ReportWriter, restore
from .report_store import DrainReports
from .state import State
from .state_dir import StateDir, StateDirCollector
from .task_metrics import TaskCollector
from .tasks_json import tasks_document

logger = logging.getLogger("drainwatch.agent")

_EXPIRY_PERIOD_SECONDS = 10.0
_REFRESH_PERIOD_SECONDS = 1.0
_HTTP_SHUTDOWN_SECONDS = 5.0
_POLL_SECONDS = 0.1


class Agent:
    """One agent: call ``run(stop)`` inside an event loop; returns when ``stop`` is set and
    the wind-down is over. ``hurry`` (a second signal) cuts the wind-down short."""

    def __init__(self, config: AgentConfig, outside: OutsideView | None = None) -> None:
        self.config = config
        self.state = State(config.limits, config.service)
        self.outside = outside or OutsideView(config, self.state)
        self.outside_reports = OutsideReports(self.outside, config.drain_budget_seconds)
        settings = config.outside
        self.reports = DrainReports(
            self.state,
            config.drain_budget_seconds,
            keep=settings.state.history,
            outside=self.outside_reports if self.outside.active else None,
        )
        # Checked before anything listens: a state dir that cannot be used is a config error.
        self.state_dir = (
            StateDir(settings.state.dir, keep=settings.state.history, where="state.dir")
            if settings.state.dir is not None
            else None
        )
        self.writer = ReportWriter(self.state_dir) if self.state_dir is not None else None
        if self.writer is not None:
            self.reports.observers.append(self.writer.offer)
        self.registry = CollectorRegistry(auto_describe=False)
        service = self.state.default_service
        self.registry.register(
            StateCollector(self.state, self.reports, lambda: outside_target(self.outside, service))
        )
        self.registry.register(OutsideCollector(self.outside, service))
        pyspy_threads = PySpyBlockedThreads(self.outside, service, self.state.caps)
        self.registry.register(TaskCollector(self.state, pyspy_threads))
        if self.outside.probes is not None:
            self.registry.register(ProbeCollector(self.outside.probes, service))
        if self.state_dir is not None:
            self.registry.register(StateDirCollector(self.state_dir, service))
        self.registry.register(IngestCollector(lambda: self.ingests, service))
        ProcessCollector(registry=self.registry)
        self.ingests: list[Ingest] = []
        self.http_address: ListenAddress | None = None
        self.started = asyncio.Event()
        self.hurry = asyncio.Event()
        # When the newest page sent whole began rendering (time.monotonic()).
        self.last_scrape_began = float("-inf")

    def ready(self) -> bool:
        return self.started.is_set()

    def _scraped(self, began: float) -> None:
        self.last_scrape_began = max(self.last_scrape_began, began)

    async def run(self, stop: asyncio.Event) -> None:
        async with contextlib.AsyncExitStack() as stack:
            if self.state_dir is not None and self.writer is not None:
                await asyncio.to_thread(restore, self.state_dir, self.reports)
                self.writer.start()
                stack.push_async_callback(asyncio.to_thread, self.writer.stop)
            for endpoint in self.config.ingest:
                ingest = open_ingest(endpoint, self.state)
                await ingest.start()
                stack.push_async_callback(ingest.close)
                self.ingests.append(ingest)
                logger.info("drainwatch agent: ingest on %s", _describe(ingest))
            await self._start_http(stack)
            self.outside.start()
            stack.push_async_callback(asyncio.to_thread, self.outside.stop)
            await self.outside.start_probes()
            stack.push_async_callback(self.outside.stop_probes)
            for name, job in (("expiry", self._expire_forever), ("refresh", self._refresh_forever)):
                task = asyncio.create_task(job(), name=f"drainwatch-{name}")
                stack.callback(task.cancel)
            self.started.set()
            await stop.wait()
            logger.info("drainwatch agent: stopping")
            await self._wind_down()

    async def _start_http(self, stack: contextlib.AsyncExitStack) -> None:
        app = build_app(
            self.state,
            self.registry,
            self.ready,
            self.reports,
            self._scraped,
            lambda service: tasks_document(self.state, service, self.outside),
        )
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
            self.state.expire(self.config.retention_seconds, self.config.service_retention_seconds)

    async def _refresh_forever(self) -> None:
        # Reports are built on scrapes too; this keeps the state dir and the last words
        # current when nobody scrapes (a pod shut down between two scrapes).
        while True:
            await asyncio.sleep(_REFRESH_PERIOD_SECONDS)
            await asyncio.to_thread(self.reports.refresh)

    # -- stopping -------------------------------------------------------------------------------

    def _target_running(self) -> bool:
        if self.outside.active and self.outside.target_alive():
            return True
        with self.state.lock:
            return any(
                instance.connected
                and (instance.shutdown is None or instance.shutdown.get("exited") is None)
                for _, instance in self.state.instances()
            )

    async def _wait(self, seconds: float, done: object) -> bool:
        """Poll ``done()`` for at most ``seconds`` or until ``hurry``; True when done."""
        deadline = time.monotonic() + seconds
        while not self.hurry.is_set():
            if callable(done) and done():
                return True
            if time.monotonic() >= deadline:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hurry.wait(), _POLL_SECONDS)
        return False

    async def _wind_down(self) -> None:
        settings = self.config.outside
        if self._target_running():
            wait = settings.target.exit_wait_seconds
            logger.info("drainwatch agent: waiting up to %g s for the target to exit", wait)
            exited = await self._wait(wait, lambda: not self._target_running())
            if not exited:
                logger.warning(
                    "drainwatch agent: the target still runs; stopping without its final report"
                )
        await asyncio.to_thread(self.reports.refresh)
        if self.writer is not None:
            await asyncio.to_thread(self.writer.flush)
        await self._push_final()
        linger = settings.state.final_metrics_seconds
        if linger > 0:
            # A scrape already running may have rendered its page before the target's exit
            # was seen: only a page begun from here on carries the final values.
            settled = time.monotonic()
            logger.info(
                "drainwatch agent: serving the final metrics until the next scrape (%g s at most)",
                linger,
            )
            await self._wait(linger, lambda: self.last_scrape_began >= settled)

    async def _push_final(self) -> None:
        push = self.config.outside.pushgateway
        if push.url is None:
            return
        for report in self.reports.reports():
            key = grouping_key(report.service)
            await push_final(push.url, push.job, self.registry, key)


def _describe(ingest: Ingest) -> str:
    endpoint = ingest.endpoint
    if endpoint.scheme == "udp":
        return f"udp://{endpoint.host}:{getattr(ingest, 'port', endpoint.port)}"
    return f"{endpoint} (mode 0660)"
