"""Target discovery: by PID, command line or SDK report; workers; PID reuse and restarts."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from drainwatch.collectors.port_timeline import PortTimeline
from drainwatch.collectors.process import ProcessCollector
from drainwatch.collectors.target_selector import (
    TargetSelector,
    parse_target_cmdline,
    parse_target_pid,
)
from drainwatch.collectors.target_types import SdkProcess, Targets
from drainwatch.collectors.targets import TargetDiscovery

from tests.collectors.recorded.psutil_fakes import (
    FakeClock,
    FakeHost,
    RecordedProcess,
    load,
    processes_of,
)

WORKERS = load("workers")
PARENT: int = WORKERS["parent"]
CHILDREN: list[int] = WORKERS["children"]
RECORDER: int = WORKERS["recorder"]
ORDERS = re.compile(r"--service=orders")


def _snapshot(pid: int) -> dict[str, Any]:
    return next(item for item in WORKERS["processes"] if item["pid"] == pid)


def _host() -> FakeHost:
    host = FakeHost()
    host.add(*processes_of(WORKERS))
    return host


def _discovery(
    host: FakeHost, selector: TargetSelector, clock: FakeClock | None = None, **options: Any
) -> TargetDiscovery:
    options.setdefault("exclude_own_tree", False)
    return TargetDiscovery(
        selector, pids=host.pids, process=host.process, clock=clock or FakeClock(), **options
    )


def _pids(targets: Targets) -> dict[int, str]:
    return {process.id.pid: process.found_by for process in targets.processes}


# -- recorded process table -------------------------------------------------------------------


def test_parent_and_forked_workers_are_one_service() -> None:
    """A matching parent and its matching forked workers are grouped under the parent."""
    targets = _discovery(_host(), TargetSelector(cmdline=ORDERS)).discover()
    assert _pids(targets) == {PARENT: "cmdline", CHILDREN[0]: "cmdline", CHILDREN[1]: "cmdline"}
    assert [root.pid for root in targets.roots] == [PARENT]
    assert targets.up and targets.problem is None


def test_workers_whose_command_line_differs_are_found_as_children() -> None:
    """Spawned workers (uvicorn --workers) that do not match the pattern join their parent."""
    host = _host()
    for pid in CHILDREN:
        spawned = ["python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main()"]
        host.add(RecordedProcess(_snapshot(pid), cmdline=spawned))
    targets = _discovery(host, TargetSelector(cmdline=ORDERS)).discover()
    assert _pids(targets) == {PARENT: "cmdline", CHILDREN[0]: "child", CHILDREN[1]: "child"}
    only = _discovery(host, TargetSelector(cmdline=ORDERS, include_children=False)).discover()
    assert _pids(only) == {PARENT: "cmdline"}


def test_the_agents_own_process_tree_is_never_a_target() -> None:
    """Processes under the agent (its own command line holds the pattern) are excluded."""
    # as recorded, the service was started by the recorder: the recorder plays the agent
    selector = TargetSelector(cmdline=ORDERS)
    excluded = _discovery(
        _host(), selector, exclude_own_tree=True, own_pid=lambda: RECORDER
    ).discover()
    included = _discovery(_host(), selector, exclude_own_tree=False).discover()
    assert excluded.processes == () and len(included.processes) == 3
    assert excluded.problem is not None and "--target-cmdline" in excluded.problem


def test_target_pid_takes_the_process_and_its_workers() -> None:
    """``--target-pid`` selects that process and its descendants."""
    targets = _discovery(_host(), TargetSelector(pid=PARENT, from_sdk=False)).discover()
    assert _pids(targets) == {PARENT: "pid", CHILDREN[0]: "child", CHILDREN[1]: "child"}


def test_missing_target_pid_says_how_to_fix_it() -> None:
    """A PID with no process names the flag and the shared PID namespace."""
    targets = _discovery(_host(), TargetSelector(pid=4_000_000, from_sdk=False)).discover()
    assert not targets.up
    assert targets.problem is not None
    assert "--target-pid 4000000" in targets.problem
    assert "shareProcessNamespace" in targets.problem


def test_reused_target_pid_is_not_followed() -> None:
    """Once the target PID's process is gone, a new process with that PID is not the target."""
    host, clock = _host(), FakeClock()
    discovery = _discovery(host, TargetSelector(pid=PARENT, from_sdk=False), clock)
    first = discovery.discover()
    clock.advance(1.0)
    original = _snapshot(PARENT)
    created = original["calls"]["create_time"]["value"]
    host.add(RecordedProcess(original, create_time=created + 100.0, ppid=1))
    host.remove(*CHILDREN)
    later = discovery.discover()
    assert first.up and not later.up
    assert [(item.id.pid, item.reason) for item in later.gone if item.id.pid == PARENT] == [
        (PARENT, "pid_reused")
    ]
    assert later.rejected and "different process" in later.rejected[0].reason


