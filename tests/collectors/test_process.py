"""The process collector: stats and TCP sockets of target processes, and why a value is missing."""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psutil
import pytest
from drainwatch.collectors.process import ProcessCollector
from drainwatch.collectors.psutil_types import ProcessHandle
from drainwatch.collectors.sock_diag import (
    ProcFdTable,
    SockDiagSockets,
    parse_sock_diag,
    sock_diag_dump,
)
from drainwatch.collectors.target_types import ProcessId
from drainwatch.collectors.tcp_sockets import (
    ConnectionCount,
    ListeningSocket,
    PsutilSockets,
    SocketReading,
    summarize,
)

from tests.collectors.recorded.psutil_fakes import (
    FakeClock,
    FakeHost,
    RecordedFds,
    RecordedProcess,
    RecordedSockDiag,
    inodes_of,
    load,
)

RECORD = load("listener")
STAGES = RECORD["stages"]
HEALTH = RECORD["health_port"]
BUSINESS = RECORD["business_port"]
PID = STAGES["serving"]["pid"]
CREATED = STAGES["serving"]["calls"]["create_time"]["value"]
TARGET = ProcessId(PID, CREATED)


def _collector(host: FakeHost, sockets: Any = None) -> ProcessCollector:
    return ProcessCollector(
        process=host.process,
        sockets=sockets if sockets is not None else PsutilSockets(),
        clock=FakeClock(step=0.001),
    )


def _host(*processes: RecordedProcess) -> FakeHost:
    host = FakeHost()
    host.add(*processes)
    return host


def _recorded_sock_diag(fds: RecordedFds | None = None) -> SockDiagSockets:
    recorded = RECORD["sock_diag"]
    return SockDiagSockets(
        dump=RecordedSockDiag(recorded),
        fds=fds if fds is not None else RecordedFds(recorded),
        same_netns=lambda pid: True,
    )


class _Fds:
    """An fd table that fails the way /proc does: refused, or the process is gone."""

    def __init__(self, error: OSError) -> None:
        self.error = error

    def sockets(self, pid: int) -> dict[int, int]:
        raise self.error

    def socket_at(self, pid: int, fd: int) -> int | None:
        raise self.error


# -- replaying recorded psutil output ---------------------------------------------------------


def test_serving_process_reports_stats_listeners_and_connections() -> None:
    """A live process yields CPU, RSS, threads, fds, both listeners and per-port connections."""
    sample = _collector(_host(RecordedProcess(STAGES["serving"]))).sample([TARGET])
    (stats,) = sample.processes
    calls = STAGES["serving"]["calls"]
    assert stats.alive and stats.gone is None
    assert stats.cpu_seconds == pytest.approx(
        calls["cpu_times"]["value"]["user"] + calls["cpu_times"]["value"]["system"]
    )
    assert stats.rss_bytes == calls["memory_info"]["value"]["rss"]
    assert stats.threads == calls["num_threads"]["value"]
    assert stats.open_fds == calls["num_fds"]["value"]
    assert stats.listening == (
        ListeningSocket(HEALTH, "ipv4", "127.0.0.1"),
        ListeningSocket(BUSINESS, "ipv6", "::1"),
    ) or stats.listening == (
        ListeningSocket(BUSINESS, "ipv6", "::1"),
        ListeningSocket(HEALTH, "ipv4", "127.0.0.1"),
    )
    assert set(stats.connections or ()) == {
        ConnectionCount(HEALTH, "ESTABLISHED", 1),
        ConnectionCount(BUSINESS, "ESTABLISHED", 2),
    }
    assert sample.full and sample.socket_source == "psutil"
    assert sample.finished >= sample.started and sample.cost_seconds >= 0.0


def test_access_denied_fields_are_named_and_the_rest_still_filled() -> None:
    """What an unprivileged agent is refused (fds, sockets) is named in ``denied``; the rest
    is still read."""
    sample = _collector(_host(RecordedProcess(RECORD["denied"]))).sample([TARGET])
    (stats,) = sample.processes
    assert stats.alive
    assert set(stats.denied) == {"num_fds", "net_connections"}
    assert stats.open_fds is None and stats.listening is None and stats.connections is None
    assert not stats.sockets_known
    assert stats.rss_bytes is not None and stats.threads is not None
    assert stats.cpu_seconds is not None


