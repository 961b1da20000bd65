"""Faults with real processes: the agent killed and restarted mid-drain, killed while writing,
a full state directory, the ingest socket deleted or replaced, py-spy hanging, targets that
fork (with and without Python's fork hooks), and a wall clock stepped during a drain."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from drainwatch.agent.state_dir import QUARANTINE

from tests.processes import AgentProcess, run_target, running_agent, short_tmpdir

pytestmark = pytest.mark.e2e

T = TypeVar("T")

HEALTHY = """
import drainwatch
ch = drainwatch.Channel("steady")
ch.put_nowait(1)
ch.close()
drainwatch.flush(timeout=2)
"""


def _until(check: Callable[[], T | bool | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(0.05)


def _reports(agent: AgentProcess, service: str) -> list[dict[str, Any]]:
    status, _, body = agent.get(f"/api/v1/report?service={service}&all=1")
    assert status == 200, body
    reports: list[dict[str, Any]] = json.loads(body)["reports"]
    return reports


class DrainingTarget:
    """A service under ``drainwatch run`` that, on SIGTERM, starts draining and finishes only
    when told to (a line on stdin): its drain can be made to span whatever the test does."""

    SOURCE = """
        import signal, sys, threading, drainwatch
        jobs = drainwatch.Channel("jobs")
        jobs.put_nowait(1)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        print("ready", flush=True)
        stop.wait()
        print("draining", flush=True)
        sys.stdin.readline()
        jobs.get_nowait()
        jobs.close()
        print("exiting", flush=True)
    """

    def __init__(self, endpoint: str, service: str, source: str | None = None) -> None:
        script = Path(short_tmpdir()) / "target.py"
        script.write_text(textwrap.dedent(source or self.SOURCE))
        command = [sys.executable, "-m", "drainwatch", "run", "--service", service, "--"]
        self.process = subprocess.Popen(
            [*command, sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DRAINWATCH_ENDPOINT": endpoint},
        )

    def expect(self, line: str) -> None:
        assert self.process.stdout is not None and self.process.stderr is not None
        got = self.process.stdout.readline().strip()
        assert got == line, (got, self.process.stderr.read() if got == "" else "")

    def tell(self, line: str = "go") -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def draining_target(endpoint: str, service: str, source: str | None = None) -> Iterator[Any]:
    target = DrainingTarget(endpoint, service, source)
    try:
        yield target
    finally:
        target.close()


# -- the agent killed -----------------------------------------------------------------------------


def test_agent_sigkilled_mid_drain_and_restarted_keeps_the_drain_and_its_end(
    tmp_path: Path,
) -> None:
    """The report saved before the kill is served by the next agent on the same state dir,
    and the drain's end, reported after the restart, completes the same report."""
    state = tmp_path / "state"
    first = AgentProcess("--state-dir", str(state))
    endpoint = first.endpoint
    try:
        with draining_target(endpoint, "payments") as target:
            target.expect("ready")
            target.process.send_signal(signal.SIGTERM)
            target.expect("draining")
            _until(lambda: _reports(first, "payments"), 10, "a report in progress")
            saved = _until(lambda: list(state.glob("report-*.json")), 10, "a saved report")
            signalled = _reports(first, "payments")[0]["signal"]["at"]
            first.process.send_signal(signal.SIGKILL)
            assert first.process.wait(10) == -signal.SIGKILL
            assert json.loads(saved[0].read_text())["report"]["signal"]["at"] == signalled
            with running_agent("--state-dir", str(state), "--ingest", endpoint) as second:
                restored = _reports(second, "payments")
                assert [report["signal"]["at"] for report in restored] == [signalled]
                target.tell()
                target.expect("exiting")
                assert target.process.wait(10) == 0

                def complete() -> dict[str, Any] | None:
                    reports = [r for r in _reports(second, "payments") if r["complete"]]
                    return reports[0] if reports else None

                report = _until(complete, 15, "the completed report")
                samples = second.wait_for(
                    "drainwatch_channel_closed_timestamp_seconds", channel="jobs"
                )
    finally:
        first.stop()
    assert report["signal"]["at"] == signalled
    assert report["ended"] is not None and report["ended"] >= signalled
    assert samples.value("drainwatch_channel_closed_timestamp_seconds", channel="jobs")
    assert not (state / QUARANTINE).exists()


