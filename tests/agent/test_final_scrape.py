"""A stopping agent leaves after the first scrape that carried its final values, not after a
scrape that was already being rendered when the target's exit was seen.

The agent runs in this process with a real HTTP listener and real scrapes; one collector is
held mid-render by the test, which is what makes the ordering deterministic.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from drainwatch._endpoint import parse_endpoint
from drainwatch.agent.app import Agent
from drainwatch.agent.config import AgentConfig, ListenAddress
from drainwatch.agent.outside_config import OutsideConfig, StateSettings, TargetSettings
from prometheus_client.core import GaugeMetricFamily, Metric

from tests.aio import run, until

FINAL_METRICS_SECONDS = 20.0


class HeldCollector:
    """Blocks each render until the test lets it go (the render runs in a worker thread)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def collect(self) -> Iterator[Metric]:
        self.entered.set()
        self.release.wait(30)
        yield GaugeMetricFamily("held_render", "A render the test holds.", value=1)


def _config(tmp_path: Path) -> AgentConfig:
    return AgentConfig(
        listen=ListenAddress("127.0.0.1", 0),
        ingest=(parse_endpoint(f"unix://{tmp_path / 'ingest.sock'}", setting="ingest"),),
        log_level="warning",
        outside=OutsideConfig(
            target=TargetSettings(exit_wait_seconds=0.0),
            state=StateSettings(final_metrics_seconds=FINAL_METRICS_SECONDS),
        ),
    )


async def _scrape(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as response:
        assert response.status == 200
        return await response.text()


@pytest.mark.timeout(60)
def test_a_scrape_begun_before_the_final_state_does_not_end_the_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="drainwatch.agent")
    agent = Agent(_config(tmp_path))
    held = HeldCollector()
    agent.registry.register(held)

    async def scenario() -> float:
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        await asyncio.wait_for(agent.started.wait(), 10)
        assert agent.http_address is not None
        url = f"http://{agent.http_address}/metrics"
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            early = asyncio.create_task(_scrape(session, url))
            await loop.run_in_executor(None, held.entered.wait, 10)
            # The scrape is mid-render; now the agent stops and settles its final state.
            stop.set()
            await until(lambda: "serving the final metrics" in caplog.text, 10)
            held.release.set()
            assert "held_render 1.0" in await early
            # That page began before the final state: the agent still waits for a scrape.
            await asyncio.sleep(0.3)
            assert not running.done()
            started_final = loop.time()
            await _scrape(session, url)
            await asyncio.wait_for(running, 5)
            return loop.time() - started_final

    left_after = run(scenario(), timeout=50)
    assert left_after < FINAL_METRICS_SECONDS / 4, left_after
