"""A real Prometheus server scrapes the agent through a whole drain of a service that knows
nothing about drainwatch, and stores the values the drain ends with: the agent outlives its
target until a scrape has taken them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from drainwatch.agent.loadgen import free_port, wait_for_port

from tests.processes import running_agent
from tests.prometheus import (
    JOB,
    PROMETHEUS,
    STARTUP_SECONDS,
    PrometheusServer,
    poll,
    running_prometheus,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "examples" / "services" / "inventory_threaded.py"
# The waits are short but the machine may be busy.
WAIT_SECONDS = 10.0
# The agent's own limits: long enough that, when it exits quickly, a scrape released it.
TARGET_EXIT_WAIT = 10.0
FINAL_METRICS_SECONDS = 10.0


@contextmanager
def running_inventory(port: int, health_port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The threaded inventory example with its broken shutdown: health closes 1 s early."""
    command = [sys.executable, str(INVENTORY), "--port", str(port)]
    command += ["--health-port", str(health_port), "--shutdown", "broken", "--linger", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        for listening in (port, health_port):
            assert asyncio.run(wait_for_port("127.0.0.1", listening)), "inventory did not start"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _running(prometheus: PrometheusServer) -> bool:
    now = time.time()
    listeners = prometheus.vector("drainwatch_listener_up == 1", now)
    liveness = prometheus.vector('drainwatch_probe_success{probe="liveness"}', now)
    return len(listeners) == 2 and [value for _, value in liveness] == [1.0]


def _failed_after(
    prometheus: PrometheusServer, selector: str, since: float
) -> list[tuple[float, float]] | None:
    """The samples of ``up`` once one of them is a failed scrape started after ``since``."""
    samples = prometheus.samples(selector, time.time())
    return samples if any(ts > since and value == 0 for ts, value in samples) else None


@pytest.fixture
def prometheus_available() -> None:
    if PROMETHEUS is None and os.geteuid() != 0:
        pytest.skip("needs a real Prometheus: apt-get install prometheus (scripts/test does)")


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("prometheus_available")
def test_prometheus_keeps_the_final_values_of_a_drain(tmp_path: Path) -> None:
    """Prometheus' last successful scrape of a stopping agent holds the drain's final values."""
    port, health_port = free_port(), free_port()
    with (
        running_inventory(port, health_port) as inventory,
        running_agent(
            "--target-exit-wait",
            str(TARGET_EXIT_WAIT),
            "--final-metrics-seconds",
            str(FINAL_METRICS_SECONDS),
            "--target-pid",
            str(inventory.pid),
            "--probe-http",
            f"liveness=http://127.0.0.1:{health_port}/healthz",
            "--sample-interval",
            "0.02",
            "--probe-interval",
            "0.2",
            "--pyspy-interval",
            "0.5",
        ) as agent,
        running_prometheus(tmp_path, {agent.url.removeprefix("http://"): {}}) as prometheus,
    ):
        poll(
            "the agent as an up target",
            lambda: prometheus.target_health() == "up" or None,
            STARTUP_SECONDS,
        )
        # Stored before the drain: both listeners up and the liveness probe passing.
        poll(
            "listeners and liveness up in Prometheus",
            lambda: _running(prometheus) or None,
            WAIT_SECONDS,
        )
        inventory.send_signal(signal.SIGTERM)
        assert inventory.wait(WAIT_SECONDS) == 0
        agent_signalled_at = time.time()
        agent.process.send_signal(signal.SIGTERM)
        exit_code = agent.process.wait(TARGET_EXIT_WAIT + FINAL_METRICS_SECONDS + 5)
        agent_exited_at = time.time()
        assert exit_code == 0, agent.log()
        # A scrape ended the agent's wait for one, not its time limit.
        assert agent_exited_at - agent_signalled_at < FINAL_METRICS_SECONDS / 2, agent.log()
        assert "serving the final metrics until the next scrape" in agent.log()

        # A scrape that started after the agent had exited failed: the one before it, the
        # agent's last, has been stored (a target's scrapes run one after another).
        up = poll(
            "a failed scrape after the agent exited",
            lambda: _failed_after(prometheus, f'up{{job="{JOB}"}}', agent_exited_at),
            WAIT_SECONDS,
        )
        last_scrape = max(ts for ts, value in up if value == 1)
        assert last_scrape < agent_exited_at
        try:
            _check_final_values(prometheus, last_scrape, agent_exited_at)
        except AssertionError as error:
            # The agent's log dates what it noticed (target gone) against its own stop.
            error.add_note(f"agent log:\n{agent.log()}")
            raise


def _check_final_values(prometheus: PrometheusServer, last_scrape: float, before: float) -> None:
    """The values of the agent's last scrape (at ``last_scrape``) describe the whole drain."""

    # Evaluated at the last scrape's own timestamp: later, the failed scrapes' staleness
    # markers hide every series of the target from instant queries.
    def final(expr: str) -> float:
        # A series the last scrape did not carry would still show its older value here.
        scraped_at = prometheus.value(f"timestamp({expr})", last_scrape)
        assert scraped_at == pytest.approx(last_scrape, abs=0.001), expr
        return prometheus.value(expr, last_scrape)

    assert final("drainwatch_target_up") == 0
    assert final('drainwatch_listener_up{role="health"}') == 0
    assert final('drainwatch_listener_up{role="business"}') == 0
    health_closed = final('drainwatch_listener_closed_timestamp_seconds{role="health"}')
    business_closed = final('drainwatch_listener_closed_timestamp_seconds{role="business"}')
    assert health_closed < business_closed
    exited = final("drainwatch_target_exit_timestamp_seconds")
    assert health_closed < exited < before
    liveness = 'drainwatch_probe_success{probe="liveness"}'
    assert final(liveness) == 0
    assert final(f"max_over_time({liveness}[1m])") == 1
    assert final('drainwatch_shutdown_violations_total{rule="health_closed_before_business"}') == 1
