"""Faults of the agent and its files, with real processes: the agent killed and restarted
mid-drain, killed while writing, a full state directory, the ingest socket deleted,
replaced or taken."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from drainwatch.agent.state_dir import QUARANTINE

from tests.e2e.draining import HEALTHY, draining_target, reports, until
from tests.processes import AgentProcess, run_target, running_agent, short_tmpdir

pytestmark = pytest.mark.e2e

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
            until(lambda: reports(first, "payments"), 10, "a report in progress")
            saved = until(lambda: list(state.glob("report-*.json")), 10, "a saved report")
            signalled = reports(first, "payments")[0]["signal"]["at"]
            first.process.send_signal(signal.SIGKILL)
            assert first.process.wait(10) == -signal.SIGKILL
            assert json.loads(saved[0].read_text())["report"]["signal"]["at"] == signalled
            with running_agent("--state-dir", str(state), "--ingest", endpoint) as second:
                restored = reports(second, "payments")
                assert [report["signal"]["at"] for report in restored] == [signalled]
                target.tell()
                target.expect("exiting")
                assert target.process.wait(10) == 0

                def complete() -> dict[str, Any] | None:
                    done = [r for r in reports(second, "payments") if r["complete"]]
                    return done[0] if done else None

                report = until(complete, 15, "the completed report")
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
        until(
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
        assert [report["instance"] for report in reports(agent, "full")] == ["a"]
        assert agent.get("/healthz")[0] == 200
        assert not list(state.glob("report-*.json"))
        filler.unlink()
        second = {**message, "instance": "b", "pid": 11}
        sender.send(
            json.dumps({**second, "dropped": 0, "records": [_complete_shutdown(1, now)]}).encode()
        )
        sender.close()
        saved = until(lambda: list(state.glob("report-*.json")), 15, "a report saved again")
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
        until(lambda: _restored(agent, "deleted") == 1, 10, "the socket bound again")
        run_target(HEALTHY, agent.endpoint, service="after-delete")
        agent.wait_for("drainwatch_channel_closed_timestamp_seconds", service="after-delete")
        os.unlink(agent.socket_path)
        Path(agent.socket_path).write_text("not a socket")
        until(lambda: _restored(agent, "replaced") == 1, 10, "the file replaced by the socket")
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
            until(
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
        until(lambda: _restored(agent, "deleted") == 1, 10, "the path taken back")
        samples = agent.scrape()
        log = agent.log()
    assert samples.value("drainwatch_agent_ingest_socket_taken") == 0
    assert "another process now listens on" in log
