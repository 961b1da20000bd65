"""The agent's outside view of real targets: no SDK (a threaded service watched by PID, a
non-Python process), an SDK service killed mid-drain, py-spy refused, a target that vanishes
or whose PID is reused, the agent's own SIGTERM, the Pushgateway, and ``drainwatch doctor``."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from drainwatch.agent.loadgen import CallOutcome, GrpcBurst, free_port, wait_for_port

from tests.processes import AgentProcess, Samples, running_agent

pytestmark = pytest.mark.e2e

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "examples" / "services"
INVENTORY = SERVICES / "inventory_threaded.py"
# Fast enough that a short test sees every close and a few dumps; see docs/configuration.md.
FAST = ("--sample-interval", "0.02", "--pyspy-interval", "0.3", "--probe-interval", "0.2")
HEALTH_FIRST = "health_closed_before_business"


# -- waiting ----------------------------------------------------------------------------------


def _until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something other than None or False."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(0.05)


def _scrape_until(
    agent: AgentProcess, accept: Callable[[Samples], bool], timeout: float, what: str
) -> Samples:
    """Scrape until ``accept`` takes a scrape; returns that scrape."""

    def check() -> Samples | None:
        samples = agent.scrape()
        return samples if accept(samples) else None

    return _until(check, timeout, what)


def _metric(
    agent: AgentProcess,
    name: str,
    accept: Callable[[float], bool],
    timeout: float = 10.0,
    **labels: str,
) -> Samples:
    """Scrape until the first sample of ``name`` with ``labels`` has an accepted value."""

    def accepted(samples: Samples) -> bool:
        value = samples.value(name, **labels)
        return value is not None and accept(value)

    return _scrape_until(agent, accepted, timeout, f"{name}{labels} to reach the expected value")


def _reports(agent: AgentProcess, service: str) -> list[dict[str, Any]]:
    status, _, body = agent.get(f"/api/v1/report?service={service}")
    assert status == 200, body
    reports: list[dict[str, Any]] = json.loads(body)["reports"]
    return reports


def _final_report(
    agent: AgentProcess, service: str, *words: str, timeout: float = 10.0
) -> dict[str, Any]:
    """The service's latest report once judged complete, the outside view saw the exit, and
    the last ``words`` (reasons) are in (they are taken in a thread of their own)."""

    def check() -> dict[str, Any] | None:
        reports = _reports(agent, service)
        latest = reports[0] if reports else None
        if latest is None or not latest["complete"]:
            return None
        outside = latest.get("outside") or {}
        if not (outside.get("target") or {}).get("gone"):
            return None
        return latest if all(_last_words(latest, reason) for reason in words) else None

    return _until(check, timeout, f"a complete report of {service} with the target gone")


def _last_words(report: dict[str, Any] | None, reason: str) -> dict[str, Any] | None:
    outside = (report or {}).get("outside") or {}
    return next((w for w in outside.get("last_words", ()) if w["reason"] == reason), None)


def _rules(report: dict[str, Any]) -> set[str]:
    return {str(violation["rule"]) for violation in report["violations"]}


def _violation_counts(samples: Samples, service: str) -> dict[str, float]:
    return {
        labels["rule"]: value
        for labels, value in samples.all("drainwatch_shutdown_violations_total")
        if labels.get("service") == service
    }


def _unavailable(samples: Samples, service: str) -> set[str]:
    return {
        labels["reason"]
        for labels, value in samples.all("drainwatch_sampler_unavailable")
        if labels.get("service") == service and value == 1
    }


def _healthz(agent: AgentProcess) -> int:
    status, _, _ = agent.get("/healthz")
    return status


# -- targets ----------------------------------------------------------------------------------


@dataclass
class Inventory:
    """inventory_threaded.py: business and health ports, a thread stuck in Queue.get."""

    process: subprocess.Popen[str]
    port: int
    health_port: int

    @property
    def pid(self) -> str:
        return str(self.process.pid)

    @property
    def liveness(self) -> str:
        return f"liveness=http://127.0.0.1:{self.health_port}/healthz"

    def terminate(self) -> float:
        """SIGTERM, wait for the exit; returns when the signal was sent."""
        signalled_at = time.time()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(20)
        return signalled_at


@contextmanager
def _stopped_at_exit(command: list[str]) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


@contextmanager
def _inventory(shutdown: str = "good", linger: float = 0.2) -> Iterator[Inventory]:
    port, health_port = free_port(), free_port()
    command = [
        sys.executable,
        str(INVENTORY),
        "--port",
        str(port),
        "--health-port",
        str(health_port),
        "--shutdown",
        shutdown,
        "--linger",
        str(linger),
    ]
    with _stopped_at_exit(command) as process:
        assert process.stdout is not None
        # printed once both ports listen
        assert process.stdout.readline().startswith("inventory:"), "inventory did not start"
        yield Inventory(process, port, health_port)


# An HTTP responder that is not Python: py-spy has nothing to read in it.
_PERL_HTTP = r"""
use IO::Socket::INET;
my $server = IO::Socket::INET->new(
    LocalAddr => "127.0.0.1", LocalPort => $ARGV[0], Listen => 16, ReuseAddr => 1
) or die "listen: $!";
$| = 1;
print "listening\n";
while (my $client = $server->accept) {
    while (my $line = <$client>) { last if $line =~ /^\r?\n$/; }
    print $client "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
    close $client;
}
"""

# Stands in for a py-spy that the kernel refuses (no CAP_SYS_PTRACE): these tests run as
# root with ptrace allowed, so a real refusal cannot happen here. It answers --version like
# py-spy so that only the dumps fail, with py-spy's wording of an EPERM.
_REFUSED_PYSPY = """\
#!/bin/sh
if [ "$1" = "--version" ]; then echo "py-spy 0.4.3"; exit 0; fi
echo "Error: Failed to open process: Operation not permitted (os error 1)" >&2
exit 1
"""

# A process that is not the target: its own thread, its own port.
_IMPOSTOR = """\
import socket, threading, time
listener = socket.create_server(("127.0.0.1", 0))
threading.Thread(target=time.sleep, args=(60,), name="impostor", daemon=True).start()
print(listener.getsockname()[1], flush=True)
time.sleep(60)
"""


# -- a plain threaded service, no SDK ---------------------------------------------------------


@dataclass(frozen=True)
class BrokenRun:
    """One broken shutdown of inventory_threaded.py as an agent saw it, then a new agent."""

    inventory: Inventory
    found_at: float
    signalled_at: float
    serving: Samples
    stopped: Samples
    report: dict[str, Any]
    restored_report: dict[str, Any]
    restored: Samples


BROKEN = "inventory-broken"


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory: pytest.TempPathFactory) -> BrokenRun:
    state_dir = str(tmp_path_factory.mktemp("state"))
    with (
        _inventory("broken", linger=1.0) as inventory,
        running_agent(
            "--service",
            BROKEN,
            "--target-pid",
            inventory.pid,
            "--probe-http",
            inventory.liveness,
            "--state-dir",
            state_dir,
            *FAST,
        ) as agent,
    ):
        found_at = time.time()
        _metric(agent, "drainwatch_probe_success", lambda value: value == 1, probe="liveness")
        serving = _metric(
            agent,
            "drainwatch_thread_blocked_seconds",
            lambda value: value >= 2.0,
            timeout=20,
            thread="restock",
            reason="queue_get",
            source="pyspy",
        )
        signalled_at = inventory.terminate()
        report = _final_report(agent, BROKEN, "target_gone")
        stopped = _metric(agent, "drainwatch_target_up", lambda value: value == 0)
    with running_agent("--service", BROKEN, "--state-dir", state_dir) as restarted:
        # the state dir is read before the agent listens: the report is there at once
        reports = _reports(restarted, BROKEN)
        restored = restarted.scrape()
    assert reports, restarted.log()
    return BrokenRun(
        inventory, found_at, signalled_at, serving, stopped, report, reports[0], restored
    )


def test_listeners_stuck_thread_and_probe_of_a_service_without_sdk(broken_run: BrokenRun) -> None:
    """Watched by PID alone: both ports with their roles, the restock thread stuck in
    Queue.get for 2+ s (py-spy), the liveness probe up then failing, the exit dated."""
    run, service = broken_run, BROKEN
    port, health_port = str(run.inventory.port), str(run.inventory.health_port)
    serving, stopped = run.serving, run.stopped
    for samples, up in ((serving, 1), (stopped, 0)):
        assert samples.value("drainwatch_listener_up", port=port, role="business") == up
        assert samples.value("drainwatch_listener_up", port=health_port, role="health") == up
        assert samples.value("drainwatch_target_up", service=service) == up
        assert samples.value("drainwatch_probe_success", service=service, probe="liveness") == up
    blocked = serving.value(
        "drainwatch_thread_blocked_seconds",
        service=service,
        thread="restock",
        reason="queue_get",
        source="pyspy",
    )
    assert blocked is not None and blocked >= 2.0
    exited = stopped.value("drainwatch_target_exit_timestamp_seconds", service=service)
    assert exited is not None and run.signalled_at < exited < time.time()
    (restock,) = [
        thread
        for thread in run.report["outside"]["blocked_threads"]
        if thread["thread"] == "restock"
    ]
    assert restock["reason"] == "queue_get" and restock["blocked_seconds"] >= 2.0, restock
    assert restock["site"].startswith("Queue.get"), restock


def test_health_closed_first_is_flagged_from_the_socket_timeline(broken_run: BrokenRun) -> None:
    """The health port closing while business still listens is a violation in an outside
    report (no SDK), counted in the metrics, and the exit keeps the last stacks seen."""
    report = broken_run.report
    assert report["source"] == "outside", report
    assert report["pid"] == broken_run.inventory.process.pid
    assert report["killed"] is False and report["exit_code"] is None  # invisible from outside
    assert _rules(report) == {HEALTH_FIRST}, report["violations"]
    outside = report["outside"]
    assert outside["target"]["found_by"] == "pid"
    assert outside["target"]["gone"]["reason"] == "exited"
    health = [row for row in report["steps"] if row["port"] == broken_run.inventory.health_port]
    assert [row["kind"] for row in health] == ["listener"], report["steps"]
    assert report["steps"][-1]["kind"] == "exit", report["steps"]
    # the target was gone by then: the dump before is shown, marked stale
    words = _last_words(report, "target_gone")
    assert words is not None and words["stale"] is True, words
    assert "restock" in {thread["thread"] for thread in words["threads"]}
    counts = _violation_counts(broken_run.stopped, BROKEN)
    assert counts[HEALTH_FIRST] == 1
    assert sum(counts.values()) == 1, counts


def test_a_new_agent_on_the_same_state_dir_serves_the_report(broken_run: BrokenRun) -> None:
    """The report survives the agent: read back from the state dir, served as "restored"
    and counted in the new agent's violation metrics."""
    restored, original = broken_run.restored_report, broken_run.report
    assert restored["source"] == "restored", restored
    assert (restored["pid"], restored["started"]) == (original["pid"], original["started"])
    assert _rules(restored) == {HEALTH_FIRST}
    assert restored["outside"]["target"]["gone"] is not None
    assert _violation_counts(broken_run.restored, BROKEN)[HEALTH_FIRST] == 1


