"""TCP sockets of many processes from one netlink ``sock_diag`` dump (what ``ss`` uses).

``SockDiagSockets`` is the default ``SocketSource`` of ``ProcessCollector``. It asks the
kernel once per sample for every TCP socket in the agent's network namespace and keeps the
sockets whose inode appears in a target's ``/proc/PID/fd``. One dump costs about 0.1 ms
(listening sockets only) to 0.5 ms (every state), against about 10 ms per process for
psutil's ``/proc/PID/net/tcp*`` on a host with a 262144-bucket connection table. Targets in
another network namespace, and every target for a while after netlink fails, are read with
the fallback source (``PsutilSockets``).

Thread safety: like the collector that owns it, a source is used by one thread at a time.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import psutil

from .psutil_types import ProcessHandle
from .target_types import ProcessId
from .tcp_sockets import LISTEN, PsutilSockets, SocketReading, SocketSource, summarize

# TCP states as numbered by the kernel (include/net/tcp_states.h), named as psutil names them
_TCP_STATES: Final = (
    "",
    psutil.CONN_ESTABLISHED,
    psutil.CONN_SYN_SENT,
    psutil.CONN_SYN_RECV,
    psutil.CONN_FIN_WAIT1,
    psutil.CONN_FIN_WAIT2,
    psutil.CONN_TIME_WAIT,
    psutil.CONN_CLOSE,
    psutil.CONN_CLOSE_WAIT,
    psutil.CONN_LAST_ACK,
    psutil.CONN_LISTEN,
    psutil.CONN_CLOSING,
    psutil.CONN_SYN_RECV,  # TCP_NEW_SYN_RECV: a request socket, shown as SYN_RECV by /proc
)
_TCP_LISTEN_STATE: Final = 10
_TCP_TIME_WAIT_STATE: Final = 6
# Every state but TIME_WAIT: a socket in TIME_WAIT belongs to no process (the kernel keeps
# a minimal socket with inode 0), so it could never be one of the target's, and a busy
# node holds thousands of them, which the dump would parse every 50 ms for nothing.
_ALL_STATES: Final = 0xFFF & ~(1 << 0) & ~(1 << _TCP_TIME_WAIT_STATE)


@dataclass(frozen=True, slots=True)
class DiagSocket:
    family: int
    state: str
    address: str
    port: int
    inode: int


SockDiagDump = Callable[[int, bool, frozenset[int]], list[DiagSocket]]
SameNetns = Callable[[int], bool]


class FdTable(Protocol):
    """A process's socket file descriptors (``/proc/PID/fd``)."""

    def sockets(self, pid: int) -> dict[int, int]:
        """Every socket fd -> its inode. Raises FileNotFoundError when the process is gone,
        PermissionError when refused."""
        ...

    def socket_at(self, pid: int, fd: int) -> int | None:
        """The inode of the socket at ``fd`` now, None if that fd is closed or no socket.
        Raises FileNotFoundError when the process is gone."""
        ...


