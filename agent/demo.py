"""``drainwatch demo``: an agent, and real services shutting down in front of it.

1. ``examples/orders_pipeline.py`` exercises channels and closes them with mistakes.
2. ``examples/services/payments_grpc_aio.py`` (grpc.aio payments plus an aiohttp health
   server, no drainwatch code in it) runs under ``drainwatch run`` with 10 slow payments in
   flight when it gets SIGTERM: first with the post-mortem's broken shutdown, then with the
   correct one. Each drain report is printed with its verdicts.

The agent keeps serving afterwards (``--once`` exits instead).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .app import Agent
from .config import AgentConfig
from .loadgen import GrpcBurst, free_port, wait_for_port
from .report_cli import render_report
from .state_json import state_document

PIPELINE = Path("examples") / "orders_pipeline.py"
PAYMENTS = Path("examples") / "services" / "payments_grpc_aio.py"
DEMO_SERVICE = "orders-demo"
PAYMENTS_IN_FLIGHT = 10
PAYMENT_MS = 1500
EXIT_FAILED = 1


def find_example(relative: Path, explicit: str | None = None) -> Path | None:
    if explicit:
        path = Path(explicit)
        return path if path.is_file() else None
    package_root = Path(__file__).resolve().parents[1]  # agent/ -> the checkout
    for base in (Path.cwd(), package_root):
        candidate = base / relative
        if candidate.is_file():
            return candidate
    return None


def _timestamp(value: float | None) -> str:
    if value is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(value)) + f".{int(value % 1 * 1000):03d}"


def render_channels(document: dict[str, Any], service: str | None = None) -> str:
    columns = (
        "channel",
        "depth",
        "sent",
        "received",
        "closed at",
        "residual",
        "read-after-close",
        "send-after-close",
        "double-close",
        "health",
    )
    rows = [columns]
    for entry in document["services"]:
        if service is not None and entry["name"] != service:
            continue
        for channel in entry["channels"]:
            rows.append(
                (
                    f"{entry['name']}/{channel['name']}",
                    str(channel["depth"]),
                    str(channel["sent"]),
                    str(channel["received"]),
                    _timestamp(channel["closed"]),
                    "-" if channel["residual"] is None else str(channel["residual"]),
                    str(channel["read_after_close"]),
                    str(channel["send_after_close"]),
                    str(channel["double_close"]),
                    f"{channel['health_score']:g}",
                )
            )
    widths = [max(len(row[index]) for row in rows) for index in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )


async def _channels_part(agent: Agent, script: Path, endpoint: str) -> int:
    print(f"\n== 1. channels: {script} reports to {endpoint}")
    env = {**os.environ, "DRAINWATCH_ENDPOINT": endpoint, "DRAINWATCH_SERVICE": DEMO_SERVICE}
    process = await asyncio.create_subprocess_exec(sys.executable, str(script), env=env)
    code = await process.wait()
    await asyncio.sleep(0.3)  # let the last datagrams land
    print(render_channels(state_document(agent.state), DEMO_SERVICE))
    return code


async def _payments_part(agent: Agent, script: Path, endpoint: str, variant: str) -> int:
    service = f"payments-{variant}"
    port, health_port = free_port(), free_port()
    print(
        f"\n== {2 if variant == 'broken' else 3}. {variant} shutdown: {script.name} under "
        f"drainwatch run, {PAYMENTS_IN_FLIGHT} payments in flight, then SIGTERM"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "drainwatch",
        "run",
        "--service",
        service,
        "--endpoint",
        endpoint,
        "--",
        sys.executable,
        str(script),
        "--port",
        str(port),
        "--health-port",
        str(health_port),
        "--shutdown",
        variant,
        "--propagation",
        "0.5",
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        if not await wait_for_port("127.0.0.1", port):
            print(f"drainwatch demo: {script.name} did not start", file=sys.stderr)
            return EXIT_FAILED
        burst = GrpcBurst(
            f"127.0.0.1:{port}",
            "/payments.Payments/Pay",
            str(PAYMENT_MS).encode(),
            PAYMENTS_IN_FLIGHT,
        )
        burst.start()
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
        outcomes = await burst.outcomes()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    statuses: dict[str, int] = {}
    for outcome in outcomes:
        statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
    print(
        "clients saw: "
        + ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    )
    await asyncio.sleep(1.2)  # the agent judges a process once its last datagrams are in
    document = await asyncio.to_thread(agent.reports.document, service)
    for report in document["reports"]:
        print(render_report(report))
    return 0


async def run_demo(config: AgentConfig, example: str | None, once: bool) -> int:
    pipeline = find_example(PIPELINE, example)
    payments = find_example(PAYMENTS)
    if pipeline is None or payments is None:
        print(
            "drainwatch demo: cannot find the examples (examples/orders_pipeline.py, "
            "examples/services/payments_grpc_aio.py); run it from the drainwatch checkout "
            "or pass --example PATH",
            file=sys.stderr,
        )
        return 2
    agent = Agent(config)
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop), name="drainwatch-agent")
    started = asyncio.create_task(agent.started.wait())
    await asyncio.wait({running, started}, return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        started.cancel()
        await running  # re-raises why the agent could not start
        return EXIT_FAILED
    endpoint = str(config.ingest[0])
    print(f"drainwatch demo: agent up, metrics at http://{agent.http_address}/metrics")
    code = await _channels_part(agent, pipeline, endpoint)
    for variant in ("broken", "good"):
        code = code or await _payments_part(agent, payments, endpoint, variant)
    print()
    print(f"Metrics: curl -s http://{agent.http_address}/metrics | grep drainwatch_")
    print(f"Report:  drainwatch report --agent http://{agent.http_address}")
    if not once:
        print("The agent keeps serving; press Ctrl-C to stop.")
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    else:
        stop.set()
    # A person stopping the demo wants it gone: no waiting for a last scrape.
    agent.hurry.set()
    await running
    return 0 if code == 0 else EXIT_FAILED
