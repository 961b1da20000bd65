"""The shipped rules and dashboards against a real Prometheus (Debian's, on loopback) that
scrapes real agents while the broken example services drain.

Two agents: one hears the SDK of the payments example (grpc.aio, broken shutdown, under
`drainwatch run`, requests in flight at SIGTERM), of the order pipeline example, of a
consumer and a producer spinning on closed channels, of a task parked on a lock, and of a
process that started before the agent listened; it has no py-spy. The other watches the
threaded inventory example from outside (broken shutdown, slower than its 1 s budget) and
samples it with py-spy. A third scrape target has nothing listening. Prometheus evaluates
alerts/drainwatch.rules.yaml every 200 ms; the tests read its HTTP API.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from drainwatch.agent.loadgen import GrpcBurst, free_port, wait_for_port
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.promql import RULES, all_queries, interpolate, recorded_names, selectors
from tests.processes import AgentProcess, running_agent, short_tmpdir, started_target
from tests.prometheus import PrometheusServer, poll, running_prometheus

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "examples" / "services"
NAMESPACE = "shop"
WAIT_SECONDS = 40.0
IN_FLIGHT = 5
PAY_METHOD = "/payments.Payments/Pay"

# A consumer and a producer that never learned about the close: 40 of each in 2 s.
SPINNER = """
import time, drainwatch
orders = drainwatch.Channel("orders", maxsize=10)
orders.close()
for _ in range(40):
    for attempt in (orders.get_nowait, lambda: orders.put_nowait(1)):
        try:
            attempt()
        except drainwatch.ChannelClosed:
            pass
    time.sleep(0.05)
drainwatch.flush(timeout=2)
print("spun", flush=True)
input()
"""

# Closes a channel while no agent listens (the record is dropped and counted), then waits
# for the agent: its next datagram reports the drops.
# A watched loop with a task parked on an asyncio.Lock for as long as the drains take.
LOCKED = """
import asyncio, drainwatch

async def main():
    drainwatch.configure()  # inside the loop: its tasks are watched
    lock = asyncio.Lock()
    await lock.acquire()

    async def settle():
        async with lock:
            pass

    parked = asyncio.create_task(settle(), name="settlement")
    print("parked", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, input)
    parked.cancel()