class SockDiagSockets:
    """One netlink ``sock_diag`` dump per address family for all targets, matched to each
    process by the socket inodes in its fd table. Targets in another network namespace, and
    all targets for a while after netlink fails, are read with ``fallback`` (psutil).

    A full read scans every fd of the target; a listeners-only read re-checks just the fds
    that held listening sockets at the last scan, so its cost does not grow with the number
    of connections (a port opened since then is seen by the next full read)."""

    name = "sock_diag"

    def __init__(
        self,
        *,
        dump: SockDiagDump | None = None,
        fds: FdTable | None = None,
        same_netns: SameNetns | None = None,
        fallback: SocketSource | None = None,
    ) -> None:
        self._dump = dump if dump is not None else sock_diag_dump
        self._fds: FdTable = fds if fds is not None else ProcFdTable()
        self._same_netns = same_netns if same_netns is not None else shares_network_namespace
        self._fallback: SocketSource = fallback if fallback is not None else PsutilSockets()
        self._netns: dict[ProcessId, bool] = {}
        self._listen_fds: dict[ProcessId, dict[int, int]] = {}
        self.problem: str | None = None  # why netlink is not used, after it failed
        self._skip = 0

    def read(
        self, processes: Sequence[tuple[ProcessId, ProcessHandle]], *, connections: bool
    ) -> dict[ProcessId, SocketReading]:
        if self._skip > 0:  # netlink failed recently: retry it now and then
            self._skip -= 1
            return self._fallback.read(processes, connections=connections)
        self._netns = {identity: self._netns_of(identity) for identity, _ in processes}
        self._listen_fds = {i: fds for i, fds in self._listen_fds.items() if i in self._netns}
        elsewhere = [(i, handle) for i, handle in processes if not self._netns[i]]
        readings = self._fallback.read(elsewhere, connections=connections) if elsewhere else {}
        owned: dict[ProcessId, dict[int, int]] = {}  # fd -> inode
        scanned: set[ProcessId] = set()
        for identity, _ in processes:
            if identity in readings:
                continue
            known = self._listen_fds.get(identity)
            try:
                if connections or known is None:
                    owned[identity] = self._fds.sockets(identity.pid)
                    scanned.add(identity)
                else:
                    owned[identity] = self._recheck(identity.pid, known)
            except (FileNotFoundError, ProcessLookupError):
                readings[identity] = SocketReading(gone=True)
            except PermissionError:
                readings[identity] = SocketReading(denied=("net_connections",))
            except Exception as error:
                readings[identity] = SocketReading(error=f"net_connections: {error!r}")
        if not owned:
            return readings
        wanted = frozenset(inode for fds in owned.values() for inode in fds.values())
        try:
            table = {entry.inode: entry for entry in self._dump_all(connections, wanted)}
        except Exception as error:
            self.problem = (
                f"netlink sock_diag failed ({error!r}); reading sockets with psutil from "
                "/proc/PID/net/tcp instead, which costs about 10 ms per process and sample"
            )
            self._skip = _RETRY_AFTER_READS
            rest = [(i, handle) for i, handle in processes if i in owned]
            readings.update(self._fallback.read(rest, connections=connections))
            return readings
        for identity, fds in owned.items():
            mine = [entry for inode in fds.values() if (entry := table.get(inode)) is not None]
            if identity in scanned:
                self._listen_fds[identity] = {
                    fd: inode for fd, inode in fds.items() if _is_listening(table.get(inode))
                }
            listening, counts = summarize(
                ((entry.family, entry.state, entry.address, entry.port) for entry in mine),
                connections,
            )
            readings[identity] = SocketReading(listening, counts)
        self.problem = None
        return readings

    def _recheck(self, pid: int, known: dict[int, int]) -> dict[int, int]:
        return {fd: inode for fd, inode in known.items() if self._fds.socket_at(pid, fd) == inode}

    def _dump_all(self, connections: bool, wanted: frozenset[int]) -> list[DiagSocket]:
        found = self._dump(socket.AF_INET, connections, wanted)
        try:
            found += self._dump(socket.AF_INET6, connections, wanted)
        except OSError as error:
            # a kernel without IPv6 (or without inet6 diag) has no IPv6 sockets to miss
            if error.errno not in _NO_IPV6:
                raise
        return found

    def _netns_of(self, identity: ProcessId) -> bool:
        known = self._netns.get(identity)
        if known is not None:
            return known
        try:
            return self._same_netns(identity.pid)
        except OSError:
            return False  # cannot tell: psutil reads the target's own /proc/PID/net


def _is_listening(entry: DiagSocket | None) -> bool:
    return entry is not None and entry.state == LISTEN


def shares_network_namespace(pid: int) -> bool:
    """The process is in the agent's network namespace (netlink sees its sockets)."""
    mine = os.stat("/proc/self/ns/net")
    theirs = os.stat(f"/proc/{pid}/ns/net")
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


