"""The port timeline: listener periods, roles, contract metrics and the health-last order."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest
from drainwatch.collectors.port_timeline import (
    OUTBOUND,
    PortTimeline,
    SamplingPlan,
    contract_metrics,
)
from drainwatch.collectors.process import ProcessCollector, ProcessSample, ProcessStats
from drainwatch.collectors.shutdown_order import health_closed_before_business
from drainwatch.collectors.sock_diag import SockDiagSockets
from drainwatch.collectors.target_types import ProcessId
from drainwatch.collectors.tcp_sockets import (
    ConnectionCount,
    ListeningSocket,
    PsutilSockets,
    SocketSource,
)
from drainwatch.collectors.timeline_view import (
    BUSINESS,
    HEALTH,
    METRICS,
    UNKNOWN,
    PortRoles,
    TimelineView,
    probe_port,
)

from tests.collectors.recorded.psutil_fakes import FakeClock, FakeHost, RecordedProcess, load

RECORD = load("listener")
STAGES = RECORD["stages"]
HEALTH_PORT: int = RECORD["health_port"]
BUSINESS_PORT: int = RECORD["business_port"]
PID: int = STAGES["serving"]["pid"]
TARGET = ProcessId(PID, STAGES["serving"]["calls"]["create_time"]["value"])
INTERVAL = 0.05


def _replay(*stages: str, roles: PortRoles | None = None) -> tuple[PortTimeline, FakeClock]:
    """Feed the recorded stages, one sample each, ``INTERVAL`` apart."""
    clock = FakeClock(step=0.001)
    timeline = PortTimeline(roles)
    for stage in stages:
        host = FakeHost()
        snapshot = RECORD["denied"] if stage == "denied" else STAGES[stage]
        if "calls" in snapshot:
            host.add(RecordedProcess(snapshot))
        collector = ProcessCollector(process=host.process, sockets=PsutilSockets(), clock=clock)
        timeline.feed(collector.sample([TARGET]))
        clock.advance(INTERVAL)
    return timeline, clock


HEALTH_FIRST = PortRoles(health_ports=frozenset({HEALTH_PORT}))
# the same recording read with the roles swapped: the health port closes last
HEALTH_LAST = PortRoles(health_ports=frozenset({BUSINESS_PORT}))


def _stats(
    pid: int, *ports: int, alive: bool = True, connections: tuple[ConnectionCount, ...] = ()
) -> ProcessStats:
    listening = tuple(ListeningSocket(port, "ipv4", "0.0.0.0") for port in ports)
    return ProcessStats(
        id=ProcessId(pid, 1000.0 + pid),
        alive=alive,
        gone=None if alive else "exited",
        listening=listening if alive else None,
        connections=connections if alive else None,
    )


def _sample(at: float, *processes: ProcessStats, full: bool = True) -> ProcessSample:
    return ProcessSample(at, at + 0.0001, full, processes, "test")


# -- periods and the verdict on recorded samples ----------------------------------------------


def test_recorded_health_first_shutdown_is_flagged() -> None:
    """Health seen gone in one sample and business still listening in a later one is a
    certain violation."""
    timeline, _ = _replay(
        "serving", "health_closed", "health_closed", "business_closed", "zombie", roles=HEALTH_FIRST
    )
    view = timeline.view()
    verdict = health_closed_before_business(view)
    health, business = (
        next(item for item in view.listeners() if item.port == port)
        for port in (HEALTH_PORT, BUSINESS_PORT)
    )
    assert verdict.violated
    assert verdict.at == health.closed_at
    assert f"health port {HEALTH_PORT}" in verdict.explanation
    assert f"business port {BUSINESS_PORT}" in verdict.explanation
    assert "a configured health port" in verdict.explanation
    assert health.closed_at is not None and business.closed_at is not None
    assert health.closed_at < business.closed_at
    assert not business.closed_by_exit
    assert view.target_exit is not None and not view.target_up


def test_one_sample_seeing_health_gone_and_business_up_is_not_enough() -> None:
    """Within one sample the sockets are read one after the other, so a single sample with
    health gone and business up does not prove the order: it is a tie, not flagged."""
    timeline, _ = _replay(
        "serving", "health_closed", "business_closed", "zombie", roles=HEALTH_FIRST
    )
    assert not health_closed_before_business(timeline.view()).violated


def test_recorded_health_last_shutdown_is_not_flagged() -> None:
    """The same closes with the health role on the port that closed last are the right order."""
    timeline, _ = _replay(
        "serving", "health_closed", "health_closed", "business_closed", "zombie", roles=HEALTH_LAST
    )
    verdict = health_closed_before_business(timeline.view())
    assert not verdict.violated and verdict.at is None


def test_closes_seen_in_one_sample_are_a_tie_never_flagged() -> None:
    """Both ports gone in the same sample: the order is unknown, so nothing is flagged."""
    timeline, _ = _replay("serving", "zombie", roles=HEALTH_FIRST)
    verdict = health_closed_before_business(timeline.view())
    assert not verdict.violated
    assert "same sample" in verdict.explanation


def test_business_listening_until_exit_after_health_closed_is_flagged() -> None:
    """Health closed, business kept listening until the process exited: flagged."""
    timeline, _ = _replay(
        "serving", "health_closed", "health_closed", "zombie", "reaped", roles=HEALTH_FIRST
    )
    view = timeline.view()
    verdict = health_closed_before_business(view)
    business = next(item for item in view.listeners() if item.port == BUSINESS_PORT)
    assert verdict.violated and business.closed_by_exit
    assert "stopped only when the target exited" in verdict.explanation


def test_health_closed_with_business_still_open_is_flagged_while_running() -> None:
    """The violation is known as soon as a later sample still sees the business port."""
    timeline, _ = _replay("serving", "health_closed", "health_closed", roles=HEALTH_FIRST)
    verdict = health_closed_before_business(timeline.view())
    assert verdict.violated and "is listening still" in verdict.explanation


def test_a_sample_with_unreadable_sockets_closes_nothing() -> None:
    """A sample that could not read a live process's sockets never closes its ports."""
    timeline, _ = _replay("serving", "denied", "health_closed", roles=HEALTH_FIRST)
    view = timeline.view()
    health = next(item for item in view.intervals if item.port == HEALTH_PORT)
    assert health.closed is not None and health.closed.seq == 3
    assert health.last_seen.seq == 1  # bracketed by the last sample that really saw it