def test_sdk_pid_is_accepted_only_if_the_process_started_before_it_reported() -> None:
    """An SDK-reported PID whose process started after the report is a reused PID."""
    host = _host()
    created = _snapshot(PARENT)["calls"]["create_time"]["value"]
    good = SdkProcess(PARENT, "i-1", first_seen=created + 5.0, started=created + 0.5)
    stale = SdkProcess(CHILDREN[0], "i-2", first_seen=created - 50.0, started=created - 60.0)
    discovery = _discovery(host, TargetSelector(from_sdk=True, include_children=False))
    targets = discovery.discover([good, stale])
    assert _pids(targets) == {PARENT: "sdk"}
    (rejected,) = targets.rejected
    assert rejected.pid == CHILDREN[0] and rejected.source == "sdk instance i-2"
    assert "PID was reused" in rejected.reason


def test_sdk_instance_stays_bound_to_its_first_process() -> None:
    """An SDK instance bound to one process never moves to a newcomer at the same PID."""
    host, clock = _host(), FakeClock()
    original = _snapshot(PARENT)
    created = original["calls"]["create_time"]["value"]
    report = SdkProcess(PARENT, "i-1", first_seen=created + 500.0)
    discovery = _discovery(host, TargetSelector(include_children=False), clock)
    assert _pids(discovery.discover([report])) == {PARENT: "sdk"}
    # a newcomer that started before the report's first_seen would pass the time check alone
    host.add(RecordedProcess(original, create_time=created + 1.0))
    clock.advance(1.0)
    later = discovery.discover([report])
    assert not later.up
    assert "is gone" in later.rejected[0].reason
    assert later.gone[0].reason == "pid_reused"


def test_restart_under_a_new_pid_is_picked_up_and_the_old_one_reported_gone() -> None:
    """A service that exits and comes back under a new PID is found again; the old process is
    reported gone with the time it was last seen alive."""
    host, clock = _host(), FakeClock()
    discovery = _discovery(host, TargetSelector(cmdline=ORDERS, from_sdk=False), clock)
    discovery.discover()
    seen_at = clock.now
    clock.advance(1.0)
    host.remove(PARENT, *CHILDREN)
    down = discovery.discover()
    clock.advance(1.0)
    created = _snapshot(PARENT)["calls"]["create_time"]["value"]
    host.add(RecordedProcess(_snapshot(PARENT), pid=PARENT + 100, create_time=created + 2.0))
    back = discovery.discover()
    assert not down.up and down.restarts == 0
    assert {item.id.pid: item.last_seen_alive for item in down.gone} == {
        PARENT: seen_at,
        CHILDREN[0]: seen_at,
        CHILDREN[1]: seen_at,
    }
    assert {item.reason for item in down.gone} == {"exited"}
    assert _pids(back) == {PARENT + 100: "cmdline"}
    assert back.restarts == 1


def test_reused_pid_that_matches_again_is_a_new_process_never_merged() -> None:
    """Same PID, different start time: the old target is gone and the new one is new."""
    host, clock = _host(), FakeClock()
    discovery = _discovery(host, TargetSelector(cmdline=ORDERS, include_children=False), clock)
    first = discovery.discover()
    clock.advance(3.0)
    created = _snapshot(PARENT)["calls"]["create_time"]["value"]
    host.add(RecordedProcess(_snapshot(PARENT), create_time=created + 3.0))
    second = discovery.discover()
    old = next(item for item in first.processes if item.id.pid == PARENT)
    new = next(item for item in second.processes if item.id.pid == PARENT)
    assert old.id != new.id and new.first_seen == clock.now
    assert any(item.id == old.id and item.reason == "pid_reused" for item in second.gone)


def test_unreadable_command_lines_are_counted_and_never_raise() -> None:
    """A process whose command line is refused is skipped and counted; the scan goes on."""
    host = _host()
    host.add(RecordedProcess(_snapshot(1), cmdline=psutil.AccessDenied))
    targets = _discovery(host, TargetSelector(cmdline=ORDERS)).discover()
    assert targets.unreadable == 1 and len(targets.processes) == 3


def test_a_failing_process_table_is_a_problem_not_an_exception() -> None:
    """If the process list itself cannot be read, discovery says so and returns no target."""

    def broken() -> list[int]:
        raise PermissionError("/proc is not mounted")

    discovery = TargetDiscovery(TargetSelector(cmdline=ORDERS), pids=broken, clock=FakeClock())
    targets = discovery.discover()
    assert not targets.up and targets.problem is not None and "/proc" in targets.problem


def test_nothing_configured_says_what_to_set() -> None:
    """With no selector and no SDK report, the problem names the flags to set."""
    targets = _discovery(_host(), TargetSelector()).discover()
    assert targets.problem is not None and "--target-pid or --target-cmdline" in targets.problem


