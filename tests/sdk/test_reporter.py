"""The reporter: what reaches the agent's socket, when, and what never breaks the application.

The agent is played by ``Receiver`` (a real Unix ``SOCK_SEQPACKET`` socket in /tmp); process
start, exit and fork are tested in child interpreters.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import os
import platform
import queue
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import drainwatch
import pytest
from drainwatch import Channel, ChannelClosed, ThreadChannel, _runtime, watch_queue

from .conftest import Datagram, Receiver, next_line, run_python, subprocess_env

MAX_DATAGRAM_BYTES = 32768  # docs/protocol.md: "packed into datagrams of at most 32768 bytes"


def closed_channel(name: str) -> ThreadChannel[int]:
    channel: ThreadChannel[int] = ThreadChannel(name)
    channel.close()
    return channel


# -- importing does nothing --------------------------------------------------------------------

IMPORT_PROBE = r"""
import json, os, stat, threading

read = []

class RecordingEnviron(type(os.environ)):
    def __getitem__(self, key):
        read.append(key)
        return super().__getitem__(key)

os.environ.__class__ = RecordingEnviron

def sockets():  # open socket descriptors; fstat works without /proc (CI runs in a chroot)
    found = []
    for fd in range(1024):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                found.append(fd)
        except OSError:
            pass
    return found

def state():
    return {
        "threads": threading.active_count(),
        "names": sorted(thread.name for thread in threading.enumerate()),
        "sockets": sockets(),
        "settings_read": sorted({key for key in read if key.startswith("DRAINWATCH_")}),
    }