def test_unknown_roles_are_not_judged() -> None:
    """Without health ports, probes or SDK listeners, roles are unknown and nothing is flagged."""
    timeline, _ = _replay("serving", "health_closed", "business_closed")
    view = timeline.view()
    assert {item.role for item in view.listeners()} == {UNKNOWN}
    verdict = health_closed_before_business(view)
    assert not verdict.violated and "roles are unknown" in verdict.explanation


def test_roles_come_from_config_sdk_and_probe_urls() -> None:
    """Configured ports win, then the SDK's listener roles, then ports a health probe targets."""
    roles = PortRoles(
        health_ports=frozenset({8081}),
        metrics_ports=frozenset({9100}),
        probe_targets=("http://127.0.0.1:8082/healthz", "localhost:50051/grpc.health.v1"),
        sdk_roles=((8082, BUSINESS), (8083, HEALTH)),
    )
    assert roles.role(8081) == HEALTH
    assert roles.role(9100) == METRICS
    assert roles.role(8082) == BUSINESS  # the SDK knows better than a probe's port
    assert roles.role(8083) == HEALTH
    assert roles.role(50051) == HEALTH
    assert roles.role(8080) == BUSINESS
    assert PortRoles().role(8080) == UNKNOWN


@pytest.mark.parametrize(
    ("target", "port"),
    [
        ("http://10.0.0.1:8081/healthz", 8081),
        ("https://app.local/readyz", 443),
        ("http://[::1]:9000/", 9000),
        ("127.0.0.1:50051", 50051),
        ("[::1]:50051/my.Service", 50051),
        ("not a target", None),
        ("http://host:notaport/", None),
    ],
)
def test_probe_port(target: str, port: int | None) -> None:
    """The port a probe URL or gRPC HOST:PORT[/service] targets."""
    assert probe_port(target) == port


def test_since_and_min_gap_limit_what_is_judged() -> None:
    """Closes before ``since`` are ignored, and a gap below ``min_gap_seconds`` is a tie."""
    timeline, clock = _replay(
        "serving", "health_closed", "health_closed", "business_closed", "zombie", roles=HEALTH_FIRST
    )
    view = timeline.view()
    assert not health_closed_before_business(view, since=clock.now).violated
    assert not health_closed_before_business(view, min_gap_seconds=1.0).violated
    assert health_closed_before_business(view, min_gap_seconds=0.01).violated


