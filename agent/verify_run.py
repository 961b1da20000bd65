"""One run of ``drainwatch verify-shutdown``: the service under an embedded agent, load, the
signal, and what was seen.

``verify`` starts a drainwatch agent in this process (ingest on a private Unix socket, its
HTTP server on a free loopback port, its outside view following the processes the SDK
reports), starts the command with ``drainwatch run``'s auto-instrumentation pointed at it,
waits until the business ports listen and the health endpoint is up, keeps requests in
flight, sends the signal, probes new connections during the accept window, keeps
checking health, and waits for the exit. Past the budget it kills the command's process
group with SIGKILL, as Kubernetes would. The result is an ``Observation``; judging it is
``verify_checks``' job. A command that cannot start raises ``StartError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from drainwatch._endpoint import parse_endpoint
from drainwatch._run_command import RunError, build_environment
from drainwatch.collectors.targets import TargetDiscovery

from .app import Agent
from .config import AgentConfig, ListenAddress
from .outside_config import OutsideConfig, StateSettings, TargetSettings
from .verify_health import HealthSample, ShutdownWatch, listening
from .verify_load import LoadDriver, Request, caller_factories
from .verify_options import VerifyOptions

Progress = Callable[[str], None]

READY_POLL_SECONDS: Final = 0.1
NEW_CONNECTION_INTERVAL: Final = 0.1
# The agent judges an exited process once its final snapshot had a moment to arrive.
REPORT_WAIT_SECONDS: Final = 8.0
OUTPUT_TAIL_LINES: Final = 20
_AGENT_START_SECONDS: Final = 15.0


class StartError(Exception):
    """The command could not be started or never became ready; exit code 2."""

    def __init__(self, message: str, output: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.output = output


@dataclass
class Observation:
    """What one verification saw; times are Unix seconds."""

    options: VerifyOptions
    pid: int
    spawned_at: float
    ready_at: float
    signal_at: float | None = None
    exited_at: float | None = None
    exit_code: int | None = None
    killed: bool = False  # killed with SIGKILL at the budget
    requests: list[Request] = field(default_factory=list)
    health: list[HealthSample] = field(default_factory=list)  # changes of the health endpoint
    business: list[HealthSample] = field(default_factory=list)  # business ports listening
    readiness: list[HealthSample] = field(default_factory=list)
    watch_rounds: int = 0
    report: dict[str, Any] | None = None  # the agent's drain report of this process
    agent_url: str | None = None
    output_tail: tuple[str, ...] = ()


def _tail(path: str) -> tuple[str, ...]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return tuple(line.rstrip("\n") for line in deque(handle, OUTPUT_TAIL_LINES))
    except OSError:
        return ()


def _agent_config(socket_path: str, options: VerifyOptions) -> AgentConfig:
    return AgentConfig(
        listen=ListenAddress("127.0.0.1", 0),
        ingest=(parse_endpoint(f"unix://{socket_path}", setting="ingest"),),
        service=options.service,
        log_level="warning",
        drain_budget_seconds=options.budget,
        outside=OutsideConfig(
            target=TargetSettings(exit_wait_seconds=0.0),
            state=StateSettings(final_metrics_seconds=0.0),
        ),
    )


class _Run:
    """The moving parts of one verification, torn down in reverse by ``verify``."""

    def __init__(self, options: VerifyOptions, progress: Progress, directory: str) -> None:
        self.options = options
        self.progress = progress
        self.directory = directory
        self.log_path = os.path.join(directory, "command.log")
        self.agent = Agent(_agent_config(os.path.join(directory, "ingest.sock"), options))
        # A sidecar never targets its own process tree (py-spy runs as its child); here the
        # command is this process's child, so the outside view must look into that tree.
        outside = self.agent.outside
        outside.discovery = TargetDiscovery(outside.selector, exclude_own_tree=False)
        self.stop_agent = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None
        self.origin: float | None = None  # the signal, for progress offsets

    def say(self, text: str) -> None:
        if self.origin is not None:
            text = f"{time.time() - self.origin:+.2f} s  {text}"
        self.progress(text)

    async def start_agent(self, stack: contextlib.AsyncExitStack) -> None:
        running = asyncio.create_task(self.agent.run(self.stop_agent), name="verify-agent")

        async def stop() -> None:
            self.stop_agent.set()
            self.agent.hurry.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(running, 15)

        stack.push_async_callback(stop)
        started = asyncio.create_task(self.agent.started.wait())
        await asyncio.wait(
            {running, started}, timeout=_AGENT_START_SECONDS, return_when="FIRST_COMPLETED"
        )
        if not self.agent.started.is_set():
            started.cancel()
            if running.done():
                await running  # re-raises why the agent could not start
            raise StartError("the embedded drainwatch agent did not start")
        self.say(f"agent up: metrics at http://{self.agent.http_address}/metrics")

    async def spawn(self, stack: contextlib.AsyncExitStack) -> asyncio.subprocess.Process:
        options = self.options
        health_ports = None
        if options.health is not None and options.health.port not in options.business_ports:
            health_ports = str(options.health.port)
        try:
            env = build_environment(
                os.environ,
                service=options.service,
                endpoint=str(self.agent.config.ingest[0]),
                health_ports=health_ports,
            )
        except RunError as error:
            raise StartError(str(error)) from None
        log = await asyncio.to_thread(open, self.log_path, "wb")
        stack.callback(log.close)
        try:
            process = await asyncio.create_subprocess_exec(
                *options.command,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
            )
        except OSError as error:
            raise StartError(
                f"cannot run {options.command[0]!r}: {error.strerror or error}"
            ) from None
        self.process = process
        stack.push_async_callback(self._kill_group)
        self.say(f"started pid {process.pid}: {' '.join(options.command)}")
        return process

    async def _kill_group(self) -> None:
        """SIGKILL to the command's process group: its main process if it still runs, and
        whatever it left behind (a child that ignored the signal) even if it exited. The
        group's id stays reserved while any member lives, so this never hits a stranger."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 10)

    async def wait_ready(self, process: asyncio.subprocess.Process, watch: ShutdownWatch) -> float:
        options = self.options
        deadline = time.monotonic() + options.ready_timeout
        waiting_for = "the business ports to listen"
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise StartError(
                    f"the command exited with code {process.returncode} before it was ready",
                    _tail(self.log_path),
                )
            if await listening(options.business_addresses):
                _, ready, detail = await watch.sample_health()
                if ready:
                    return time.time()
                check = watch.check
                where = "the health endpoint" if check is None else check.describe
                waiting_for = f"{where} to be up (last answer: {detail})"
            await asyncio.sleep(READY_POLL_SECONDS)
        raise StartError(
            f"not ready within --ready-timeout {options.ready_timeout:g} s: still waiting for "
            f"{waiting_for}; check the ports and --health-url/--health-grpc, or raise "
            "--ready-timeout",
            _tail(self.log_path),
        )

    async def drain(
        self, process: asyncio.subprocess.Process, load: LoadDriver
    ) -> tuple[float, bool]:
        """Signal, accept window, wait for the exit or kill at the budget: (exited, killed)."""
        options = self.options
        signal_at = self.origin = time.time()
        in_flight = load.in_flight
        process.send_signal(options.signal_number)
        self.say(
            f"{options.signal_name} sent to pid {process.pid} with {in_flight} request(s) in flight"
        )
        window_end = signal_at + options.accept_window
        accepting = asyncio.create_task(
            load.probe_new_connections(window_end, NEW_CONNECTION_INTERVAL)
        )

        async def close_window() -> None:
            await asyncio.sleep(options.accept_window)
            load.stop_starting()
            if options.accept_window > 0:
                self.say("accept window over: no new requests from here on")

        closing = asyncio.create_task(close_window())
        killed = False
        try:
            await asyncio.wait_for(
                process.wait(), max(0.0, signal_at + options.budget - time.time())
            )
        except TimeoutError:
            killed = True
            self.say(
                f"still running after the {options.budget:g} s budget: SIGKILL, as Kubernetes would"
            )
            await self._kill_group()
        exited = time.time()
        self.say("killed" if killed else f"exited with code {process.returncode}")
        load.stop_starting()
        closing.cancel()
        await asyncio.wait({accepting}, timeout=options.request_timeout + 5)
        accepting.cancel()
        return exited, killed

    async def report(self, pid: int) -> dict[str, Any] | None:
        """The agent's drain report of ``pid``, once complete (or the latest seen)."""
        self.say("waiting for the agent's drain report")
        deadline = time.monotonic() + REPORT_WAIT_SECONDS
        latest: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            document = await asyncio.to_thread(self.agent.reports.document, self.options.service)
            for candidate in document.get("reports", []):
                if candidate.get("pid") == pid:
                    latest = candidate
            if latest is not None and latest.get("complete"):
                return latest
            await asyncio.sleep(0.1)
        return latest


