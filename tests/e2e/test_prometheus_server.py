"""A real Prometheus server scrapes the agent through a whole drain of a service that knows
nothing about drainwatch, and stores the values the drain ends with: the agent outlives its
target until a scrape has taken them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from drainwatch.agent.loadgen import free_port, wait_for_port

from tests.processes import running_agent

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "examples" / "services" / "inventory_threaded.py"
PROMETHEUS = shutil.which("prometheus")
JOB = "drainwatch"
# Prometheus hands new targets to its scrape loops on a 5 s tick, so the first scrape comes
# late; the rest of the waits are short but the machine may be busy.
STARTUP_SECONDS = 20.0
WAIT_SECONDS = 10.0
# The agent's own limits: long enough that, when it exits quickly, a scrape released it.
TARGET_EXIT_WAIT = 10.0
FINAL_METRICS_SECONDS = 10.0

T = TypeVar("T")
Labels = dict[str, str]


def poll(what: str, check: Callable[[], T | None], timeout: float = WAIT_SECONDS) -> T:
    """Call ``check`` until it returns something other than None; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


class PrometheusServer:
    """``prometheus`` on a free loopback port, scraping one target every 200 ms.

    Sample timestamps are Prometheus' wall clock at the start of each scrape: the same clock
    as ``time.time()`` here, which is what lets the test order scrapes and process exits.
    """

    def __init__(self, binary: str, directory: Path, target: str) -> None:
        config = {
            # A scrape that takes longer than the interval fails rather than overlapping.
            "global": {"scrape_interval": "200ms", "scrape_timeout": "200ms"},
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }
        config_path = directory / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = directory / "prometheus.log"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={directory / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    # Only what went wrong, so that the log fits in a failure's notes.
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def wait_ready(self) -> None:
        def ready() -> bool | None:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited at start:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    return True if response.status == 200 else None
            except OSError:
                return None

        poll("prometheus /-/ready", ready, STARTUP_SECONDS)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{url}: HTTP {error.code}: {error.read().decode()}") from error
        assert answer["status"] == "success", answer
        return answer["data"]

    def target_health(self) -> str | None:
        targets = self.api("targets", state="active")["activeTargets"]
        return next((t["health"] for t in targets if t["labels"]["job"] == JOB), None)

    def vector(self, expr: str, at: float) -> list[tuple[Labels, float]]:
        """An instant query evaluated at ``at`` (Unix seconds)."""
        data = self.api("query", query=expr, time=f"{at:.3f}")
        assert data["resultType"] == "vector", data
        return [(row["metric"], float(row["value"][1])) for row in data["result"]]

    def value(self, expr: str, at: float) -> float:
        """The single value of ``expr`` at ``at``; fails when there is none or several."""
        rows = self.vector(expr, at)
        assert len(rows) == 1, f"{expr} @ {at:.3f}: {rows}"
        return rows[0][1]

    def samples(self, selector: str, at: float, window: str = "5m") -> list[tuple[float, float]]:
        """The raw (timestamp, value) samples of one series scraped in ``window`` before ``at``.

        A range selector leaves out the staleness markers a failed scrape writes.
        """
        data = self.api("query", query=f"{selector}[{window}]", time=f"{at:.3f}")
        assert data["resultType"] == "matrix", data
        assert len(data["result"]) == 1, f"{selector}: {data['result']}"
        return [(float(ts), float(value)) for ts, value in data["result"][0]["values"]]


@contextmanager
def running_prometheus(directory: Path, target: str) -> Iterator[PrometheusServer]:
    if PROMETHEUS is None:
        raise AssertionError("prometheus is missing: install Debian's 'prometheus' package")
    server = PrometheusServer(PROMETHEUS, directory, target)
    try:
        server.wait_ready()
        yield server
    except AssertionError as error:
        if log := server.log().strip():
            error.add_note(f"prometheus log:\n{log}")
        raise
    finally:
        server.stop()


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
        running_prometheus(tmp_path, agent.url.removeprefix("http://")) as prometheus,
    ):
        poll(
            "the agent as an up target",
            lambda: prometheus.target_health() == "up" or None,
            STARTUP_SECONDS,
        )
        # Stored before the drain: both listeners up and the liveness probe passing.
        poll("listeners and liveness up in Prometheus", lambda: _running(prometheus) or None)
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