def test_zombie_is_reported_gone_even_though_psutil_still_answers() -> None:
    """An exited but unreaped process (psutil still returns values for it) counts as gone."""
    (stats,) = _collector(_host(RecordedProcess(STAGES["zombie"]))).sample([TARGET]).processes
    assert not stats.alive and stats.gone == "zombie"
    assert stats.sockets_known and stats.listening is None


def test_reaped_process_is_reported_exited() -> None:
    """A PID with no process behind it is an exited target, not an error."""
    (stats,) = _collector(FakeHost()).sample([TARGET]).processes
    assert not stats.alive and stats.gone == "exited" and stats.errors == ()


def test_reused_pid_is_never_read_as_the_target() -> None:
    """A process at the target's PID with another start time is a different process: the
    target is gone (pid_reused) and nothing is read from the newcomer."""
    newcomer = RecordedProcess(STAGES["serving"], create_time=CREATED + 30.0)
    (stats,) = _collector(_host(newcomer)).sample([TARGET]).processes
    assert not stats.alive and stats.gone == "pid_reused"
    assert stats.cpu_seconds is None and stats.listening is None
    assert newcomer.calls == ["create_time"]


def test_process_vanishing_mid_sample_keeps_what_was_read() -> None:
    """A process that exits between two reads is gone; values read before it went are kept."""
    vanishing = RecordedProcess(STAGES["serving"], vanish_at="num_threads")
    (stats,) = _collector(_host(vanishing)).sample([TARGET]).processes
    assert not stats.alive and stats.gone == "exited"
    assert stats.cpu_seconds is not None and stats.rss_bytes is not None
    assert stats.threads is None and stats.listening is None


def test_process_vanishing_before_its_sockets_are_read_is_gone() -> None:
    """A process that exits after its stats but before its socket read is gone, not unknown."""
    vanishing = RecordedProcess(STAGES["serving"], vanish_at="net_connections")
    (stats,) = _collector(_host(vanishing)).sample([TARGET]).processes
    assert not stats.alive and stats.gone == "exited" and stats.sockets_known
    assert stats.threads is not None


def test_light_sample_reads_only_liveness_and_listeners() -> None:
    """``full=False`` skips CPU, memory, threads, fds and connection counts."""
    process = RecordedProcess(STAGES["serving"])
    sample = _collector(_host(process)).sample([TARGET], full=False)
    (stats,) = sample.processes
    assert not sample.full and stats.alive and stats.listening
    assert stats.cpu_seconds is None and stats.connections is None
    assert set(process.calls) == {"create_time", "status", "net_connections"}


def test_unexpected_errors_are_recorded_not_raised() -> None:
    """An odd failure in one psutil call or in the socket source never escapes a sample."""

    class Broken:
        name = "broken"
        problem = None

        def read(
            self, processes: Sequence[tuple[ProcessId, ProcessHandle]], *, connections: bool
        ) -> dict[ProcessId, SocketReading]:
            raise RuntimeError("boom")

    odd = RecordedProcess(STAGES["serving"], num_threads="not a number")
    (stats,) = _collector(_host(odd), Broken()).sample([TARGET]).processes
    assert stats.alive and stats.threads is None
    assert any(error.startswith("num_threads:") for error in stats.errors)
    assert any("boom" in error for error in stats.errors)


def test_several_targets_are_sampled_once_each() -> None:
    """Duplicate ids are sampled once; every given target appears in the sample."""
    other = ProcessId(PID + 1, CREATED)
    sample = _collector(_host(RecordedProcess(STAGES["serving"]))).sample([TARGET, other, TARGET])
    assert [stats.id for stats in sample.processes] == [TARGET, other]
    assert [stats.alive for stats in sample.processes] == [True, False]


# -- netlink sock_diag ------------------------------------------------------------------------


def test_recorded_netlink_replies_give_the_same_sockets_as_psutil() -> None:
    """The sock_diag parser, on real recorded kernel replies, finds exactly the sockets psutil
    found for the same process at the same moment."""
    calls = STAGES["serving"]["calls"]["net_connections"]["value"]
    from_psutil = summarize(
        ((raw["family"], raw["status"], raw["laddr"][0], raw["laddr"][1]) for raw in calls),
        True,
    )
    replay = RecordedSockDiag(RECORD["sock_diag"])
    wanted = inodes_of(RECORD["sock_diag"])
    entries = replay(socket.AF_INET, True, wanted) + replay(socket.AF_INET6, True, wanted)
    from_netlink = summarize(
        ((entry.family, entry.state, entry.address, entry.port) for entry in entries), True
    )
    assert from_netlink == from_psutil
    assert {entry.inode for entry in entries} <= wanted