def _complete_shutdown(index: int, now: float) -> dict[str, Any]:
    return {
        "type": "shutdown",
        "phase": "stopped",
        "signals": [{"signal": "SIGTERM", "at": now}],
        "steps": {"drain": {"started": now, "finished": now + 1, "ok": True, "detail": None}},
        "ready": False,
        "ready_changed": now,
        "health": {},
        "listeners": {},
        "exited": now + 1 + index / 1000,
        "exit_code": 0,
    }


def _send_drains(socket_path: str, count: int, blob: int) -> None:
    """``count`` finished shutdowns of distinct processes, as fast as the agent takes them."""
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sender.connect(socket_path)
    now = time.time()
    try:
        for index in range(count):
            record = _complete_shutdown(index, now)
            record["steps"] |= {
                f"step-{n}-{'x' * blob}": {
                    "started": now,
                    "finished": None,
                    "ok": None,
                    "detail": None,
                }
                for n in range(8)
            }
            message = {
                "v": 1,
                "service": f"svc-{index % 20}",
                "instance": f"writer-{index}",
                "pid": 1000 + index,
                "seq": 1,
                "time": now,
                "dropped": 0,
                "records": [record],
            }
            sender.sendall(json.dumps(message).encode())
    except OSError:
        pass  # the agent was killed under us: that is the point
    finally:
        sender.close()


@pytest.mark.timeout(240)
def test_an_agent_killed_while_writing_reports_never_corrupts_the_state_dir(
    tmp_path: Path,
) -> None:
    """Five agents SIGKILLed at random points of a burst of report writes: every file left is
    a whole report, the next agent quarantines nothing and serves what was saved."""
    state = tmp_path / "state"
    rng = __import__("random").Random(9)
    for _ in range(5):
        agent = AgentProcess("--state-dir", str(state), "--state-history", "200")
        try:
            _send_drains(agent.socket_path, 200, 800)
            time.sleep(rng.uniform(0.3, 1.5))  # reports are being built and written
        finally:
            agent.process.send_signal(signal.SIGKILL)
            agent.process.wait(10)
            agent.stop()
        for path in state.glob("report-*.json"):
            document = json.loads(path.read_bytes())  # a torn file would not parse
            assert document["format"] == 1 and document["report"]["service"].startswith("svc-")
    saved = sorted(state.glob("report-*.json"))
    assert saved, "no report was ever saved"
    with running_agent("--state-dir", str(state), "--state-history", "200") as agent:
        samples = agent.scrape()
        served = {
            report["instance"]
            for report in json.loads(agent.get("/api/v1/report?all=1")[2])["reports"]
        }
    assert not (state / QUARANTINE).exists()
    assert all(value == 0 for _, value in samples.all("drainwatch_state_dir_quarantined_total"))
    assert {json.loads(path.read_bytes())["report"]["instance"] for path in saved} <= served


# -- a full disk ----------------------------------------------------------------------------------