# -- synthetic samples: workers, restarts, metrics --------------------------------------------


def test_a_port_shared_by_workers_stays_up_until_the_last_one_goes() -> None:
    """One worker exiting does not close the shared port; the last one exiting does."""
    timeline = PortTimeline(PortRoles(health_ports=frozenset({8081})))
    timeline.feed(_sample(1.0, _stats(10, 8080), _stats(11, 8080)))
    timeline.feed(_sample(1.1, _stats(10, 8080), _stats(11, alive=False)))
    up = timeline.view()
    timeline.feed(_sample(1.2, _stats(10, alive=False), _stats(11, alive=False)))
    down = timeline.view()
    assert [item.up for item in up.listeners()] == [True] and up.target_up
    (listener,) = down.listeners()
    assert not listener.up and listener.closed_by_exit and listener.closed_at == 1.2
    assert down.target_exit is not None and down.target_exit.started == 1.2
    assert [(item.id.pid, item.noticed.started) for item in down.exits] == [(11, 1.1), (10, 1.2)]


def test_a_restart_opens_a_new_period_and_clears_the_exit() -> None:
    """After a restart the port has a new period and the target is up again."""
    timeline = PortTimeline(PortRoles(health_ports=frozenset({8081})))
    timeline.feed(_sample(1.0, _stats(10, 8080, 8081)))
    timeline.feed(_sample(1.1, _stats(10, 8080)))
    timeline.feed(_sample(1.2, _stats(10, 8080)))
    timeline.feed(_sample(1.3, _stats(10, alive=False)))
    exited = timeline.view()
    timeline.feed(_sample(5.0, _stats(20, 8080, 8081)))
    view = timeline.view()
    assert exited.target_exit is not None and not exited.target_up
    assert view.target_up and view.target_exit is None
    assert [(item.port, item.up) for item in view.intervals] == [
        (8080, False),
        (8081, False),
        (8080, True),
        (8081, True),
    ]
    assert health_closed_before_business(view).violated  # the first shutdown
    assert not health_closed_before_business(view, since=5.0).violated


def test_contract_metrics_follow_the_metric_names_and_labels() -> None:
    """The timeline backs listener_up, listener_closed_timestamp_seconds, tcp_connections,
    target_up and target_exit_timestamp_seconds, with the contract's labels."""
    roles = PortRoles(health_ports=frozenset({8081}))
    timeline = PortTimeline(roles)
    serving = (ConnectionCount(8080, "ESTABLISHED", 3), ConnectionCount(41234, "ESTABLISHED", 1))
    timeline.feed(_sample(1.0, _stats(10, 8080, 8081, connections=serving)))
    draining = (ConnectionCount(8080, "CLOSE_WAIT", 1),)
    timeline.feed(_sample(1.1, _stats(10, 8080, connections=draining)))
    metrics = {(item.name, item.labels): item.value for item in contract_metrics(timeline.view())}
    assert metrics == {
        ("drainwatch_listener_up", (("port", "8080"), ("role", "business"))): 1.0,
        ("drainwatch_listener_up", (("port", "8081"), ("role", "health"))): 0.0,
        (
            "drainwatch_listener_closed_timestamp_seconds",
            (("port", "8081"), ("role", "health")),
        ): 1.1,
        ("drainwatch_tcp_connections", (("port", "8080"), ("state", "CLOSE_WAIT"))): 1,
        ("drainwatch_tcp_connections", (("port", "8080"), ("state", "ESTABLISHED"))): 0,
        ("drainwatch_tcp_connections", (("port", OUTBOUND), ("state", "ESTABLISHED"))): 0,
        ("drainwatch_target_up", ()): 1.0,
    }
    timeline.feed(_sample(1.2, _stats(10, alive=False)))
    after = {(item.name, item.labels): item.value for item in contract_metrics(timeline.view())}
    assert after[("drainwatch_target_up", ())] == 0.0
    assert after[("drainwatch_target_exit_timestamp_seconds", ())] == 1.2
    assert after[("drainwatch_tcp_connections", (("port", "8080"), ("state", "CLOSE_WAIT")))] == 0


def test_light_samples_leave_connection_counts_alone() -> None:
    """Listeners-only samples update ports but keep the last full sample's connection counts."""
    timeline = PortTimeline()
    established = (ConnectionCount(8080, "ESTABLISHED", 2),)
    timeline.feed(_sample(1.0, _stats(10, 8080, connections=established)))
    timeline.feed(_sample(1.1, _stats(10, 8080), full=False))
    view = timeline.view()
    assert view.connections == (("8080", "ESTABLISHED", 2),)
    assert view.last_full is not None and view.last_full.seq == 1


