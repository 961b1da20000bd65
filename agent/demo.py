"""``drainwatch demo``: an agent plus an instrumented example service, end to end."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .app import Agent
from .config import AgentConfig
from .state_json import state_document

DEFAULT_EXAMPLE = "orders_pipeline.py"
DEMO_SERVICE = "orders-demo"
EXIT_FAILED = 1


def find_example(explicit: str | None) -> Path | None:
    if explicit:
        path = Path(explicit)
        return path if path.is_file() else None
    package_root = Path(__file__).resolve().parents[1]  # agent/ -> the checkout
    for base in (Path.cwd(), package_root):
        candidate = base / "examples" / DEFAULT_EXAMPLE
        if candidate.is_file():
            return candidate
    return None


def _timestamp(value: float | None) -> str:
    if value is None:
        return "-"
    import time

    return time.strftime("%H:%M:%S", time.localtime(value)) + f".{int(value % 1 * 1000):03d}"


def render_channels(document: dict[str, Any]) -> str:
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
    for service in document["services"]:
        for channel in service["channels"]:
            rows.append(
                (
                    f"{service['name']}/{channel['name']}",
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


async def run_demo(config: AgentConfig, example: str | None, once: bool) -> int:
    script = find_example(example)
    if script is None:
        print(
            "drainwatch demo: cannot find examples/orders_pipeline.py; run it from the "
            "drainwatch checkout or pass --example PATH",
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
    endpoint = config.ingest[0]
    print(f"drainwatch demo: agent up, metrics at http://{agent.http_address}/metrics")
    print(f"drainwatch demo: running {script} (service {DEMO_SERVICE!r}, reporting to {endpoint})")
    env = {**os.environ, "DRAINWATCH_ENDPOINT": str(endpoint), "DRAINWATCH_SERVICE": DEMO_SERVICE}
    process = await asyncio.create_subprocess_exec(sys.executable, str(script), env=env)
    code = await process.wait()
    await asyncio.sleep(0.3)  # let the last datagrams land
    print()
    print(render_channels(state_document(agent.state)))
    print()
    print(f"Metrics: curl -s http://{agent.http_address}/metrics | grep drainwatch_channel")
    print(f"State:   curl -s http://{agent.http_address}/api/v1/state")
    if not once:
        print("The agent keeps serving; press Ctrl-C to stop.")
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    else:
        stop.set()
    await running
    return 0 if code == 0 else EXIT_FAILED
