"""Faults around the target, with real processes: py-spy hanging, targets that fork (with
and without Python's fork hooks), and a wall clock stepped during a drain."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.draining import draining_target, reports, until
from tests.processes import run_target, running_agent

pytestmark = pytest.mark.e2e

# -- py-spy hanging -------------------------------------------------------------------------------


def test_a_hanging_pyspy_is_killed_at_its_timeout_and_the_agent_goes_on(tmp_path: Path) -> None:
    """Every dump that hangs is killed after --pyspy-timeout (no process left behind) and
    counted as a timeout; the rest of the outside view keeps sampling."""
    # A real py-spy cannot be made to hang on demand; this stand-in never answers, which is
    # what a py-spy stuck on a target looks like to the agent (the real one is run by
    # tests/collectors/test_pyspy.py and tests/e2e/test_outside_view.py).
    hang = tmp_path / "py-spy"
    hang.write_text("#!/bin/sh\nexec sleep 3600\n")
    hang.chmod(0o755)
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with running_agent(
            "--target-pid",
            str(target.pid),
            "--pyspy-binary",
            str(hang),
            "--pyspy-interval",
            "0.2",
            "--pyspy-timeout",
            "0.3",
        ) as agent:

            def timed_out() -> float:
                samples = agent.scrape()
                return samples.value("drainwatch_pyspy_samples_total", result="timeout") or 0

            timeouts = until(lambda: timed_out() >= 2 and timed_out(), 20, "two timed-out dumps")
            leftovers = [
                process.pid
                for process in psutil.process_iter(["cmdline"])
                if process.info["cmdline"] == ["sleep", "3600"]
                and psutil.Process(process.pid).ppid() in (agent.process.pid, 1)
            ]
            up = agent.scrape().value("drainwatch_target_up")
            healthy = agent.get("/healthz")[0]
    finally:
        target.kill()
        target.wait(10)
    assert timeouts >= 2
    assert len(leftovers) <= 1  # at most the dump running right now
    assert up == 1 and healthy == 200


# -- forking targets ------------------------------------------------------------------------------


PREFORK = """
import os, signal, sys, time, drainwatch
workers = []
for n in range(3):
    pid = os.fork()
    if pid == 0:
        jobs = drainwatch.Channel("jobs")
        for item in range(10 * (n + 1)):
            jobs.put_nowait(item)
        drainwatch.flush(timeout=2)
        os.write(1, b"worker %d\\n" % os.getpid())  # one write: lines never interleave
        time.sleep(60)
        os._exit(0)
    workers.append(pid)
jobs = drainwatch.Channel("jobs")
jobs.put_nowait(0)
drainwatch.flush(timeout=2)
os.write(1, b"parent %d\\n" % os.getpid())
sys.stdin.readline()
for pid in workers:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
"""


def test_a_target_forking_workers_reports_each_as_its_own_process() -> None:
    """Three forked workers and their parent are four processes of one service; their
    counters add up, and a worker killed mid-way leaves its counts behind."""
    with running_agent() as agent, draining_target(agent.endpoint, "prefork", PREFORK) as target:
        assert target.process.stdout is not None
        lines = [target.process.stdout.readline().split() for _ in range(4)]
        pids = {int(pid) for _, pid in lines}
        samples = until(
            lambda: (
                (s := agent.scrape()).value("drainwatch_channel_sent_total", channel="jobs") == 61
                and s
            ),
            15,
            "every worker's puts",
        )
        status, _, body = agent.get("/api/v1/state?service=prefork")
        reported = {instance["pid"] for instance in json.loads(body)["services"][0]["instances"]}
        assert samples.value("drainwatch_sdk_processes", service="prefork") == 4
        target.tell()
        assert target.process.wait(10) == 0
        after = until(
            lambda: (
                (s := agent.scrape()).value("drainwatch_sdk_processes", service="prefork") == 0
                and s
            ),
            15,
            "every process seen gone",
        )
    assert status == 200 and reported == pids
    assert after.value("drainwatch_channel_sent_total", channel="jobs") == 61


HOOKLESS_FORK = """
import ctypes, os, drainwatch
parent = drainwatch.Channel("parent-jobs")
parent.put_nowait(1)
drainwatch.flush(timeout=2)
# fork() called from C, as an embedding server or an extension would: Python's at-fork
# hooks do not run (PyDLL keeps the GIL held across the call, as such C code would).
pid = ctypes.PyDLL(None).fork()
if pid == 0:
    child = drainwatch.Channel("child-jobs")
    child.put_nowait(1)
    child.put_nowait(2)
    child.close()
    drainwatch.flush(timeout=2)
    os._exit(0)
os.waitpid(pid, 0)
print(os.getpid(), pid, flush=True)
drainwatch.flush(timeout=2)
"""


def test_sdk_used_after_a_fork_without_hooks_reports_as_the_child() -> None:
    """A child forked from C is noticed by its pid: it reports as a new process with its own
    channel, and its parent's process is not credited with the child's channel."""
    with running_agent() as agent:
        result = run_target(HOOKLESS_FORK, agent.endpoint, service="hookless")
        assert result.returncode == 0, result.stderr
        parent_pid, child_pid = (int(word) for word in result.stdout.split())
        agent.wait_for(
            "drainwatch_channel_closed_timestamp_seconds", service="hookless", channel="child-jobs"
        )
        _, _, body = agent.get("/api/v1/state?service=hookless")
    instances = {
        instance["pid"]: {channel["name"] for channel in instance.get("channels", [])}
        for instance in json.loads(body)["services"][0]["instances"]
    }
    assert set(instances) == {parent_pid, child_pid}, instances
    names = {name for channels in instances.values() for name in channels}
    assert "child-jobs" in names
    assert "child-jobs" in instances[child_pid]  # with the parent's channels it inherited
    assert "child-jobs" not in instances[parent_pid]


# -- the wall clock stepped -----------------------------------------------------------------------


STEPPED = """
import signal, sys, threading, time, drainwatch
jobs = drainwatch.Channel("jobs")
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
print("ready", flush=True)
stop.wait()
print("draining", flush=True)
# The wall clock is stepped an hour ahead mid-drain (what an NTP step or an operator does).
# libfaketime would be the outside way to do it, but its clock_nanosleep breaks time.sleep
# here; replacing time.time moves every wall-clock reading of this process alike.
real_time = time.time
time.time = lambda: real_time() + 3600
time.sleep(0.5)
jobs.close()
print("exiting", flush=True)
"""


def test_a_wall_clock_stepped_during_a_drain_does_not_stretch_it() -> None:
    """Durations come from the monotonic clock: a drain of half a second stays half a second
    when the wall clock jumps an hour in the middle of it."""
    with running_agent() as agent, draining_target(agent.endpoint, "stepped", STEPPED) as target:
        target.expect("ready")
        target.process.send_signal(signal.SIGTERM)
        target.expect("draining")
        target.expect("exiting")
        assert target.process.wait(10) == 0

        def complete() -> dict[str, Any] | None:
            done = [r for r in reports(agent, "stepped") if r["complete"]]
            return done[0] if done else None

        report = until(complete, 15, "the completed report")
    assert 0.4 <= report["shutdown_seconds"] < 30, report["shutdown_seconds"]
    assert report["ended"] - report["signal"]["at"] < 30