@pytest.mark.parametrize("value", ["0", "-3", "abc", "", 5_000_000, True, None])
def test_bad_target_pid_names_the_setting(value: object) -> None:
    """A bad PID setting is refused with the setting's name, the rule and the value."""
    with pytest.raises(ValueError, match=r"^--target-pid must be a process id from 1"):
        parse_target_pid(value, "--target-pid")


def test_target_settings_are_parsed() -> None:
    """Good PID and pattern settings parse; a bad pattern names the setting and the error."""
    assert parse_target_pid(" 42 ", "--target-pid") == 42
    assert parse_target_cmdline("gunicorn .*app", "--target-cmdline").search("gunicorn x:app")
    with pytest.raises(ValueError, match=r"^target\.cmdline must be a valid regular expression"):
        parse_target_cmdline("app(", "target.cmdline")


# -- real processes ---------------------------------------------------------------------------

FORKING = """
import os, socket, sys, time
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        while True:
            time.sleep(1)
    children.append(pid)
print(listener.getsockname()[1], *children, flush=True)
time.sleep(60)
"""


@pytest.fixture
def token() -> str:
    """A command-line marker unique to this test's processes."""
    return f"--drainwatch-test-{time.monotonic_ns()}"


def _start(source: str, token: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", source, token], stdout=subprocess.PIPE, text=True
    )


def _stop(process: subprocess.Popen[str], token: str) -> None:
    for pid in psutil.pids():
        try:
            candidate = psutil.Process(pid)
            if token in candidate.cmdline() and pid != process.pid:
                candidate.kill()
        except psutil.Error:
            pass
    if process.poll() is None:
        process.kill()
    process.wait(10)
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture
def workers(token: str) -> Iterator[tuple[subprocess.Popen[str], int, list[int]]]:
    """A real parent that forks two workers sharing its listening socket."""
    parent = _start(FORKING, token)
    try:
        assert parent.stdout is not None
        port, *children = map(int, parent.stdout.readline().split())
        yield parent, port, children
    finally:
        _stop(parent, token)


def test_real_forked_workers_are_one_service_listening_on_one_port(
    workers: tuple[subprocess.Popen[str], int, list[int]], token: str
) -> None:
    """A real parent and its two forked workers are found as one service; the shared port
    is one listener that stays up while one worker is killed."""
    parent, port, children = workers
    discovery = TargetDiscovery(
        TargetSelector(cmdline=re.compile(re.escape(token)), from_sdk=False),
        exclude_own_tree=False,
    )
    targets = discovery.discover()
    assert {item.id.pid for item in targets.processes} == {parent.pid, *children}
    assert [root.pid for root in targets.roots] == [parent.pid]
    collector, timeline = ProcessCollector(), PortTimeline()
    sample = collector.sample(targets.ids, full=False)
    assert all(port in {s.port for s in stats.listening or ()} for stats in sample.processes)
    timeline.feed(sample)
    killed = psutil.Process(children[0])
    killed.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 5  # the parent never reaps it: it stays a zombie
    while killed.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    timeline.feed(collector.sample(targets.ids, full=False))
    view = timeline.view()
    (listener,) = view.listeners()
    assert listener.port == port and listener.up and view.target_up
    assert [item.id.pid for item in view.exits] == [children[0]]


def test_real_restart_is_picked_up(token: str) -> None:
    """A real target that exits and is started again is found again under its new PID."""
    source = "import time; time.sleep(60)"
    discovery = TargetDiscovery(
        TargetSelector(cmdline=re.compile(re.escape(token)), from_sdk=False),
        exclude_own_tree=False,
    )
    first = _start(source, token)
    try:
        before = discovery.discover()
    finally:
        _stop(first, token)
    gone = discovery.discover()
    second = _start(source, token)
    try:
        after = discovery.discover()
    finally:
        _stop(second, token)
    assert [item.id.pid for item in before.processes] == [first.pid]
    assert not gone.up and [item.id.pid for item in gone.gone] == [first.pid]
    assert [item.id.pid for item in after.processes] == [second.pid]
    assert after.restarts == 1


def test_real_children_of_the_agent_are_excluded(token: str) -> None:
    """A matching process started by the agent itself is not taken as the target."""
    child = _start("import time; time.sleep(60)", token)
    try:
        selector = TargetSelector(cmdline=re.compile(re.escape(token)), from_sdk=False)
        mine = TargetDiscovery(selector).discover()
        anyone = TargetDiscovery(selector, exclude_own_tree=False).discover()
    finally:
        _stop(child, token)
    assert not mine.up and mine.problem is not None
    assert [item.id.pid for item in anyone.processes] == [child.pid]