def test_ports_beyond_the_cap_are_counted_not_kept() -> None:
    """A target opening many ports cannot grow the timeline past its port cap."""
    timeline = PortTimeline(max_ports=2, max_intervals=2)
    timeline.feed(_sample(1.0, _stats(10, 1, 2, 3, 4)))
    for index in range(5):
        timeline.feed(_sample(2.0 + index, _stats(10)))
        timeline.feed(_sample(2.5 + index, _stats(10, 1, 2, 3, 4)))
    view = timeline.view()
    assert {item.port for item in view.intervals} == {1, 2}
    assert len(view.intervals) == 4 and view.capped_ports == 2


def test_sampling_plan_goes_fast_on_a_change_and_back_after_the_hold() -> None:
    """Sampling tightens when a port or process changes (or on a hint) and relaxes later."""
    plan = SamplingPlan()
    timeline = PortTimeline()
    timeline.feed(_sample(1.0, _stats(10, 8080)))  # the first sight of a port is a change
    assert plan.next_sample(timeline.view(), now=1.01) == (plan.draining_seconds, False)
    quiet = 1.0 + plan.hold_seconds + 1.0
    assert plan.next_sample(timeline.view(), now=quiet) == (plan.idle_seconds, True)
    assert plan.next_sample(timeline.view(), now=quiet, hint=True)[0] == plan.draining_seconds
    assert 2 * plan.draining_seconds + 0.01 < 0.1  # two closes 100 ms apart are ordered


def test_sampling_plan_stretches_intervals_for_slow_samples() -> None:
    """A costly sample (psutil fallback, many connections) stretches the interval so that
    sampling stays within its share of a core."""
    plan = SamplingPlan()
    timeline = PortTimeline()
    timeline.feed(ProcessSample(1.0, 1.02, True, (_stats(10, 8080),), "psutil", None, 0.012))
    quiet = 1.0 + plan.hold_seconds + 1.0
    interval, full = plan.next_sample(timeline.view(), now=quiet)
    assert interval == pytest.approx(0.012 / plan.idle_share) and full
    interval, full = plan.next_sample(timeline.view(), now=1.1, hint=True)
    assert interval == pytest.approx(0.012 / plan.draining_share) and not full


def test_view_is_a_snapshot() -> None:
    """A view does not change when the timeline is fed afterwards."""
    timeline = PortTimeline()
    timeline.feed(_sample(1.0, _stats(10, 8080)))
    before = timeline.view()
    timeline.feed(_sample(1.1, _stats(10)))
    assert before.listeners()[0].up and not timeline.view().listeners()[0].up


# -- real processes ---------------------------------------------------------------------------

# Listens on two ports; on "go" closes one, then the other `gap` seconds later, then exits.
CLOSER = """
import socket, sys, time
first, second = (socket.create_server(("127.0.0.1", 0)) for _ in range(2))
print(first.getsockname()[1], second.getsockname()[1], flush=True)
sys.stdin.readline()
first.close()
time.sleep(float(sys.argv[1]))
second.close()
time.sleep(0.05)
"""


