"""Real services that know nothing about drainwatch, run under ``drainwatch run``, shut down
by a real SIGTERM with 10 slow requests in flight: the agent judges each shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from drainwatch.agent.loadgen import CallOutcome, GrpcBurst, HttpBurst, free_port, wait_for_port

from tests.processes import AgentProcess, Samples, running_agent

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "examples" / "services"
IN_FLIGHT = 10
REQUEST_MS = 2500
BUDGET_SECONDS = 20


@dataclass(frozen=True)
class Service:
    script: str
    protocol: str
    method: str
    readiness: str | None  # an HTTP readiness URL path probed like a kubelet would
    stop_step: bool  # the broken variant starts a listener stop it never finishes


SERVICE_KINDS = {
    "grpc_aio": Service("payments_grpc_aio.py", "grpc", "/payments.Payments/Pay", "/readyz", True),
    "grpc_sync": Service("payments_grpc_sync.py", "grpc", "/payments.Payments/Pay", None, True),
    "aiohttp": Service("orders_aiohttp.py", "http", "GET /orders/{order_id}", "/readyz", False),
    "fastapi": Service("orders_fastapi.py", "http", "GET /orders/{order_id}", "/readyz", False),
}


@dataclass
class Drain:
    outcomes: list[CallOutcome]
    signalled_at: float
    exited_at: float
    exit_code: int
    report: dict[str, Any]
    samples: Samples


async def _probe_readiness(url: str, stop: asyncio.Event) -> None:
    """Poll the readiness endpoint every 100 ms, as a kubelet would."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while not stop.is_set():
            try:
                async with session.get(url) as response:
                    await response.read()
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)


async def _drive(agent: AgentProcess, kind: Service, variant: str, service: str) -> Drain:
    port, health_port = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "drainwatch",
        "run",
        "--service",
        service,
        "--endpoint",
        agent.endpoint,
        "--",
        sys.executable,
        str(SERVICES / kind.script),
        "--port",
        str(port),
        "--health-port",
        str(health_port),
        "--shutdown",
        variant,
        "--propagation",
        "0.3",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop_probing = asyncio.Event()
    try:
        assert await wait_for_port("127.0.0.1", port), "service did not start"
        assert await wait_for_port("127.0.0.1", health_port), "health did not start"
        probing = None
        if kind.readiness:
            url = f"http://127.0.0.1:{health_port}{kind.readiness}"
            probing = asyncio.create_task(_probe_readiness(url, stop_probing))
        if kind.protocol == "grpc":
            burst: GrpcBurst | HttpBurst = GrpcBurst(
                f"127.0.0.1:{port}", kind.method, str(REQUEST_MS).encode(), IN_FLIGHT
            )
        else:
            burst = HttpBurst(f"http://127.0.0.1:{port}/orders/7?ms={REQUEST_MS}", IN_FLIGHT)
        burst.start()
        await _wait_in_flight(agent, service, IN_FLIGHT)
        signalled_at = time.time()
        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(process.wait, 30)
        exited_at = time.time()
        outcomes = await burst.outcomes()
        stop_probing.set()
        if probing is not None:
            await probing
    finally:
        stop_probing.set()
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stderr is not None:
            process.stderr.close()
    report = await asyncio.to_thread(_final_report, agent, service)
    return Drain(outcomes, signalled_at, exited_at, exit_code, report, agent.scrape())


async def _wait_in_flight(agent: AgentProcess, service: str, count: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        samples = await asyncio.to_thread(agent.scrape)
        active = sum(
            value
            for labels, value in samples.all("drainwatch_inflight_requests")
            if labels.get("service") == service
        )
        if active >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the agent never saw {count} requests in flight")


def _final_report(agent: AgentProcess, service: str) -> dict[str, Any]:
    """The service's latest drain report, once the agent has judged it complete."""
    deadline = time.monotonic() + 10
    while True:
        status, _, body = agent.get(f"/api/v1/report?service={service}")
        reports = json.loads(body)["reports"] if status == 200 else []
        latest: dict[str, Any] = reports[0] if reports else {}
        if latest.get("complete") or time.monotonic() > deadline:
            return latest
        time.sleep(0.1)


def _violations(drain: Drain) -> set[str]:
    return {str(violation["rule"]) for violation in drain.report.get("violations", [])}


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    with running_agent("--drain-budget", str(BUDGET_SECONDS)) as running:
        yield running


@pytest.mark.parametrize("kind_name", list(SERVICE_KINDS))
def test_a_broken_shutdown_is_flagged_with_what_was_in_flight(
    agent: AgentProcess, kind_name: str
) -> None:
    """Health closed first, the stop not awaited, exit with 10 in flight: all flagged."""
    kind = SERVICE_KINDS[kind_name]
    service = f"{kind_name}-broken"
    drain = asyncio.run(asyncio.wait_for(_drive(agent, kind, "broken", service), 90))
    assert not any(outcome.ok for outcome in drain.outcomes), drain.outcomes
    violations = _violations(drain)
    expected = {"health_closed_before_business", "readiness_not_failed_first", "inflight_at_exit"}
    if kind.stop_step:
        expected.add("exited_before_stop_completed")
    assert expected <= violations, drain.report
    assert (
        drain.samples.value("drainwatch_inflight_at_exit", service=service, protocol=kind.protocol)
        == IN_FLIGHT
    )
    for rule in expected:
        assert (
            drain.samples.value("drainwatch_shutdown_violations_total", service=service, rule=rule)
            == 1
        )


@pytest.mark.parametrize("kind_name", list(SERVICE_KINDS))
def test_a_good_shutdown_has_no_violation_and_every_request_ends_ok(
    agent: AgentProcess, kind_name: str
) -> None:
    """Readiness off, propagation wait, awaited stop, health last: clean, 10 ok outcomes."""
    kind = SERVICE_KINDS[kind_name]
    service = f"{kind_name}-good"
    drain = asyncio.run(asyncio.wait_for(_drive(agent, kind, "good", service), 90))
    assert drain.exit_code == 0
    assert all(outcome.ok for outcome in drain.outcomes), drain.outcomes
    assert _violations(drain) == set(), drain.report
    assert (
        drain.samples.value(
            "drainwatch_requests_total",
            service=service,
            protocol=kind.protocol,
            method=kind.method,
            outcome="ok",
        )
        == IN_FLIGHT
    )
    assert (
        drain.samples.value("drainwatch_inflight_at_exit", service=service, protocol=kind.protocol)
        == 0
    )
    # The drain ends when the last request does: when its response reached the client. The
    # process exits later (the health listener closes last, then the interpreter winds down).
    duration = drain.samples.value("drainwatch_drain_duration_seconds", service=service)
    last_response = max(outcome.ended_at for outcome in drain.outcomes) - drain.signalled_at
    assert duration is not None and abs(duration - last_response) < 0.2, (duration, last_response)
    exit_seconds = drain.exited_at - drain.signalled_at
    assert duration <= exit_seconds, (duration, exit_seconds)
    assert abs(drain.report["shutdown_seconds"] - exit_seconds) < 0.5, drain.report