def test_sock_diag_source_matches_psutil_source() -> None:
    """Both socket sources report the same listeners and connections for the recorded process."""
    host = _host(RecordedProcess(STAGES["serving"]))
    (by_netlink,) = _collector(host, _recorded_sock_diag()).sample([TARGET]).processes
    (by_psutil,) = _collector(host).sample([TARGET]).processes
    assert by_netlink.listening == by_psutil.listening
    assert by_netlink.connections == by_psutil.connections


def test_listeners_only_dump_leaves_connections_unread() -> None:
    """A light sample over netlink reads listeners and leaves connection counts unknown."""
    host = _host(RecordedProcess(STAGES["serving"]))
    (stats,) = _collector(host, _recorded_sock_diag()).sample([TARGET], full=False).processes
    assert stats.listening and {item.port for item in stats.listening} == {HEALTH, BUSINESS}
    assert stats.connections is None


def test_light_samples_recheck_only_the_listening_fds() -> None:
    """After one scan of every fd, light samples re-read only the fds that held listening
    sockets, and still see one of them close."""
    fds = RecordedFds(RECORD["sock_diag"])
    collector = _collector(_host(RecordedProcess(STAGES["serving"])), _recorded_sock_diag(fds))
    collector.sample([TARGET], full=False)
    collector.sample([TARGET], full=False)
    assert fds.scans == 1 and fds.rechecks == 2  # the two listening fds
    health_fd = next(
        raw["fd"]
        for raw in STAGES["serving"]["calls"]["net_connections"]["value"]
        if raw["status"] == "LISTEN" and raw["laddr"][1] == HEALTH
    )
    del fds.fds[health_fd]
    (stats,) = collector.sample([TARGET], full=False).processes
    assert [item.port for item in stats.listening or ()] == [BUSINESS]
    collector.sample([TARGET], full=True)
    assert fds.scans == 2


def test_netlink_failure_falls_back_to_psutil_and_says_why() -> None:
    """When netlink is refused, sockets are read with psutil and the sample says why."""

    def refused(family: int, connections: bool, wanted: frozenset[int]) -> list[Any]:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    source = SockDiagSockets(
        dump=refused, fds=RecordedFds(RECORD["sock_diag"]), same_netns=lambda pid: True
    )
    sample = _collector(_host(RecordedProcess(STAGES["serving"])), source).sample([TARGET])
    assert sample.problem is not None and "netlink sock_diag failed" in sample.problem
    assert sample.processes[0].listening is not None


def test_target_in_another_network_namespace_is_read_with_psutil() -> None:
    """Netlink only sees the agent's network namespace; other targets go to the fallback."""
    replay = RecordedSockDiag(RECORD["sock_diag"])
    source = SockDiagSockets(
        dump=replay, fds=RecordedFds(RECORD["sock_diag"]), same_netns=lambda pid: False
    )
    (stats,) = (
        _collector(_host(RecordedProcess(STAGES["serving"])), source).sample([TARGET]).processes
    )
    assert stats.listening and replay.calls == 0


@pytest.mark.parametrize(
    ("error", "denied", "alive"),
    [(PermissionError(errno.EACCES, "denied"), True, True), (FileNotFoundError(), False, False)],
    ids=["refused", "gone"],
)
def test_unreadable_fd_table_is_denied_and_missing_one_is_gone(
    error: OSError, denied: bool, alive: bool
) -> None:
    """/proc/PID/fd refused means denied sockets; /proc/PID/fd missing means the process went."""
    source = SockDiagSockets(
        dump=RecordedSockDiag(RECORD["sock_diag"]), fds=_Fds(error), same_netns=lambda pid: True
    )
    host = _host(RecordedProcess(STAGES["serving"]))
    (stats,) = _collector(host, source).sample([TARGET]).processes
    assert stats.alive is alive and stats.listening is None
    assert ("net_connections" in stats.denied) is denied


def test_netlink_error_reply_raises_with_the_kernel_errno() -> None:
    """An NLMSG_ERROR reply becomes an OSError carrying the kernel's errno."""
    reply = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -errno.EPERM) + bytes(16)
    with pytest.raises(OSError, match="netlink sock_diag") as caught:
        parse_sock_diag(reply, None)
    assert caught.value.errno == errno.EPERM