def test_an_outside_report_starts_at_the_first_sign_of_shutdown(broken_run: BrokenRun) -> None:
    """Time zero of an outside report is the first sign seen (the health port closing after
    SIGTERM), not some earlier moment the target was merely seen alive."""
    run = broken_run
    if run.signalled_at - run.found_at > 4.0:
        # past the first rescan, a stale time can fall right before the signal by chance
        pytest.skip("the target ran long enough for a rescan; the check would prove nothing")
    started = run.report["started"]
    assert started >= run.signalled_at - 0.5, f"starts {run.signalled_at - started:.2f} s early"


def test_a_good_shutdown_of_a_service_without_sdk_is_not_flagged() -> None:
    """Business closed first, health last: the outside report has no violation."""
    service = "inventory-good"
    with _inventory("good", linger=0.3) as inventory:
        health = str(inventory.health_port)
        flags = ("--service", service, "--target-pid", inventory.pid, "--health-ports", health)
        with running_agent(*flags, *FAST) as agent:
            serving = _metric(agent, "drainwatch_listener_up", lambda v: v == 1, role="business")
            assert serving.value("drainwatch_listener_up", port=health, role="health") == 1
            inventory.terminate()
            report = _final_report(agent, service)
            stopped = _metric(agent, "drainwatch_target_up", lambda value: value == 0)
    assert report["source"] == "outside"
    assert report["violations"] == [], report["violations"]
    assert set(_violation_counts(stopped, service).values()) == {0}
    closed = {row["role"]: row["closed"] for row in report["outside"]["listeners"]}
    assert closed["business"] <= closed["health"], report["outside"]["listeners"]


