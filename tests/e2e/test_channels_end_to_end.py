"""A real target process using the SDK reports to a real agent process; /metrics tells the truth."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.processes import (
    AgentProcess,
    assert_promtool_clean,
    run_target,
    running_agent,
    started_target,
)

pytestmark = pytest.mark.e2e

TARGET = """
import asyncio, json, time
import drainwatch

async def main():
    facts = {}
    orders = drainwatch.Channel("orders", maxsize=10, owner="producer")
    for n in range(5):
        await orders.put(n)
    facts["orders_created"] = time.time()
    orders.close()                      # graceful, 5 items still buffered
    facts["orders_closed"] = time.time()
    got = [await orders.get() for _ in range(5)]
    facts["orders_drained"] = time.time()
    for _ in range(2):
        try:
            await orders.get()          # read after close
        except drainwatch.ChannelClosed:
            pass
    try:
        orders.put_nowait(99)           # send after close
    except drainwatch.ChannelClosed:
        pass
    orders.close()                      # double close

    cache = drainwatch.Channel("cache")
    for n in range(4):
        cache.put_nowait(n)
    cache.close(immediate=True)         # 4 discarded

    jobs = drainwatch.ThreadChannel("jobs", maxsize=3)
    jobs.put("a")
    jobs.close()
    facts["got"] = got
    drainwatch.flush(timeout=2)
    print(json.dumps(facts))