@contextmanager
def _closer(gap: float) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    """A real process listening on two ports that, when told to, closes the first, the
    second ``gap`` seconds later, and exits."""
    process = subprocess.Popen(
        [sys.executable, "-c", CLOSER, str(gap)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first, second = map(int, process.stdout.readline().split())
        yield process, first, second
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def _watch_shutdown(
    process: subprocess.Popen[str], roles: PortRoles, sockets: SocketSource, interval: float
) -> tuple[TimelineView, float]:
    """Sample a real process every ``interval`` s, tell it to shut down, and keep sampling
    until its exit has been seen (bounded by a deadline). Also returns the longest pause
    between two samples during the shutdown."""
    target = ProcessId(process.pid, psutil.Process(process.pid).create_time())
    collector, timeline = ProcessCollector(sockets=sockets), PortTimeline(roles)
    assert process.stdin is not None
    for _ in range(3):
        timeline.feed(collector.sample([target], full=False))
        time.sleep(interval)
    process.stdin.write("go\n")
    process.stdin.flush()
    starts: list[float] = []
    deadline = time.monotonic() + 10
    while timeline.view().target_up and time.monotonic() < deadline:
        starts.append(timeline.feed(collector.sample([target], full=False)).started)
        time.sleep(interval)
    pauses = [later - earlier for earlier, later in itertools.pairwise(starts)]
    return timeline.view(), max(pauses, default=0.0)


# psutil reads /proc/PID/net/tcp*, about 10 ms per sample (more on a loaded host): with a
# 20 ms pause its period is 30-45 ms, too slow to always order closes 100 ms apart
@pytest.mark.parametrize(
    ("sockets", "gap"), [(SockDiagSockets, 0.1), (PsutilSockets, 0.3)], ids=["sock_diag", "psutil"]
)
def test_real_health_closed_first_is_flagged_from_the_timeline(
    sockets: type[SocketSource], gap: float
) -> None:
    """A real process that closes its health port 100 ms before its business port and exits
    is flagged, with the closes ordered and the exit noticed after them."""
    # Ordering needs two samples inside the gap; a host so loaded that this process was not
    # scheduled for gap/2 cannot give that, so such an attempt is run again (at most 3).
    for _ in range(3):
        with _closer(gap) as (process, health, business):
            roles = PortRoles(health_ports=frozenset({health}))
            view, pause = _watch_shutdown(process, roles, sockets(), interval=0.02)
        if pause < gap / 2:
            break
    else:
        pytest.skip(f"the sampler was starved for {pause:.3f} s in every attempt")
    verdict = health_closed_before_business(view)
    by_port = {item.port: item for item in view.listeners()}
    assert verdict.violated, verdict.explanation
    health_closed, business_closed = by_port[health].closed_at, by_port[business].closed_at
    assert health_closed is not None and business_closed is not None
    assert health_closed < business_closed
    assert view.target_exit is not None and not view.target_up
    assert view.target_exit.started >= by_port[business].last_seen_at


def test_real_health_closed_last_is_not_flagged() -> None:
    """The same real shutdown with the health port closing last is not flagged."""
    with _closer(0.1) as (process, business, health):
        roles = PortRoles(health_ports=frozenset({health}))
        view, _ = _watch_shutdown(process, roles, SockDiagSockets(), interval=0.02)
    verdict = health_closed_before_business(view)
    assert not verdict.violated, verdict.explanation
    assert view.target_exit is not None
    assert {item.port: item.role for item in view.listeners()} == {
        business: BUSINESS,
        health: HEALTH,
    }


def _follow_plan(plan: SamplingPlan) -> tuple[TimelineView, list[bool], float]:
    """Sample a real two-port target as ``plan`` says; once sampling is idle, tell it to
    shut down. Returns the timeline, the modes seen after that, and the longest pause."""
    with _closer(0.1) as (process, health, _):
        target = ProcessId(process.pid, psutil.Process(process.pid).create_time())
        collector = ProcessCollector()
        timeline = PortTimeline(PortRoles(probe_targets=(f"http://127.0.0.1:{health}/healthz",)))
        assert process.stdin is not None
        wait, full, modes, starts = 0.0, True, list[bool](), list[float]()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(wait)
            starts.append(timeline.feed(collector.sample([target], full=full)).started)
            view = timeline.view()
            if not view.target_up:
                break
            draining = plan.draining(view, time.time())
            if modes:
                modes.append(draining)
            elif not draining:  # idle at last: now the target shuts down
                process.stdin.write("go\n")
                process.stdin.flush()
                modes.append(draining)
                starts = starts[-1:]
            wait, full = plan.next_sample(view, time.time())
    pauses = [later - earlier for earlier, later in itertools.pairwise(starts)]
    return timeline.view(), modes, max(pauses, default=0.0)


def test_real_shutdown_is_ordered_when_sampling_by_the_plan_from_idle() -> None:
    """Sampling as ``SamplingPlan`` says, starting idle (50 ms, listeners only), the first
    close switches to 20 ms soon enough to order closes 100 ms apart, without any SDK."""
    plan = SamplingPlan(hold_seconds=0.1)
    for _ in range(3):  # as above: an attempt whose sampler was starved is run again
        view, modes, pause = _follow_plan(plan)
        if pause < plan.idle_seconds + 0.02:
            break
    else:
        pytest.skip(f"the sampler was starved for {pause:.3f} s in every attempt")
    assert modes[0] is False and True in modes
    verdict = health_closed_before_business(view)
    assert verdict.violated, verdict.explanation
    assert "targeted by a health probe" in verdict.explanation