def test_truncated_netlink_reply_is_an_error() -> None:
    """A reply whose length field runs past the buffer is refused, never misread."""
    real = bytes.fromhex(RECORD["sock_diag"]["ipv4"][0])
    with pytest.raises(OSError, match="malformed"):
        parse_sock_diag(real[:100], None)


# -- real processes ---------------------------------------------------------------------------

SERVER = """
import socket, sys, threading
listeners = []
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    listener = socket.socket(family)
    listener.bind((host, 0))
    listener.listen()
    listeners.append(listener)
accepted = []
def accept(listener):
    while True:
        accepted.append(listener.accept())
for listener in listeners:
    threading.Thread(target=accept, args=(listener,), daemon=True).start()
print(*(listener.getsockname()[1] for listener in listeners), flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    """A real process listening on an IPv4 and an IPv6 port, with three clients connected."""
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdin is not None
    clients: list[socket.socket] = []
    try:
        first, second = map(int, process.stdout.readline().split())
        clients += [socket.create_connection(("127.0.0.1", first), timeout=5) for _ in range(2)]
        clients.append(socket.create_connection(("::1", second), timeout=5))
        yield process, first, second
    finally:
        for client in clients:
            client.close()
        process.kill()
        process.wait(10)
        process.stdin.close()
        process.stdout.close()


def _settled(collector: ProcessCollector, target: ProcessId) -> Any:
    """Sample until the three accepted connections are visible (bounded)."""
    deadline = time.monotonic() + 5
    while True:
        (stats,) = collector.sample([target]).processes
        established = sum(c.count for c in stats.connections or () if c.state == "ESTABLISHED")
        if established >= 3 or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def test_real_process_read_alike_by_netlink_and_psutil(
    server: tuple[subprocess.Popen[str], int, int],
) -> None:
    """On a real process, netlink and psutil report the same listeners and connections."""
    process, first, second = server
    target = ProcessId(process.pid, psutil.Process(process.pid).create_time())
    by_netlink = _settled(ProcessCollector(), target)
    by_psutil = _settled(ProcessCollector(sockets=PsutilSockets()), target)
    assert by_netlink.alive and by_netlink.errors == () and by_netlink.denied == ()
    assert {(item.port, item.family) for item in by_netlink.listening} == {
        (first, "ipv4"),
        (second, "ipv6"),
    }
    assert by_netlink.listening == by_psutil.listening
    assert by_netlink.connections == by_psutil.connections
    assert ConnectionCount(first, "ESTABLISHED", 2) in by_netlink.connections
    assert by_netlink.threads >= 3 and by_netlink.rss_bytes > 0 and by_netlink.open_fds >= 5


def test_real_exit_is_noticed_as_zombie_then_exited(
    server: tuple[subprocess.Popen[str], int, int],
) -> None:
    """A real target that exits is gone while unreaped (zombie) and after it is reaped."""
    process, _, _ = server
    target = ProcessId(process.pid, psutil.Process(process.pid).create_time())
    collector = ProcessCollector()
    assert process.stdin is not None
    process.stdin.write("exit\n")
    process.stdin.flush()
    deadline = time.monotonic() + 5
    while collector.sample([target]).processes[0].alive and time.monotonic() < deadline:
        time.sleep(0.01)
    (unreaped,) = collector.sample([target]).processes
    process.wait(5)
    (reaped,) = collector.sample([target]).processes
    assert unreaped.gone == "zombie"
    assert reaped.gone == "exited"


def test_sock_diag_dump_sees_this_process_listening() -> None:
    """A real netlink dump contains a socket this test listens on, with its inode."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        entries = sock_diag_dump(socket.AF_INET, False, frozenset({_inode(listener)}))
    assert [(entry.port, entry.state) for entry in entries] == [(port, "LISTEN")]


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def test_proc_fd_table_tells_a_closed_fd_from_a_gone_process() -> None:
    """Re-checking a closed fd gives None; re-checking a process that is gone raises."""
    table = ProcFdTable()
    with socket.socket() as listener:
        fd = listener.fileno()
        assert table.sockets(os.getpid())[fd] == _inode(listener)
        assert table.socket_at(os.getpid(), fd) == _inode(listener)
    assert table.socket_at(os.getpid(), fd) is None
    with pytest.raises(FileNotFoundError):
        table.socket_at(4_194_999, 3)