import drainwatch
after_import = state()
channel = drainwatch.Channel("first")
print(json.dumps({"import": after_import, "channel": state()}))
"""


def test_import_starts_no_thread_opens_no_socket_and_reads_no_setting(socket_dir: str) -> None:
    """``import drainwatch`` does nothing observable; the first channel starts the reporter."""
    endpoint = "unix://" + os.path.join(socket_dir, "nobody.sock")
    result = run_python(IMPORT_PROBE, env=subprocess_env(DRAINWATCH_ENDPOINT=endpoint))
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["import"] == {
        "threads": 1,
        "names": ["MainThread"],
        "sockets": [],
        "settings_read": [],
    }
    assert "drainwatch-reporter" in probe["channel"]["names"]
    assert "DRAINWATCH_ENDPOINT" in probe["channel"]["settings_read"]


# -- events are sent at once -------------------------------------------------------------------


def test_close_is_sent_at_once_with_the_full_channel_state(receiver: Receiver) -> None:
    """A close reaches the agent immediately (snapshots are 60 s apart here), in a v1 envelope."""
    channel: ThreadChannel[int] = ThreadChannel("close-event", maxsize=4, owner="tests")
    channel.put(1)
    channel.put(2)
    channel.get()
    where = f"{__file__}:{next_line()}"
    channel.close()
    found = receiver.wait_for(
        lambda record: record.get("name") == "close-event" and record["trigger"] == "closed",
        timeout=1,
    )
    assert found is not None, "no close event within 1 s"
    datagram, record = found
    assert datagram.body["v"] == 1
    assert datagram.body["service"] == "sdk-tests"
    assert datagram.body["pid"] == os.getpid()
    assert isinstance(datagram.body["instance"], str)
    assert datagram.body["seq"] >= 1
    assert datagram.body["dropped"] == 0
    assert abs(datagram.body["time"] - time.time()) < 1
    assert record["type"] == "channel"
    assert record["kind"] == "thread"
    assert record["owner"] == "tests"
    assert record["sent"] == 2
    assert record["received"] == 1
    assert record["residual"] == 1
    assert record["closed_where"] == where
    assert abs(record["closed"] - time.time()) < 1


def _double_close(name: str) -> object:
    channel = closed_channel(name)
    channel.close()
    return channel


def _send_after_close(name: str) -> object:
    channel: Channel[int] = Channel(name)
    channel.close()
    with contextlib.suppress(ChannelClosed):
        channel.put_nowait(1)
    return channel


def _read_after_close(name: str) -> object:
    channel = closed_channel(name)
    with contextlib.suppress(ChannelClosed):
        channel.get()
    return channel


def _drained(name: str) -> object:
    channel: Channel[int] = Channel(name)
    channel.put_nowait(1)
    channel.close()
    channel.get_nowait()
    return channel


@pytest.mark.parametrize(
    ("trigger", "counter", "action"),
    [
        ("double_close", "double_close", _double_close),
        ("send_after_close", "send_after_close", _send_after_close),
        ("read_after_close", "read_after_close", _read_after_close),
        ("drained", None, _drained),
    ],
)
def test_after_close_events_are_sent_at_once(
    receiver: Receiver, trigger: str, counter: str | None, action: Callable[[str], object]
) -> None:
    """Double close, use after close and drain each reach the agent at once, counted."""
    name = f"event-{trigger}"
    keep = action(name)
    record = receiver.event(name, trigger, timeout=1)
    assert record is not None, f"no {trigger} event within 1 s"
    if counter is not None:
        assert record[counter] == 1
    else:
        assert record["drained"] is not None
    del keep


def test_a_burst_of_reads_after_close_is_rate_limited_but_fully_counted(
    receiver: Receiver,
) -> None:
    """A consumer spinning on a closed channel sends few events; a snapshot soon has the total."""
    channel = closed_channel("burst")
    for _ in range(1000):
        with contextlib.suppress(ChannelClosed):
            channel.get_nowait()
    events = 0
    total_seen = False
    deadline = time.monotonic() + 2
    while not total_seen and (remaining := deadline - time.monotonic()) > 0:
        datagram = receiver.next(remaining)
        if datagram is None:
            break
        for record in datagram.records:
            if record.get("name") != "burst":
                continue
            events += record["trigger"] == "read_after_close"
            total_seen = total_seen or record["read_after_close"] == 1000
    assert total_seen, "the total of 1000 reads after close never arrived"
    assert 1 <= events <= 100


# -- snapshots ---------------------------------------------------------------------------------


def test_snapshots_arrive_every_interval_with_a_process_record(receiver: Receiver) -> None:
    """With ``interval=0.2`` a full snapshot, led by a ``process`` record, comes every ~0.2 s."""
    drainwatch.configure(service="sdk-tests", endpoint=receiver.endpoint, interval=0.2)
    configured = time.monotonic()
    channel: ThreadChannel[int] = ThreadChannel("periodic")
    snapshots: list[Datagram] = []
    deadline = configured + 5
    while len(snapshots) < 4 and (remaining := deadline - time.monotonic()) > 0:
        datagram = receiver.next(remaining)
        if datagram is not None and any(r.get("name") == "periodic" for r in datagram.records):
            snapshots.append(datagram)
    assert len(snapshots) == 4
    arrivals = [configured] + [datagram.at for datagram in snapshots]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert all(0.15 <= gap <= 1.0 for gap in gaps), gaps
    process = snapshots[0].records[0]
    assert process["type"] == "process"
    assert process["python"] == platform.python_version()
    assert process["sdk"] == drainwatch.__version__
    assert process["channels"] >= 1
    assert process["internal_errors"] == 0
    assert abs(process["started"] - time.time()) < 2
    del channel


def test_flush_sends_a_snapshot_now_and_returns_true_when_the_agent_listens(
    receiver: Receiver,
) -> None:
    """``flush()`` hands a full snapshot to the kernel at once and says so."""
    queue_like: queue.Queue[int] = queue.Queue()
    watch_queue(queue_like, "flushed-queue")
    queue_like.put(1)
    assert drainwatch.flush(1.0) is True
    record = receiver.event("flushed-queue", "snapshot", timeout=1)
    assert record is not None
    assert record["kind"] == "thread_queue"
    assert record["sent"] == 1
    assert record["depth"] == 1


def test_non_ascii_names_arrive_intact(receiver: Receiver) -> None:
    """Names travel as UTF-8 JSON, unchanged."""
    name = "Bestellungen-ü-注文-🚀"
    closed_channel(name)
    record = receiver.event(name, "closed", timeout=1)
    assert record is not None


@pytest.mark.parametrize(
    "service", ["sdk-tests", "ü" * 300], ids=["short-service", "long-non-ascii-service"]
)
def test_datagrams_stay_within_32768_bytes_with_2000_long_named_channels(
    receiver: Receiver, service: str
) -> None:
    """A snapshot of 2000 channels with long names is split into datagrams of at most 32 KiB."""
    drainwatch.configure(service=service, endpoint=receiver.endpoint, interval=60)
    channels = [
        ThreadChannel[int](f"{index:04d}-" + "n" * 400, owner="o" * 400) for index in range(2000)
    ]
    for channel in channels[::2]:
        channel.close()
    assert drainwatch.flush(10.0) is True
    seen: set[str] = set()
    sizes: list[int] = []
    deadline = time.monotonic() + 10
    while len(seen) < 2000 and (remaining := deadline - time.monotonic()) > 0:
        datagram = receiver.next(remaining)
        if datagram is None:
            break
        sizes.append(datagram.size)
        seen.update(
            record["name"][:4]
            for record in datagram.records
            if record["type"] == "channel" and record["trigger"] == "snapshot"
        )
    assert len(seen) == 2000, sorted(seen - {f"{index:04d}" for index in range(2000)})
    assert max(sizes) <= MAX_DATAGRAM_BYTES, sorted(sizes)[-3:]
    assert len(channels) == 2000


# -- an absent agent never breaks the application ----------------------------------------------


def exercise_channels(prefix: str) -> None:
    """Use both channel kinds through their whole life, including every misuse."""
    thread_channel: ThreadChannel[int] = ThreadChannel(f"{prefix}-thread", maxsize=1)
    thread_channel.put(1)
    thread_channel.close()
    thread_channel.close()
    assert thread_channel.get() == 1
    for misuse in (thread_channel.get, lambda: thread_channel.put(2)):
        with pytest.raises(ChannelClosed):
            misuse()
    async_channel: Channel[int] = Channel(f"{prefix}-async")
    async_channel.put_nowait(1)
    async_channel.close(immediate=True)
    async_channel.close()
    with pytest.raises(ChannelClosed):
        async_channel.put_nowait(2)


def test_an_absent_unix_agent_never_raises_and_records_count_as_dropped(
    socket_dir: str,
) -> None:
    """With no socket at the endpoint, channels work and every refused record is counted."""
    endpoint = "unix://" + os.path.join(socket_dir, "nobody.sock")
    drainwatch.configure(service="sdk-tests", endpoint=endpoint, interval=60)
    exercise_channels("absent-unix")
    # At least the two closes and two double closes were events that found no agent.
    assert _runtime.current().dropped >= 4


def test_flush_returns_false_within_about_the_timeout_when_nobody_listens(
    socket_dir: str,
) -> None:
    """``flush(t)`` without an agent returns False, without raising, after about ``t`` s."""
    endpoint = "unix://" + os.path.join(socket_dir, "nobody.sock")
    drainwatch.configure(service="sdk-tests", endpoint=endpoint, interval=60)
    channel: ThreadChannel[int] = ThreadChannel("unflushed")
    started = time.monotonic()
    assert drainwatch.flush(0.3) is False
    assert time.monotonic() - started < 1.3
    del channel


def test_an_absent_udp_agent_never_raises() -> None:
    """With nobody on the UDP port (ICMP port-unreachable), channels work and flush returns."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    drainwatch.configure(service="sdk-tests", endpoint=f"udp://127.0.0.1:{port}", interval=60)
    exercise_channels("absent-udp")
    assert isinstance(drainwatch.flush(0.2), bool)
    exercise_channels("absent-udp-again")


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"endpoint": "http://x"},
            r"""^"endpoint" must start with unix:// or udp://: 'http://x'""",
        ),
        (
            {"endpoint": "udp://10.0.0.1:9"},
            r"""^"endpoint" must be a loopback address; 10\.0\.0\.1 is not\..*'udp://10\.0\.0\.1:9'""",
        ),
        ({"endpoint": "unix://relative.sock"}, r"""^"endpoint" .*'unix://relative\.sock'"""),
        ({"interval": 0}, r"""^"interval" must be a number of seconds between .*: 0$"""),
        ({"interval": -1.5}, r"""^"interval" must be .*: -1\.5$"""),
        ({"service": ""}, r"""^"service" must be a non-empty string: ''$"""),
    ],
)
def test_configure_rejects_a_bad_setting_naming_it_and_its_value(
    receiver: Receiver, settings: dict[str, Any], message: str
) -> None:
    """A bad ``configure()`` argument raises ``ValueError`` and the previous settings stay."""
    with pytest.raises(ValueError, match=message):
        drainwatch.configure(**settings)
    closed_channel("still-reporting")
    assert receiver.event("still-reporting", "closed", timeout=1) is not None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DRAINWATCH_ENDPOINT", "http://bad"),
        ("DRAINWATCH_ENDPOINT", "udp://10.0.0.1:9"),
        ("DRAINWATCH_INTERVAL", "soon"),
    ],
)
def test_a_bad_environment_never_raises_in_the_application(variable: str, value: str) -> None:
    """A bad ``DRAINWATCH_*`` variable logs a warning naming it; channels keep working."""
    app = (
        "import drainwatch\n"
        "channel = drainwatch.ThreadChannel('works')\n"
        "channel.put(1)\n"
        "channel.close()\n"
        "assert channel.get() == 1\n"
        "try:\n"
        "    channel.get()\n"
        "except drainwatch.ChannelClosed:\n"
        "    print('closed')\n"
        "print(drainwatch.flush(0.1))\n"
    )
    result = run_python(app, env=subprocess_env(**{variable: value}))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["closed", "False"]
    assert variable in result.stderr
    assert value in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DRAINWATCH_ENDPOINT", "http://bad"), ("DRAINWATCH_INTERVAL", "soon")],
)
def test_configure_with_every_setting_given_ignores_a_bad_environment(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """Explicit ``configure()`` arguments win: a bad variable they replace is not an error."""
    monkeypatch.setenv(variable, value)
    drainwatch.configure(service="explicit", endpoint=receiver.endpoint, interval=60)
    closed_channel("explicitly-configured")
    assert receiver.event("explicitly-configured", "closed", timeout=1) is not None


def test_reconfiguring_keeps_the_process_instance_and_its_sequence(receiver: Receiver) -> None:
    """A second ``configure()`` is not a new process: ``instance`` stays and ``seq`` goes on."""
    closed_channel("before-reconfigure")
    before = receiver.wait_for(lambda record: record.get("name") == "before-reconfigure")
    drainwatch.configure(service="sdk-tests", endpoint=receiver.endpoint, interval=60)
    closed_channel("after-reconfigure")
    after = receiver.wait_for(lambda record: record.get("name") == "after-reconfigure")
    assert before is not None
    assert after is not None
    assert after[0].body["instance"] == before[0].body["instance"]
    assert after[0].body["seq"] > before[0].body["seq"]


def test_reconfiguring_with_the_same_endpoint_keeps_the_connection(receiver: Receiver) -> None:
    """The agent takes a closed connection for the process's end: configure() called again
    (say, inside the loop to watch it) must not close it."""
    closed_channel("first")
    assert receiver.event("first", "closed") is not None
    drainwatch.configure(service="sdk-tests", endpoint=receiver.endpoint, interval=30)
    closed_channel("second")
    assert receiver.event("second", "closed") is not None
    assert receiver.connections == 1


# -- object and process lifetimes --------------------------------------------------------------


@pytest.mark.parametrize("make", [Channel, ThreadChannel])
def test_a_garbage_collected_channel_sends_its_final_state_as_gone(
    receiver: Receiver, make: type[Channel[int]] | type[ThreadChannel[int]]
) -> None:
    """The last state of a collected channel reaches the agent with ``trigger: "gone"``."""
    channel = make("ephemeral")
    channel.put_nowait(1)
    channel.put_nowait(2)
    channel.get_nowait()
    del channel
    gc.collect()
    assert drainwatch.flush(1.0) is True
    record = receiver.event("ephemeral", "gone", timeout=1)
    assert record is not None
    assert record["sent"] == 2
    assert record["received"] == 1
    assert record["depth"] == 1


GC_UNDER_LOCK = r"""
import gc
import itertools
import drainwatch
from drainwatch import _runtime

drainwatch.configure(enabled=False)
reporter = _runtime.current()
gc.disable()  # keep the garbage below for the collection started by hand
channel = drainwatch.ThreadChannel("in-a-cycle")
cycle = [channel]
cycle.append(cycle)
del channel, cycle
# register(), channel_refs() and snapshot_records() allocate while holding this lock, and
# any allocation may start a collection that finalises an unreachable channel.
with reporter._lock:
    gc.collect()
print("finished")
"""


def test_a_channel_collected_while_the_reporter_holds_its_lock_does_not_deadlock() -> None:
    """A channel finalised by a GC that starts inside the reporter's critical section is safe."""
    try:
        result = run_python(GC_UNDER_LOCK, env=subprocess_env(), timeout=5)
    except subprocess.TimeoutExpired:
        result = None
    assert result is not None, "__del__ blocked on the reporter lock its own thread holds"
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "finished"


AT_EXIT_APP = r"""
import sys
import drainwatch

drainwatch.configure(service="exit-test", endpoint=sys.argv[1], interval=60)
channel = drainwatch.ThreadChannel("at-exit")
for item in range(3):
    channel.put(item)
"""


def test_a_final_snapshot_is_sent_at_interpreter_exit(receiver: Receiver) -> None:
    """A process that exits normally sends one last snapshot with its channels' state."""
    result = run_python(AT_EXIT_APP, receiver.endpoint, env=subprocess_env())
    assert result.returncode == 0, result.stderr
    record = receiver.event("at-exit", "snapshot", timeout=2)
    assert record is not None
    assert record["sent"] == 3


FORKING_APP = r"""
import json, os, sys, warnings
import drainwatch

drainwatch.configure(service="fork-test", endpoint=sys.argv[1], interval=60)
inherited = drainwatch.ThreadChannel("inherited")
inherited.put("from-parent")
drainwatch.ThreadChannel("parent-only").close()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # fork with the reporter thread running
    pid = os.fork()
if pid == 0:
    code = 3
    try:
        inherited.close()
        drainwatch.ThreadChannel("child-only").close()
        code = 0 if drainwatch.flush(2.0) else 4
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
print(json.dumps({"parent": os.getpid(), "child": pid, "status": status}))
"""


def test_a_forked_child_reports_as_a_new_instance(receiver: Receiver) -> None:
    """After ``os.fork()`` the child keeps reporting, with its own pid and ``instance``."""
    result = run_python(FORKING_APP, receiver.endpoint, env=subprocess_env())
    assert result.returncode == 0, result.stderr
    pids = json.loads(result.stdout)
    assert pids["status"] == 0, "the child could not flush its reports"
    senders: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 3
    while len(senders) < 3 and (remaining := deadline - time.monotonic()) > 0:
        datagram = receiver.next(remaining)
        if datagram is None:
            break
        for record in datagram.records:
            if record.get("trigger") == "closed":
                senders[record["name"]] = {**datagram.body, "record": record}
    assert set(senders) == {"parent-only", "inherited", "child-only"}
    parent, inherited, child_only = (
        senders[name] for name in ("parent-only", "inherited", "child-only")
    )
    assert parent["pid"] == pids["parent"]
    assert inherited["pid"] == child_only["pid"] == pids["child"]
    assert inherited["instance"] == child_only["instance"] != parent["instance"]
    assert inherited["record"]["sent"] == 1  # the state it inherited from the parent
    assert inherited["record"]["residual"] == 1