class ProcFdTable:
    """``FdTable`` over ``/proc`` (``root`` may point elsewhere for tests)."""

    def __init__(self, root: str = "/proc") -> None:
        self._root = root

    def sockets(self, pid: int) -> dict[int, int]:
        directory = f"{self._root}/{pid}/fd"
        found = {}
        for name in os.listdir(directory):
            try:
                inode = _socket_inode(os.readlink(f"{directory}/{name}"))
            except FileNotFoundError:
                continue  # closed while listing
            if inode is not None:
                found[int(name)] = inode
        return found

    def socket_at(self, pid: int, fd: int) -> int | None:
        try:
            return _socket_inode(os.readlink(f"{self._root}/{pid}/fd/{fd}"))
        except FileNotFoundError:
            os.stat(f"{self._root}/{pid}/fd")  # FileNotFoundError: the process is gone
            return None


def _socket_inode(link: str) -> int | None:
    return int(link[8:-1]) if link.startswith("socket:[") else None


# netlink: linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h
_NETLINK_SOCK_DIAG: Final = 4
_SOCK_DIAG_BY_FAMILY: Final = 20
_NLM_F_REQUEST_DUMP: Final = 0x1 | 0x100 | 0x200
_NLMSG_ERROR: Final = 2
_NLMSG_DONE: Final = 3
_HEADER: Final = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_REQUEST: Final = struct.Struct("=BBBBI48x")  # inet_diag_req_v2 with an empty sockid
_MESSAGE_HEAD: Final = struct.Struct("=BB2x")  # inet_diag_msg: family, state
_PORT: Final = struct.Struct(">H")
_INODE_OFFSET: Final = 68  # inet_diag_msg.idiag_inode
_MESSAGE_SIZE: Final = 72
_RETRY_AFTER_READS: Final = 200
_MAX_REPLIES: Final = 10_000  # about 4 million sockets
_NO_IPV6: Final = frozenset({errno.ENOENT, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT})
_TIMEOUT_SECONDS: Final = 1.0


def sock_diag_request(family: int, connections: bool, sequence: int = 1) -> bytes:
    """The netlink request for every TCP socket of ``family`` (only listening ones unless
    ``connections``)."""
    states = _ALL_STATES if connections else 1 << _TCP_LISTEN_STATE
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, states)
    return (
        _HEADER.pack(
            _HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, sequence, 0
        )
        + body
    )


def parse_sock_diag(data: bytes, wanted: frozenset[int] | None) -> tuple[list[DiagSocket], bool]:
    """The sockets in one netlink reply buffer (only ``wanted`` inodes unless None), and
    whether the dump is complete. Raises ``OSError`` for a netlink error reply."""
    found: list[DiagSocket] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            raise OSError(f"malformed netlink message (length {length})")
        body = offset + _HEADER.size
        if kind == _NLMSG_DONE:
            return found, True
        if kind == _NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, body)
            raise OSError(-code, f"netlink sock_diag: {os.strerror(-code)}")
        if kind == _SOCK_DIAG_BY_FAMILY and length >= _HEADER.size + _MESSAGE_SIZE:
            (inode,) = struct.unpack_from("=I", data, body + _INODE_OFFSET)
            if wanted is None or inode in wanted:
                family, state = _MESSAGE_HEAD.unpack_from(data, body)
                (port,) = _PORT.unpack_from(data, body + 4)
                size = 4 if family == socket.AF_INET else 16
                raw = data[body + 8 : body + 8 + size]
                name = _TCP_STATES[state] if state < len(_TCP_STATES) else str(state)
                found.append(DiagSocket(family, name, socket.inet_ntop(family, raw), port, inode))
        offset += (length + 3) & ~3
    return found, False


def sock_diag_dump(family: int, connections: bool, wanted: frozenset[int]) -> list[DiagSocket]:
    """Ask the kernel for the TCP sockets of ``family`` in this network namespace."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as channel:
        channel.settimeout(_TIMEOUT_SECONDS)
        channel.sendto(sock_diag_request(family, connections), (0, 0))
        found: list[DiagSocket] = []
        for _ in range(_MAX_REPLIES):
            part, done = parse_sock_diag(channel.recv(1 << 16), wanted)
            found.extend(part)
            if done:
                return found
        raise OSError(f"netlink sock_diag did not finish within {_MAX_REPLIES} replies")