@contextmanager
def small_tmpfs(size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted for the test (needs root: CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mountpoint = Path(short_tmpdir()) / "full"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def _fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` up to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def test_a_full_state_dir_is_counted_and_the_report_still_served_then_saved_again() -> None:
    """On a real full filesystem (tmpfs): the write fails as no_space, the agent stays up and
    serves the report from memory; once space is freed the next report is saved."""
    with small_tmpfs("256k") as state, running_agent("--state-dir", str(state)) as agent:
        filler = _fill(state)
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sender.connect(agent.socket_path)
        now = time.time()
        message = {"v": 1, "service": "full", "instance": "a", "pid": 10, "seq": 1, "time": now}
        sender.send(
            json.dumps({**message, "dropped": 0, "records": [_complete_shutdown(0, now)]}).encode()
        )
        errors = agent.wait_for(
            "drainwatch_state_dir_write_errors_total", reason="no_space", timeout=15
        )
        _until(
            lambda: (
                (
                    agent.scrape().value(
                        "drainwatch_state_dir_write_errors_total", reason="no_space"
                    )
                    or 0
                )
                >= 1
            ),
            15,
            "a no_space write error",
        )
        assert [report["instance"] for report in _reports(agent, "full")] == ["a"]
        assert agent.get("/healthz")[0] == 200
        assert not list(state.glob("report-*.json"))
        filler.unlink()
        second = {**message, "instance": "b", "pid": 11}
        sender.send(
            json.dumps({**second, "dropped": 0, "records": [_complete_shutdown(1, now)]}).encode()
        )
        sender.close()
        saved = _until(lambda: list(state.glob("report-*.json")), 15, "a report saved again")
        log = agent.log()
    assert errors.value("drainwatch_state_dir_write_errors_total", reason="no_space") is not None
    assert saved
    assert "free space on the volume" in log and "saved in" in log


# -- the ingest socket ----------------------------------------------------------------------------


def _restored(agent: AgentProcess, reason: str) -> float:
    return agent.scrape().value("drainwatch_agent_ingest_socket_restored_total", reason=reason) or 0


def test_a_deleted_or_replaced_ingest_socket_is_bound_again() -> None:
    """Deleted, or replaced by a plain file: within seconds the agent listens at the path
    again and a process started afterwards reports; each repair is counted."""
    with running_agent() as agent:
        os.unlink(agent.socket_path)
        _until(lambda: _restored(agent, "deleted") == 1, 10, "the socket bound again")
        run_target(HEALTHY, agent.endpoint, service="after-delete")
        agent.wait_for("drainwatch_channel_closed_timestamp_seconds", service="after-delete")
        os.unlink(agent.socket_path)
        Path(agent.socket_path).write_text("not a socket")
        _until(lambda: _restored(agent, "replaced") == 1, 10, "the file replaced by the socket")
        result = run_target(HEALTHY, agent.endpoint, service="after-replace")
        samples = agent.wait_for(
            "drainwatch_channel_closed_timestamp_seconds", service="after-replace"
        )
        log = agent.log()
    assert result.returncode == 0
    assert samples.value("drainwatch_channel_closed_timestamp_seconds", service="after-replace")
    assert "was deleted; listening there again" in log


def test_a_socket_another_process_serves_is_left_alone_and_reported() -> None:
    """Another listener at the path is not fought over: reported as taken, and the path is
    taken back once that listener is gone."""
    with running_agent() as agent:
        os.unlink(agent.socket_path)
        other = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        other.bind(agent.socket_path)
        other.listen(8)
        try:
            _until(
                lambda: agent.scrape().value("drainwatch_agent_ingest_socket_taken") == 1,
                10,
                "the path reported as taken",
            )
            time.sleep(2.5)  # two more checks: still not touched
            assert os.path.exists(agent.socket_path)
            assert _restored(agent, "replaced") == 0
        finally:
            other.close()
        os.unlink(agent.socket_path)
        _until(lambda: _restored(agent, "deleted") == 1, 10, "the path taken back")
        samples = agent.scrape()
        log = agent.log()
    assert samples.value("drainwatch_agent_ingest_socket_taken") == 0
    assert "another process now listens on" in log


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

            timeouts = _until(lambda: timed_out() >= 2 and timed_out(), 20, "two timed-out dumps")
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
        samples = _until(
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
        after = _until(
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
            reports = [r for r in _reports(agent, "stepped") if r["complete"]]
            return reports[0] if reports else None

        report = _until(complete, 15, "the completed report")
    assert 0.4 <= report["shutdown_seconds"] < 30, report["shutdown_seconds"]
    assert report["ended"] - report["signal"]["at"] < 30