async def verify(options: VerifyOptions, progress: Progress) -> Observation:
    """Run one verification; raises ``StartError`` when the command cannot be started."""
    # The embedded agent's notes (py-spy losing a target that just exited, say) are noise
    # here: what matters is in the report.
    logging.getLogger("drainwatch").setLevel(logging.ERROR)
    directory = tempfile.mkdtemp(prefix="dw-verify-", dir="/tmp")  # short: socket paths
    try:
        async with contextlib.AsyncExitStack() as stack:
            run = _Run(options, progress, directory)
            await run.start_agent(stack)
            spawned_at = time.time()
            process = await run.spawn(stack)
            watch = ShutdownWatch(
                options.health,
                options.business_addresses,
                on_change=lambda kind, change: run.say(f"{kind}: {change.detail}"),
                readiness=options.readiness,
            )
            stack.push_async_callback(watch.stop)
            ready_at = await run.wait_ready(process, watch)
            run.say(f"ready after {ready_at - spawned_at:.2f} s")
            observed = Observation(options, process.pid, spawned_at, ready_at)
            observed.agent_url = f"http://{run.agent.http_address}"
            watch.start()
            load = LoadDriver(
                caller_factories(options.grpc, options.http, options.request_timeout),
                options.concurrency,
                options.rate,
                options.request_timeout,
            )
            load.start()
            try:
                await asyncio.wait_for(process.wait(), options.signal_after)
            except TimeoutError:
                observed.signal_at = time.time()
                observed.exited_at, observed.killed = await run.drain(process, load)
            else:
                observed.exited_at = time.time()
                run.say(
                    f"the command exited on its own (code {process.returncode}) before the signal"
                )
            observed.exit_code = process.returncode
            await load.finish()
            await watch.stop()
            observed.health = list(watch.health)
            observed.business = list(watch.business)
            observed.readiness = list(watch.readiness)
            observed.watch_rounds = watch.rounds
            observed.requests = sorted(load.requests, key=lambda request: request.started)
            observed.report = await run.report(process.pid)
            observed.output_tail = _tail(run.log_path)
            return observed
    finally:
        shutil.rmtree(directory, ignore_errors=True)