asyncio.run(main())
"""

EARLY = """
import drainwatch
boot = drainwatch.ThreadChannel("boot")
boot.close()
print("closed", flush=True)
input()
later = drainwatch.ThreadChannel("later")
later.close()
drainwatch.flush(timeout=2)
print("flushed", flush=True)
input()
"""


@dataclass
class Drained:
    prometheus: PrometheusServer
    scrapes: list[str]


def _scrape(agent: AgentProcess) -> str:
    status, _, text = agent.get("/metrics")
    assert status == 200
    return text


async def _drain_payments(agent: AgentProcess) -> None:
    """The broken grpc.aio example under `drainwatch run`, SIGTERM with requests in flight."""
    port, health_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "drainwatch", "run", "--service", "payments",
        "--endpoint", agent.endpoint, "--", sys.executable,
        str(SERVICES / "payments_grpc_aio.py"), "--port", str(port),
        "--health-port", str(health_port), "--shutdown", "broken",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert await wait_for_port("127.0.0.1", port), "payments did not start"
        burst = GrpcBurst(f"127.0.0.1:{port}", PAY_METHOD, b"3000", IN_FLIGHT)
        burst.start()
        deadline = time.monotonic() + 20
        while True:
            samples = await asyncio.to_thread(agent.scrape)
            paying = samples.value(
                "drainwatch_inflight_requests", service="payments", method=PAY_METHOD
            )
            if (paying or 0) >= 1:
                break
            assert time.monotonic() < deadline, "no payment in flight on the agent"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)
        await burst.outcomes()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _run_pipeline(agent: AgentProcess) -> None:
    env = {
        **os.environ,
        "DRAINWATCH_ENDPOINT": agent.endpoint,
        "DRAINWATCH_SERVICE": "orders",
        "DEMO_SECONDS": "0.5",
    }
    script = ROOT / "examples" / "orders_pipeline.py"
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)


@contextmanager
def _inventory_drained(
    stack: ExitStack, prometheus_targets: dict[str, str]
) -> Iterator[AgentProcess]:
    port, health_port = free_port(), free_port()
    inventory = subprocess.Popen(
        [sys.executable, str(SERVICES / "inventory_threaded.py"), "--port", str(port),
         "--health-port", str(health_port), "--shutdown", "broken", "--linger", "2"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    stack.callback(_stop, inventory)
    for listening in (port, health_port):
        assert asyncio.run(wait_for_port("127.0.0.1", listening)), "inventory did not start"
    agent = stack.enter_context(
        running_agent(
            "--service",
            "inventory",
            "--target-pid",
            str(inventory.pid),
            "--drain-budget",
            "1",
            "--probe-http",
            f"liveness=http://127.0.0.1:{health_port}/healthz",
            "--sample-interval",
            "0.02",
            "--probe-interval",
            "0.2",
            "--pyspy-interval",
            "0.3",
        )
    )
    prometheus_targets["inventory-0"] = agent.url.removeprefix("http://")
    yield agent
    inventory.send_signal(signal.SIGTERM)
    assert inventory.wait(20) == 0


@pytest.fixture(scope="module")
def drained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drained]:
    with ExitStack() as stack:
        early_endpoint = f"unix://{short_tmpdir()}/early.sock"
        early = stack.enter_context(started_target(EARLY, early_endpoint, service="early"))
        assert early.stdout is not None and early.stdin is not None
        assert early.stdout.readline().strip() == "closed"
        sdk_dir = short_tmpdir()
        sdk_agent = stack.enter_context(
            running_agent(
                "--ingest",
                f"unix://{sdk_dir}/ingest.sock",
                "--ingest",
                early_endpoint,
                "--drain-budget",
                "20",
                "--pyspy-binary",
                "/nonexistent/py-spy",
            )
        )
        sdk_agent.endpoint = f"unix://{sdk_dir}/ingest.sock"
        targets = {
            "payments-0": sdk_agent.url.removeprefix("http://"),
            "gone-0": f"127.0.0.1:{free_port()}",
        }
        scrapes: list[str] = []
        with _inventory_drained(stack, targets) as outside_agent:
            labelled = {
                address: {"namespace": NAMESPACE, "pod": pod} for pod, address in targets.items()
            }
            directory = tmp_path_factory.mktemp("prometheus")
            prometheus = stack.enter_context(running_prometheus(directory, labelled, [RULES]))
            # the agents' first scrapes: every violation counter at 0
            poll("first scrapes", lambda: _all_up_once(prometheus), WAIT_SECONDS, 0.1)
            # blocked threads are a gauge of now: taken while the target runs
            running = outside_agent.wait_for(
                "drainwatch_thread_blocked_seconds", source="pyspy", timeout=15
            )
            scrapes.append(running.text)
        early.stdin.write("go\n")
        early.stdin.flush()
        assert early.stdout.readline().strip() == "flushed"
        spinner = stack.enter_context(
            started_target(SPINNER, sdk_agent.endpoint, service="spinner")
        )
        assert spinner.stdout is not None
        locked = stack.enter_context(started_target(LOCKED, sdk_agent.endpoint, service="ledger"))
        assert locked.stdout is not None
        assert locked.stdout.readline().strip() == "parked"
        asyncio.run(asyncio.wait_for(_drain_payments(sdk_agent), 90))
        _run_pipeline(sdk_agent)
        assert spinner.stdout.readline().strip() == "spun"
        poll("the agent judged the shutdowns", lambda: _judged(sdk_agent), WAIT_SECONDS, 0.1)
        # the parked task is a gauge of now too: it waits while the ledger runs
        parked = sdk_agent.wait_for(
            "drainwatch_task_blocked_seconds", service="ledger", reason="lock", timeout=15
        )
        scrapes += [parked.text, _scrape(outside_agent)]
        yield Drained(prometheus, scrapes)


def _all_up_once(prometheus: PrometheusServer) -> bool | None:
    rows = prometheus.api("query", query='up{job="drainwatch"} == 1')["result"]
    return True if len(rows) == 2 else None


def _judged(agent: AgentProcess) -> bool | None:
    samples = agent.scrape()
    cut = samples.value(
        "drainwatch_shutdown_violations_total", service="payments", rule="inflight_at_exit"
    )
    residual = samples.value(
        "drainwatch_shutdown_violations_total", service="orders", rule="residual_items_at_exit"
    )
    return True if cut and residual else None


# alert -> the labels of one instance of it the drains above must raise (pending or firing)
EXPECTED = [
    ("DrainwatchHealthClosedBeforeBusiness", {"service": "payments", "pod": "payments-0"}),
    ("DrainwatchHealthClosedBeforeBusiness", {"service": "inventory", "pod": "inventory-0"}),
    ("DrainwatchRequestsAbortedAtExit", {"service": "payments"}),
    ("DrainwatchShutdownOrderViolated", {"rule": "readiness_not_failed_first"}),
    ("DrainwatchShutdownOrderViolated", {"rule": "exited_before_stop_completed"}),
    ("DrainwatchResidualItemsAtExit", {"service": "orders"}),
    ("DrainwatchReadAfterCloseRate", {"service": "spinner", "channel": "orders"}),
    ("DrainwatchSendAfterCloseRate", {"service": "spinner", "channel": "orders"}),
    ("DrainwatchDrainExceededBudget", {"service": "inventory"}),
    ("DrainwatchSamplerUnavailable", {"pod": "payments-0", "reason": "binary_missing"}),
    ("DrainwatchSdkEventsDropped", {"service": "early"}),
    ("DrainwatchAgentDown", {"pod": "gone-0"}),
]  # fmt: skip


def _missing_alerts(prometheus: PrometheusServer) -> list[tuple[str, dict[str, str]]]:
    alerts = prometheus.alerts()
    return [
        (name, labels)
        for name, labels in EXPECTED
        if not any(
            alert["labels"]["alertname"] == name
            and alert["state"] in {"pending", "firing"}
            and labels.items() <= alert["labels"].items()
            for alert in alerts
        )
    ]


@pytest.mark.timeout(240)
def test_the_shipped_rules_raise_the_alerts_of_the_drains(drained: Drained) -> None:
    """Prometheus, evaluating alerts/drainwatch.rules.yaml on what it scraped, has each
    expected alert pending or firing, with the service and pod it is about."""
    missing = _wait_for_alerts(drained.prometheus)
    assert missing == [], (missing, drained.prometheus.alerts())


def _wait_for_alerts(prometheus: PrometheusServer) -> list[tuple[str, dict[str, str]]]:
    deadline = time.monotonic() + WAIT_SECONDS
    missing = _missing_alerts(prometheus)
    while missing and time.monotonic() < deadline:
        time.sleep(0.2)
        missing = _missing_alerts(prometheus)
    return missing


def _queried_metrics() -> set[str]:
    skip = recorded_names() | {"up", "ALERTS"}
    return {
        selector.metric
        for query in all_queries()
        for selector in selectors(interpolate(query.expr))
        if selector.metric and selector.metric not in skip
    }


@pytest.mark.timeout(240)
def test_every_queried_metric_is_on_a_real_agents_metrics_after_a_drain(drained: Drained) -> None:
    """Each metric a panel or rule selects has samples on the agents' /metrics after the
    drains (series names as exposed: counters with _total, histograms with _bucket)."""
    exposed = {
        sample.name
        for text in drained.scrapes
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    missing = sorted(_queried_metrics() - exposed)
    assert not missing, "not on /metrics: " + ", ".join(missing)


@pytest.mark.timeout(240)
def test_every_selector_matches_series_in_prometheus(drained: Drained) -> None:
    """Each selector of each shipped query, its label matchers included (Grafana variables
    set to All), matches series Prometheus stored during the drains: names and label values
    exist, and the recording rules produced their series."""
    unmatched = set()
    for query in all_queries():
        for selector in selectors(interpolate(query.expr)):
            expr = f"count(last_over_time({selector.promql()}[10m]))"
            if not drained.prometheus.api("query", query=expr)["result"]:
                unmatched.add(selector.promql())
    assert not unmatched, "no series for:\n" + "\n".join(sorted(unmatched))


@pytest.mark.timeout(240)
def test_every_panel_query_runs_on_prometheus(drained: Drained) -> None:
    """Prometheus itself parses and evaluates every dashboard and rule expression over the
    last 10 minutes (a range query, as Grafana's panels send)."""
    end = time.time()
    for query in all_queries():
        drained.prometheus.api(
            "query_range",
            query=interpolate(query.expr),
            start=f"{end - 600:.3f}",
            end=f"{end:.3f}",
            step="15",
        )
