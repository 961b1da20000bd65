"""What each task waits on, end to end: real target processes, a real agent, real /metrics,
/api/v1/tasks, ``drainwatch tasks`` and ``drainwatch report``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.processes import (
    AgentProcess,
    Samples,
    assert_promtool_clean,
    running_agent,
    short_tmpdir,
    started_target,
)

pytestmark = pytest.mark.e2e

PARKED = """
import asyncio, sys, time, drainwatch

def blocking_handler():
    time.sleep(0.5)  # sync code in the loop: the stall's stack must name this function

async def consume(channel):
    async for _ in channel:
        pass

async def main():
    drainwatch.configure()  # inside the loop: this loop is watched
    idle = drainwatch.Channel("idle")
    consumers = [asyncio.create_task(consume(idle), name=f"consumer-{i}") for i in range(3)]
    loop = asyncio.get_running_loop()
    print("parked", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    blocking_handler()
    print("unblocked", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    idle.close()
    await asyncio.gather(*consumers)

asyncio.run(main())
"""

STUCK_DRAIN = """
import asyncio, signal, time
import drainwatch  # for the channel only: `drainwatch run` turns tracking on

def flush_caches():
    time.sleep(0.4)  # sync code run by the drain: the loop is blocked

async def consume(jobs):
    async for _ in jobs:
        pass

async def main():
    jobs = drainwatch.Channel("jobs")
    consumer = asyncio.create_task(consume(jobs), name="stuck-consumer")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    flush_caches()
    await consumer  # the drain waits for a consumer nobody wakes: the channel is never closed

asyncio.run(main())
"""


def _poll(
    agent: AgentProcess, done: Callable[[Samples], bool], timeout: float, what: str
) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = agent.scrape()
        if done(samples):
            return samples
        assert time.monotonic() < deadline, f"{what} not seen within {timeout} s"
        time.sleep(0.1)


def _tasks(agent: AgentProcess, service: str) -> dict[str, Any]:
    status, _, body = agent.get(f"/api/v1/tasks?service={service}")
    assert status == 200, body
    [found] = json.loads(body)["services"]
    [instance] = found["instances"]
    [loop] = instance["loops"]
    return {"loop": loop, "threads": instance["threads"]}


def _command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drainwatch", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_tasks_parked_on_a_channel_and_a_blocked_loop_are_seen_through_the_agent() -> None:
    """3 tasks parked 3 s on an empty channel: channel_receive "idle", waits of 3 s and more,
    3 channel waiters; then time.sleep(0.5) in the loop: a lag of 0.4 s and more, with the
    blocking code's stack; in /metrics, /api/v1/tasks and `drainwatch tasks`."""
    service = "tasks-e2e"
    with (
        running_agent() as agent,
        started_target(PARKED, agent.endpoint, service=service) as target,
    ):
        assert target.stdout is not None and target.stdin is not None
        assert target.stdout.readline().strip() == "parked"
        parked_at = time.monotonic()

        def parked_for_3s(samples: Samples) -> bool:
            waits = [
                value
                for labels, value in samples.all("drainwatch_task_blocked_seconds")
                if labels.get("service") == service and labels["task"].startswith("consumer-")
            ]
            return len(waits) == 3 and min(waits) >= 3.0

        samples = _poll(agent, parked_for_3s, 15, "three waits of 3 s")
        assert time.monotonic() - parked_at >= 3.0
        for index in range(3):
            labels = {"service": service, "task": f"consumer-{index}"}
            assert samples.value(
                "drainwatch_task_blocked_seconds", **labels, reason="channel_receive"
            )
        assert (
            samples.value("drainwatch_tasks_blocked", service=service, reason="channel_receive")
            == 3
        )
        waiters = {"service": service, "channel": "idle", "op": "receive"}
        assert samples.value("drainwatch_channel_blocked_waiters", **waiters) == 3
        assert (samples.value("drainwatch_channel_oldest_wait_seconds", **waiters) or 0) >= 3.0
        [site] = [s for s in _tasks(agent, service)["loop"]["sites"] if s["target"] == "idle"]
        assert site["reason"] == "channel_receive" and site["count"] == 3
        dump = _command("tasks", "--agent", agent.url, "--service", service)
        assert dump.returncode == 0, dump.stderr
        assert re.search(
            r'3 tasks \[channel_receive "idle", \d+(\.\d)?s\]: "consumer-\d", "consumer-\d", '
            r'"consumer-\d"',
            dump.stdout,
        ), dump.stdout

        target.stdin.write("block\n")
        target.stdin.flush()
        assert target.stdout.readline().strip() == "unblocked"
        samples = _poll(
            agent,
            lambda s: (
                (s.value("drainwatch_event_loop_lag_max_seconds", service=service) or 0) >= 0.4
            ),
            10,
            "a lag of 0.4 s",
        )
        assert_promtool_clean(samples.text)
        stalls = _tasks(agent, service)["loop"]["stalls"]
        assert any(
            stall["seconds"] >= 0.4
            and any(frame.startswith("blocking_handler (") for frame in stall["stack"])
            for stall in stalls
        ), stalls
        target.stdin.write("stop\n")
        target.stdin.flush()
        assert target.wait(10) == 0, target.stderr.read() if target.stderr else ""


@contextmanager
def _under_drainwatch_run(
    source: str, endpoint: str, service: str
) -> Iterator[subprocess.Popen[str]]:
    script = Path(short_tmpdir()) / "stuck.py"
    script.write_text(textwrap.dedent(source))
    env = {key: value for key, value in os.environ.items() if not key.startswith("DRAINWATCH_")}
    command = [
        sys.executable, "-m", "drainwatch", "run", "--service", service,
        "--endpoint", endpoint, "--", sys.executable, str(script),
    ]  # fmt: skip
    with open(script.parent / "stderr.log", "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            if process.stdout is not None:
                process.stdout.close()


def test_the_drain_report_keeps_the_tasks_alive_at_the_deadline() -> None:
    """Zero code under drainwatch run: a drain stuck on a consumer that nobody wakes is in
    the report, at the 1 s deadline, as what kept the process from exiting; the 0.4 s the
    drain blocked the loop is in it too, with the blocking code."""
    service = "stuck-drain"
    with (
        running_agent("--drain-budget", "1") as agent,
        _under_drainwatch_run(STUCK_DRAIN, agent.endpoint, service) as target,
    ):
        assert target.stdout is not None
        assert target.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        target.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while True:
            status, _, body = agent.get(f"/api/v1/report?service={service}")
            reports = json.loads(body)["reports"] if status == 200 else []
            if reports and reports[0]["tasks_at_deadline"] is not None:
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.2)
        text = _command("report", "--agent", agent.url, "--service", service)
    kept = reports[0]["tasks_at_deadline"]
    assert kept["reason"] == "drain_budget"
    assert kept["deadline"] == pytest.approx(reports[0]["signal"]["at"] + 1, abs=0.01)
    tasks = {entry["task"]: entry for entry in kept["loops"][0]["top"]}
    stuck = tasks["stuck-consumer"]
    assert (stuck["reason"], stuck["target"]) == ("channel_receive", "jobs")
    assert tasks["Task-1"]["reason"] == "task" and tasks["Task-1"]["target"] == "stuck-consumer"
    assert "drain_exceeded_budget" in {v["rule"] for v in reports[0]["violations"]}
    assert "what kept the process from exiting: tasks and threads at the drain deadline" in (
        text.stdout
    )
    assert 'task "stuck-consumer" [channel_receive "jobs"' in text.stdout
    [stall] = reports[0]["loop_stalls"]
    assert stall["seconds"] >= 0.3 and stall["at"] >= reports[0]["signal"]["at"]
    assert any(frame.startswith("flush_caches (") for frame in stall["stack"]), stall
    assert "event loop blocked during the shutdown:" in text.stdout
    assert "flush_caches (" in text.stdout