# -- an SDK service SIGKILLed during its drain ------------------------------------------------

IN_FLIGHT = 4
REQUEST_MS = 30_000
PAY = "/payments.Payments/Pay"


async def _kill_mid_drain(agent: AgentProcess, service: str) -> list[CallOutcome]:
    """Slow payments in flight, SIGTERM, SIGKILL once the drain used its last-words share."""
    port, health_port = free_port(), free_port()
    command = [
        *(sys.executable, "-m", "drainwatch", "run", "--service", service),
        *("--endpoint", agent.endpoint, "--", sys.executable),
        *(str(SERVICES / "payments_grpc_sync.py"), "--port", str(port)),
        *("--health-port", str(health_port), "--shutdown", "good", "--grace", "60"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert await wait_for_port("127.0.0.1", port), "payments did not start"
        burst = GrpcBurst(f"127.0.0.1:{port}", PAY, str(REQUEST_MS).encode(), IN_FLIGHT)
        burst.start()
        # py-spy saw the handlers (sleeping in the "bank"): there will be stacks to keep
        await asyncio.to_thread(
            _until,
            lambda: _sleeping(agent.scrape(), service) >= IN_FLIGHT,
            20,
            f"py-spy to see {IN_FLIGHT} handlers sleeping",
        )
        await asyncio.to_thread(
            _metric,
            agent,
            "drainwatch_inflight_requests",
            lambda value: value == IN_FLIGHT,
            10,
            service=service,
            method=PAY,
        )
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(
            _until,
            lambda: _last_words(next(iter(_reports(agent, service)), None), "drain_budget"),
            15,
            "the drain_budget last words",
        )
        process.kill()
        process.wait(10)
        return await burst.outcomes()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _sleeping(samples: Samples, service: str) -> int:
    return sum(
        1
        for labels, _ in samples.all("drainwatch_thread_blocked_seconds")
        if labels.get("service") == service and labels.get("reason") == "sleep"
    )


def test_sigkill_during_a_drain_is_reported_with_inflight_and_last_words() -> None:
    """SIGKILL 1 s into a drain: the report says killed, with the payments in flight and
    the stacks py-spy kept when the drain used its share and when the target vanished."""
    service = "payments-killed"
    # last words at 25% of a 4 s budget: 1 s after SIGTERM, while payments still run
    flags = ("--drain-budget", "4", "--last-words-at", "0.25", *FAST)
    with running_agent(*flags) as agent:
        outcomes = asyncio.run(asyncio.wait_for(_kill_mid_drain(agent, service), 90))
        report = _final_report(agent, service, "drain_budget", "target_gone")
    assert not any(outcome.ok for outcome in outcomes), outcomes
    assert report["source"] == "sdk" and report["killed"] is True, report
    assert report["inflight_at_exit"] == {"grpc": IN_FLIGHT}, report
    assert "inflight_at_exit" in _rules(report)
    assert report["outside"]["target"]["found_by"] == "sdk"
    budget = _last_words(report, "drain_budget")
    assert budget is not None and budget["stale"] is False, budget
    assert budget["captured_at"] - report["signal"]["at"] >= 0.95, (budget, report["signal"])
    sleeping = [thread for thread in budget["threads"] if thread["reason"] == "sleep"]
    assert len(sleeping) >= IN_FLIGHT, budget["threads"]
    assert any("pay (payments_grpc_sync.py" in line for line in sleeping[0]["stack"]), sleeping
    gone = _last_words(report, "target_gone")
    assert gone is not None and gone["threads"], gone


# -- failure modes: the agent stays up and says why ---------------------------------------------


def test_pyspy_refused_is_reported_and_the_other_collectors_go_on(tmp_path: Path) -> None:
    """py-spy refused by the kernel: sampler_unavailable{no_ptrace} and a log line; the
    listeners and the probe still follow the target's shutdown."""
    refused = tmp_path / "py-spy"
    refused.write_text(_REFUSED_PYSPY)
    refused.chmod(refused.stat().st_mode | stat.S_IXUSR)
    service = "inventory-refused"
    with _inventory("broken", linger=0.5) as inventory:
        flags = ("--service", service, "--target-pid", inventory.pid, "--probe-http")
        with running_agent(
            *flags, inventory.liveness, "--pyspy-binary", str(refused), *FAST
        ) as agent:
            serving = _scrape_until(
                agent,
                lambda samples: "no_ptrace" in _unavailable(samples, service),
                10,
                "sampler_unavailable{reason=no_ptrace}",
            )
            assert "unavailable (no_ptrace)" in agent.log()
            assert (serving.value("drainwatch_pyspy_samples_total", result="denied") or 0) >= 1
            assert serving.all("drainwatch_thread_blocked_seconds") == []
            port, health = str(inventory.port), str(inventory.health_port)
            assert serving.value("drainwatch_listener_up", port=port) == 1
            assert serving.value("drainwatch_listener_up", port=health) == 1
            _metric(agent, "drainwatch_probe_success", lambda value: value == 1)
            inventory.terminate()
            _metric(agent, "drainwatch_probe_success", lambda value: value == 0)
            stopped = _metric(agent, "drainwatch_listener_up", lambda v: v == 0, port=health)
            report = _final_report(agent, service)
            assert _healthz(agent) == 200
    assert stopped.value("drainwatch_listener_up", port=port) == 0
    assert _rules(report) == {HEALTH_FIRST}
    assert report["outside"]["sampler"]["available"] is False


def test_a_target_that_is_not_python_is_reported_as_such() -> None:
    """A Perl HTTP responder as the target: sampler_unavailable{not_python} and a log line;
    its listener and the probe of it are followed until it exits."""
    service = "not-python"
    port = free_port()
    with _stopped_at_exit(["perl", "-e", _PERL_HTTP, str(port)]) as perl:
        assert perl.stdout is not None and perl.stdout.readline() == "listening\n"
        probe = f"web=http://127.0.0.1:{port}/"
        flags = ("--service", service, "--target-pid", str(perl.pid), "--probe-http", probe)
        with running_agent(*flags, *FAST) as agent:
            serving = _scrape_until(
                agent,
                lambda samples: bool(_unavailable(samples, service)),
                10,
                "a drainwatch_sampler_unavailable reason",
            )
            assert _unavailable(serving, service) == {"not_python"}
            assert "unavailable (not_python)" in agent.log()
            assert serving.value("drainwatch_listener_up", port=str(port)) == 1
            _metric(agent, "drainwatch_probe_success", lambda value: value == 1, probe="web")
            perl.send_signal(signal.SIGTERM)
            perl.wait(10)
            _metric(agent, "drainwatch_target_up", lambda value: value == 0)
            stopped = _metric(agent, "drainwatch_probe_success", lambda v: v == 0, probe="web")
            assert _healthz(agent) == 200
    assert stopped.value("drainwatch_listener_up", port=str(port)) == 0


def test_a_target_killed_mid_dump_leaves_the_agent_up() -> None:
    """SIGKILL while py-spy dumps back to back: the agent stays healthy, the target is down,
    its exit is dated and reported, and nothing in the agent crashed."""
    service = "inventory-vanished"
    back_to_back = ("--pyspy-interval", "0.1", "--pyspy-draining-interval", "0.1")
    with _inventory() as inventory:
        flags = ("--service", service, "--target-pid", inventory.pid, *FAST, *back_to_back)
        with running_agent(*flags, "--pyspy-max-per-minute", "600") as agent:
            _metric(agent, "drainwatch_pyspy_samples_total", lambda v: v >= 3, result="ok")
            inventory.process.kill()
            inventory.process.wait(10)
            _metric(agent, "drainwatch_target_up", lambda value: value == 0)
            # dated by the first sample that found it gone, exported with its report
            _metric(agent, "drainwatch_target_exit_timestamp_seconds", lambda value: value > 0)
            report = _final_report(agent, service)
            assert _healthz(agent) == 200
            assert agent.process.poll() is None
            log = agent.log()
    assert report["source"] == "outside" and report["complete"] is True
    assert report["outside"]["target"]["gone"]["reason"] == "exited"
    assert "Traceback" not in log and "sampling failed" not in log, log


def test_a_new_process_after_the_target_exited_is_not_followed() -> None:
    """After the --target-pid process exits, a new process with the same command line is not
    taken for it. (A PID that really is reused is covered with recorded process tables in
    tests/collectors/test_targets.py::test_reused_target_pid_is_not_followed, and for real
    below when this machine lets a test choose the next PID.)"""
    service = "inventory-replaced"
    flags = ("--service", service, *FAST)
    with _inventory() as first, running_agent(*flags, "--target-pid", first.pid) as agent:
        _metric(agent, "drainwatch_target_up", lambda value: value == 1)
        first.process.kill()
        first.process.wait(10)
        _metric(agent, "drainwatch_target_up", lambda value: value == 0)
        with _inventory() as second:
            # the agent looks for a missing target every second: watch for longer
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                samples = agent.scrape()
                assert samples.value("drainwatch_target_up") == 0
                assert samples.value("drainwatch_listener_up", port=str(second.port)) is None
                assert samples.value("drainwatch_target_restarts_total") == 0
                time.sleep(0.1)
        report = _final_report(agent, service)
        log = agent.log()
    assert report["pid"] == first.process.pid
    assert f"target PID {first.pid} " in log and "gone (exited)" in log, log
    assert f"PID {second.pid}" not in log, log


# -- a PID really reused ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReusedRun:
    """A target killed and its PID handed at once to another process, as an agent saw it."""

    target_pid: int
    impostor_port: int
    samples: Samples
    report: dict[str, Any]
    log: str


def _spawn_with_pid(pid: int, command: list[str]) -> subprocess.Popen[str] | None:
    """Start ``command`` as process ``pid`` by setting the kernel's last PID; None when this
    machine does not allow it (it needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE)."""
    for _ in range(50):  # another process may take the PID between the write and the fork
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as last_pid:
                last_pid.write(str(pid - 1))
        except OSError:
            return None
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        if process.pid == pid:
            return process
        process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
    return None


REUSED = "inventory-reused"


@pytest.fixture(scope="module")
def reused_run() -> Iterator[ReusedRun]:
    # Sampled every 0.5 s: the PID is handed out again before the agent notices the exit,
    # which on a busy node with a small PID space happens with any interval.
    flags = ("--service", REUSED, "--sample-interval", "0.5", "--pyspy-interval", "0.3")
    with _inventory() as inventory, running_agent(*flags, "--target-pid", inventory.pid) as agent:
        _metric(agent, "drainwatch_pyspy_samples_total", lambda v: v >= 1, result="ok")
        inventory.process.kill()
        inventory.process.wait(10)
        impostor = _spawn_with_pid(inventory.process.pid, [sys.executable, "-c", _IMPOSTOR])
        if impostor is None:
            pytest.skip("this machine does not let a test choose the next PID")
        try:
            assert impostor.stdout is not None
            impostor_port = int(impostor.stdout.readline())
            before = agent.scrape().value("drainwatch_pyspy_samples_total", result="ok") or 0
            # give py-spy a few dumps to (wrongly) take: 2 or 3 s at most
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                samples = agent.scrape()
                after = samples.value("drainwatch_pyspy_samples_total", result="ok") or 0
                if after >= before + 2:
                    break
                time.sleep(0.1)
            report = _final_report(agent, REUSED)
            yield ReusedRun(
                inventory.process.pid, impostor_port, agent.scrape(), report, agent.log()
            )
        finally:
            impostor.kill()
            impostor.wait(10)
            if impostor.stdout is not None:
                impostor.stdout.close()


def test_a_reused_pid_is_not_taken_for_the_target(reused_run: ReusedRun) -> None:
    """A new process that got the target's PID is not the target: the target is down,
    gone, and the new process's port is not one of its listeners."""
    samples, report = reused_run.samples, reused_run.report
    assert samples.value("drainwatch_target_up", service=REUSED) == 0
    assert samples.value("drainwatch_listener_up", port=str(reused_run.impostor_port)) is None
    assert samples.value("drainwatch_target_restarts_total", service=REUSED) == 0
    assert report["pid"] == reused_run.target_pid
    assert report["outside"]["target"]["gone"]["reason"] in ("exited", "pid_reused")
    assert f"target PID {reused_run.target_pid} " in reused_run.log


def test_a_reused_pid_is_not_sampled_as_the_target(reused_run: ReusedRun) -> None:
    """Stacks of the process that took the target's PID are neither exported nor kept as
    the target's last words."""
    threads = {
        labels["thread"]
        for labels, _ in reused_run.samples.all("drainwatch_thread_blocked_seconds")
    }
    assert "impostor" not in threads, threads
    for words in reused_run.report["outside"]["last_words"]:
        assert "impostor" not in {thread["thread"] for thread in words["threads"]}, words


# -- the agent's own shutdown -----------------------------------------------------------------


def test_the_agent_waits_for_its_target_then_for_one_last_scrape() -> None:
    """SIGTERM to the agent while the target runs: it keeps serving until the target is gone,
    its next scrape shows the target down, and it exits right after that scrape."""
    service = "inventory-sidecar"
    with _inventory() as inventory:
        flags = ("--service", service, "--target-pid", inventory.pid, *FAST)
        waits = ("--target-exit-wait", "10", "--final-metrics-seconds", "5")
        with running_agent(*flags, *waits) as agent:
            _metric(agent, "drainwatch_target_up", lambda value: value == 1)
            agent.process.send_signal(signal.SIGTERM)
            _until(lambda: "for the target to exit" in agent.log(), 10, "the agent to wait for it")
            assert _healthz(agent) == 200
            assert agent.scrape().value("drainwatch_target_up") == 1
            assert agent.process.poll() is None
            inventory.terminate()
            _until(lambda: "serving the final metrics" in agent.log(), 10, "the final metrics")
            final = agent.scrape()
            scraped_at = time.monotonic()
            code = agent.process.wait(10)
            exited_after = time.monotonic() - scraped_at
    assert final.value("drainwatch_target_up", service=service) == 0
    assert final.value("drainwatch_target_exit_timestamp_seconds", service=service) is not None
    assert code == 0
    assert exited_after < 2.5, exited_after  # the 5 s window was not sat out


# -- the Pushgateway --------------------------------------------------------------------------


@contextmanager
def _pushgateway() -> Iterator[str]:
    binary = "prometheus-pushgateway"
    port = free_port()
    address = f"127.0.0.1:{port}"
    command = [binary, f"--web.listen-address={address}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert asyncio.run(wait_for_port("127.0.0.1", port)), "the Pushgateway did not start"
        yield f"http://{address}"
    finally:
        process.terminate()
        process.wait(10)


def test_the_final_metrics_are_pushed_to_the_pushgateway() -> None:
    """A stopping agent pushes its final drainwatch series, grouped by service and instance
    under its job, and a real Pushgateway serves them after the agent is gone."""
    service, job = "inventory-pushed", "drainwatch-e2e"
    with _pushgateway() as url, _inventory() as inventory:
        flags = ("--service", service, "--target-pid", inventory.pid, *FAST)
        with running_agent(*flags, "--pushgateway", url, "--pushgateway-job", job) as agent:
            _metric(agent, "drainwatch_target_up", lambda value: value == 1)
            inventory.terminate()
            _final_report(agent, service)
        assert agent.process.returncode == 0
        assert "Pushgateway" in agent.log() and "pushed" in agent.log(), agent.log()
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            pushed = Samples(response.read().decode())
    group = {"job": job, "service": service, "instance": socket.gethostname()}
    assert pushed.value("drainwatch_target_up", **group) == 0
    assert pushed.value("drainwatch_target_exit_timestamp_seconds", **group) is not None
    assert pushed.value("drainwatch_listener_up", port=str(inventory.port), **group) == 0
    assert pushed.value("drainwatch_shutdown_violations_total", rule=HEALTH_FIRST, **group) == 0
    assert pushed.value("push_time_seconds", **group) is not None


# -- drainwatch doctor ------------------------------------------------------------------------


def _doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drainwatch", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_doctor_says_whether_pyspy_can_sample_a_python_target() -> None:
    """doctor passes for a live Python target and names binary_missing for a bad binary."""
    source = "import time; print('up', flush=True); time.sleep(60)"
    with _stopped_at_exit([sys.executable, "-c", source]) as target:
        assert target.stdout is not None and target.stdout.readline() == "up\n"
        works = _doctor("--target-pid", str(target.pid))
        missing = _doctor("--target-pid", str(target.pid), "--pyspy-binary", "/nonexistent")
    assert works.returncode == 0, works.stdout + works.stderr
    assert "py-spy sampling works" in works.stdout
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "binary_missing" in missing.stdout