asyncio.run(main())
"""


def test_contract_metrics_show_each_channel_fact_with_its_value() -> None:
    """Residual at close, after-close use, double close, discards and timestamps reach /metrics."""
    with running_agent() as agent:
        result = run_target(TARGET, agent.endpoint)
        assert result.returncode == 0, result.stderr
        facts = json.loads(result.stdout)
        samples = agent.wait_for(
            "drainwatch_channel_closed_timestamp_seconds", count=3, service="checkout"
        )
    labels = {"service": "checkout", "channel": "orders"}
    assert samples.value("drainwatch_channel_residual_items_at_close", **labels) == 5
    assert samples.value("drainwatch_channel_sent_total", **labels) == 5
    assert samples.value("drainwatch_channel_received_total", **labels) == 5
    assert samples.value("drainwatch_channel_read_after_close_total", **labels) == 2
    assert samples.value("drainwatch_channel_send_after_close_total", **labels) == 1
    assert samples.value("drainwatch_channel_double_close_total", **labels) == 1
    assert samples.value("drainwatch_channel_capacity", **labels) == 10
    assert samples.value("drainwatch_channel_depth", **labels) == 0
    closed = samples.value("drainwatch_channel_closed_timestamp_seconds", **labels)
    drained = samples.value("drainwatch_channel_drained_timestamp_seconds", **labels)
    created = samples.value("drainwatch_channel_created_timestamp_seconds", **labels)
    assert closed is not None and abs(closed - facts["orders_closed"]) < 1.0
    assert drained is not None and abs(drained - facts["orders_drained"]) < 1.0
    assert created is not None and abs(created - facts["orders_created"]) < 1.0
    assert created <= closed <= drained

    cache = {"service": "checkout", "channel": "cache"}
    assert samples.value("drainwatch_channel_discarded_total", **cache) == 4
    assert samples.value("drainwatch_channel_residual_items_at_close", **cache) == 4
    jobs = {"service": "checkout", "channel": "jobs"}
    assert samples.value("drainwatch_channel_residual_items_at_close", **jobs) == 1
    assert samples.value("drainwatch_channel_capacity", **jobs) == 3
    assert samples.value("drainwatch_channel_drained_timestamp_seconds", **jobs) is None
    assert samples.value("drainwatch_channel_health_score", **jobs) is not None


def test_open_channel_has_no_closed_timestamp_and_shows_live_depth() -> None:
    """While a channel is open its closed timestamp is absent and depth/waiters are live."""
    source = """
    import asyncio, drainwatch
    async def main():
        inbox = drainwatch.Channel("inbox", maxsize=8)
        for n in range(3):
            inbox.put_nowait(n)
        idle = drainwatch.Channel("idle")
        waiters = [asyncio.create_task(idle.get()) for _ in range(2)]
        await asyncio.sleep(0.05)
        print("ready", flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
    """
    idle = {"service": "inbox-svc", "channel": "idle"}
    with (
        running_agent() as agent,
        started_target(source, agent.endpoint, service="inbox-svc") as target,
    ):
        assert target.stdout is not None
        assert target.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while True:
            samples = agent.scrape()
            oldest = samples.value("drainwatch_channel_oldest_wait_seconds", op="receive", **idle)
            if oldest is not None and oldest >= 1.0:
                break
            assert time.monotonic() < deadline, samples.text
            time.sleep(0.1)
    inbox = {"service": "inbox-svc", "channel": "inbox"}
    assert samples.value("drainwatch_channel_depth", **inbox) == 3
    assert samples.value("drainwatch_channel_capacity", **inbox) == 8
    assert samples.value("drainwatch_channel_closed_timestamp_seconds", **inbox) is None
    assert samples.value("drainwatch_channel_blocked_waiters", op="receive", **idle) == 2
    assert samples.value("drainwatch_channel_blocked_waiters", op="send", **idle) == 0
    assert samples.value("drainwatch_sdk_processes", service="inbox-svc") == 1


def test_sigkill_right_after_closing_200_channels_loses_no_close() -> None:
    """Closes are sent synchronously, so a SIGKILL right after them loses none."""
    source = """
    import os, signal, drainwatch
    channels = [drainwatch.Channel(f"c{n:03d}") for n in range(200)]
    for channel in channels:
        channel.put_nowait("left behind")
        channel.close()
    os.kill(os.getpid(), signal.SIGKILL)
    """
    with running_agent() as agent:
        result = run_target(
            source, agent.endpoint, service="killed", extra_env={"DRAINWATCH_INTERVAL": "300"}
        )
        assert result.returncode == -9
        samples = agent.wait_for(
            "drainwatch_channel_closed_timestamp_seconds", count=200, service="killed"
        )
    closed = samples.all("drainwatch_channel_closed_timestamp_seconds")
    assert len([labels for labels, _ in closed if labels["service"] == "killed"]) == 200
    residual = samples.all("drainwatch_channel_residual_items_at_close")
    assert sum(value for _, value in residual) == 200
    assert samples.value("drainwatch_sdk_events_dropped_total", service="killed") == 0


def test_exposition_passes_promtool_check_metrics() -> None:
    """``promtool check metrics`` finds nothing to fix in the agent's real exposition."""
    with running_agent() as agent:
        run_target(TARGET, agent.endpoint)
        samples = agent.wait_for("drainwatch_channel_closed_timestamp_seconds", count=3)
    assert_promtool_clean(samples.text)


def test_openmetrics_is_served_when_asked() -> None:
    """A scraper asking for OpenMetrics gets it, with the terminating ``# EOF``."""
    with running_agent() as agent:
        status, content_type, body = agent.get(
            "/metrics", accept="application/openmetrics-text; version=1.0.0"
        )
        plain_status, plain_type, _ = agent.get("/metrics")
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")
    assert plain_status == 200 and plain_type.startswith("text/plain")


def test_unreachable_endpoint_never_raises_in_the_application() -> None:
    """With no agent listening the app runs normally and counts what it could not send.

    Over Unix the kernel refuses every datagram, so ``flush`` reports failure; over UDP
    only the sends after an ICMP port-unreachable fail, so only those are counted.
    """
    source = """
    import asyncio, sys, drainwatch
    from drainwatch import _runtime
    async def main():
        for n in range(50):
            ch = drainwatch.Channel(f"c{n}")
            ch.put_nowait(n)
            ch.close()
            ch.close()
            await ch.get()
            try:
                await ch.get()
            except drainwatch.ChannelClosed:
                pass
        flushed = drainwatch.flush(timeout=0.2)
        print(flushed, _runtime.current().dropped > 0)
    asyncio.run(main())
    """
    unix = run_target(source, "unix:///tmp/dw-nobody-listens/here.sock")
    assert unix.returncode == 0, unix.stderr
    assert unix.stdout.split() == ["False", "True"]
    udp = run_target(source, "udp://127.0.0.1:9")
    assert udp.returncode == 0, udp.stderr
    assert udp.stdout.split()[1] == "True"


def test_agent_stops_on_sigterm_and_removes_its_socket() -> None:
    """SIGTERM ends the agent with exit code 0 and the ingest socket is removed."""
    agent = AgentProcess()
    assert os.path.exists(agent.socket_path)
    assert oct(os.stat(agent.socket_path).st_mode & 0o777) == "0o660"
    assert agent.stop() == 0
    assert not os.path.exists(agent.socket_path)
