"""Sample the target processes from outside: alive, CPU, memory, threads, fds, TCP sockets.

``ProcessCollector.sample(ids)`` returns a ``ProcessSample``: plain frozen data, one
``ProcessStats`` per target process. It never raises: a process that is gone (exited,
zombie, or its PID now used by another process) is reported with ``alive=False`` and
``gone`` saying why; a value the OS refuses is left ``None`` and named in ``denied``; any
other failure is named in ``errors``; everything else is still filled in.

TCP sockets come from a ``SocketSource``. The default, ``SockDiagSockets``, asks the kernel
once per sample over netlink ``sock_diag`` (what ``ss`` uses) and keeps the sockets whose
inode appears in a target's ``/proc/PID/fd``. ``PsutilSockets`` calls
``psutil.Process.net_connections()`` per process instead; it parses ``/proc/PID/net/tcp*``,
which the kernel builds by walking its whole connection hash table: about 10 ms per process
on a host with a 262144-bucket table, against about 0.1 ms (listening sockets only) to 0.5 ms
(every state) for one netlink dump. It is used for targets in another network namespace and
when netlink is refused.

Thread safety: a collector is used by one thread at a time (the agent's sampling worker).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final, Protocol, TypeVar

import psutil

from .targets import Connection, ProcessFactory, ProcessHandle, ProcessId

T = TypeVar("T")

# gone reasons (TargetDiscovery uses the same words)
EXITED: Final = "exited"
ZOMBIE: Final = "zombie"
PID_REUSED: Final = "pid_reused"

LISTEN: Final = psutil.CONN_LISTEN
_FAMILIES: Final[dict[int, str]] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
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
_ALL_STATES: Final = 0xFFF & ~(1 << 0)


@dataclass(frozen=True, slots=True)
class ListeningSocket:
    port: int
    family: str  # ipv4 | ipv6
    address: str


@dataclass(frozen=True, slots=True)
class ConnectionCount:
    port: int  # local port
    state: str  # psutil's names: ESTABLISHED, CLOSE_WAIT, ...
    count: int


@dataclass(frozen=True, slots=True)
class SocketReading:
    """One process's TCP sockets, or why they could not be read."""

    listening: tuple[ListeningSocket, ...] | None = None  # None: unknown
    connections: tuple[ConnectionCount, ...] | None = None  # None: unknown or not asked
    denied: tuple[str, ...] = ()
    gone: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """One target process in one sample. ``None`` means not read (see denied / errors)."""

    id: ProcessId
    alive: bool
    gone: str | None = None  # exited | zombie | pid_reused, when not alive
    status: str | None = None
    cpu_seconds: float | None = None  # user + system, cumulative
    rss_bytes: int | None = None
    threads: int | None = None
    open_fds: int | None = None
    listening: tuple[ListeningSocket, ...] | None = None
    connections: tuple[ConnectionCount, ...] | None = None
    denied: tuple[str, ...] = ()  # psutil calls refused with AccessDenied
    errors: tuple[str, ...] = ()

    @property
    def sockets_known(self) -> bool:
        """Its listening set is known: read this sample, or empty because it is gone."""
        return not self.alive or self.listening is not None


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """All target processes at one moment. Times are the injected clock (Unix seconds):
    everything observed in this sample was true at some instant in [started, finished]."""

    started: float
    finished: float
    full: bool  # stats and connections were read, not only liveness and listeners
    processes: tuple[ProcessStats, ...]
    socket_source: str
    problem: str | None = None
    cost_seconds: float = 0.0  # CPU time the sample took in the sampling thread

    @property
    def alive(self) -> tuple[ProcessStats, ...]:
        return tuple(process for process in self.processes if process.alive)

    @property
    def duration(self) -> float:
        return self.finished - self.started


class SocketSource(Protocol):
    """Reads the TCP sockets of several processes at once. Never raises."""

    @property
    def name(self) -> str: ...

    @property
    def problem(self) -> str | None: ...

    def read(
        self, processes: Sequence[tuple[ProcessId, ProcessHandle]], *, connections: bool
    ) -> dict[ProcessId, SocketReading]: ...


# -- the collector ----------------------------------------------------------------------------


class _GoneError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Notes:
    def __init__(self) -> None:
        self.denied: list[str] = []
        self.errors: list[str] = []

    def attempt(self, name: str, call: Callable[[], T]) -> T | None:
        try:
            return call()
        except psutil.ZombieProcess as error:
            raise _GoneError(ZOMBIE) from error
        except psutil.NoSuchProcess as error:
            raise _GoneError(EXITED) from error
        except psutil.AccessDenied:
            self.denied.append(name)
        except Exception as error:
            self.errors.append(f"{name}: {error!r}")
        return None


class ProcessCollector:
    """Samples target processes. ``process`` is ``psutil.Process`` or a fake; ``sockets``
    defaults to ``SockDiagSockets`` (netlink, falling back to psutil); ``clock`` gives the
    sample's Unix timestamps and ``cpu_clock`` measures its cost."""

    def __init__(
        self,
        *,
        process: ProcessFactory = psutil.Process,
        sockets: SocketSource | None = None,
        clock: Callable[[], float] = time.time,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._process = process
        self._sockets: SocketSource = sockets if sockets is not None else SockDiagSockets()
        self._clock = clock
        self._cpu_clock = cpu_clock

    def sample(self, targets: Iterable[ProcessId], *, full: bool = True) -> ProcessSample:
        """Read every target now. ``full=False`` reads only liveness and listening sockets
        (the cheap sample for tight intervals); ``full=True`` also CPU, RSS, threads, fds
        and connections per local port and state. Never raises."""
        started, cpu_started = self._clock(), self._cpu_clock()
        stats: dict[ProcessId, ProcessStats] = {}
        handles: list[tuple[ProcessId, ProcessHandle]] = []
        for identity in dict.fromkeys(targets):
            handle, stat = self._read(identity, full)
            stats[identity] = stat
            if handle is not None:
                handles.append((identity, handle))
        try:
            readings = self._sockets.read(handles, connections=full)
        except Exception as error:  # a SocketSource must not raise; be safe anyway
            readings = {identity: SocketReading(error=repr(error)) for identity, _ in handles}
        for identity, _ in handles:
            stats[identity] = _with_sockets(stats[identity], readings.get(identity))
        return ProcessSample(
            started=started,
            finished=self._clock(),
            full=full,
            processes=tuple(stats.values()),
            socket_source=self._sockets.name,
            problem=self._sockets.problem,
            cost_seconds=max(0.0, self._cpu_clock() - cpu_started),
        )

    def _read(self, identity: ProcessId, full: bool) -> tuple[ProcessHandle | None, ProcessStats]:
        notes = _Notes()
        values: dict[str, object] = {}
        try:
            try:
                handle = self._process(identity.pid)
                created = handle.create_time()
            except psutil.ZombieProcess as error:
                raise _GoneError(ZOMBIE) from error
            except psutil.NoSuchProcess as error:
                raise _GoneError(EXITED) from error
            if created != identity.create_time:
                raise _GoneError(PID_REUSED)
            with handle.oneshot():
                status = notes.attempt("status", handle.status)
                if status == psutil.STATUS_ZOMBIE:
                    raise _GoneError(ZOMBIE)
                values["status"] = status
                if full:
                    cpu = notes.attempt("cpu_times", handle.cpu_times)
                    if cpu is not None:
                        values["cpu_seconds"] = cpu.user + cpu.system
                    memory = notes.attempt("memory_info", handle.memory_info)
                    if memory is not None:
                        values["rss_bytes"] = memory.rss
                    values["threads"] = notes.attempt("num_threads", handle.num_threads)
                    values["open_fds"] = notes.attempt("num_fds", handle.num_fds)
        except _GoneError as gone:
            return None, _stats(identity, False, gone.reason, values, notes)
        except Exception as error:
            notes.errors.append(f"process: {error!r}")
            return None, _stats(identity, True, None, values, notes)
        return handle, _stats(identity, True, None, values, notes)


def _stats(
    identity: ProcessId, alive: bool, gone: str | None, values: dict[str, object], notes: _Notes
) -> ProcessStats:
    status = values.get("status")
    cpu = values.get("cpu_seconds")
    rss = values.get("rss_bytes")
    threads = values.get("threads")
    fds = values.get("open_fds")
    return ProcessStats(
        id=identity,
        alive=alive,
        gone=gone,
        status=status if isinstance(status, str) else None,
        cpu_seconds=float(cpu) if isinstance(cpu, int | float) else None,
        rss_bytes=rss if isinstance(rss, int) else None,
        threads=threads if isinstance(threads, int) else None,
        open_fds=fds if isinstance(fds, int) else None,
        denied=tuple(notes.denied),
        errors=tuple(notes.errors),
    )


def _with_sockets(stat: ProcessStats, reading: SocketReading | None) -> ProcessStats:
    if reading is None:
        return replace(stat, errors=(*stat.errors, "net_connections: not read"))
    if reading.gone:
        # vanished between its liveness check and the socket read: gone, values kept
        return replace(stat, alive=False, gone=EXITED)
    errors = stat.errors if reading.error is None else (*stat.errors, reading.error)
    return replace(
        stat,
        listening=reading.listening,
        connections=reading.connections,
        denied=(*stat.denied, *reading.denied),
        errors=errors,
    )


# -- socket sources ---------------------------------------------------------------------------


def summarize(
    entries: Iterable[tuple[int, str, str, int]], connections: bool
) -> tuple[tuple[ListeningSocket, ...], tuple[ConnectionCount, ...] | None]:
    """Listening sockets and connection counts from ``(family, state, ip, port)`` entries."""
    listening: set[ListeningSocket] = set()
    counts: Counter[tuple[int, str]] = Counter()
    for family, state, address, port in entries:
        if state == LISTEN:
            listening.add(ListeningSocket(port, _FAMILIES.get(family, str(family)), address))
        elif connections:
            counts[(port, state)] += 1
    found = tuple(sorted(listening, key=lambda item: (item.port, item.family, item.address)))
    if not connections:
        return found, None
    return found, tuple(
        ConnectionCount(port, state, n) for (port, state), n in sorted(counts.items())
    )


def _psutil_entries(items: Sequence[Connection]) -> Iterable[tuple[int, str, str, int]]:
    for item in items:
        laddr = item.laddr
        if item.type == socket.SOCK_STREAM and len(laddr) == 2:
            yield int(item.family), item.status, laddr[0], laddr[1]


class PsutilSockets:
    """``psutil.Process.net_connections(kind)`` per process (TCP only by default)."""

    name = "psutil"
    problem: str | None = None

    def __init__(self, kind: str = "tcp") -> None:
        self._kind = kind

    def read(
        self, processes: Sequence[tuple[ProcessId, ProcessHandle]], *, connections: bool
    ) -> dict[ProcessId, SocketReading]:
        readings: dict[ProcessId, SocketReading] = {}
        for identity, handle in processes:
            try:
                items = handle.net_connections(kind=self._kind)
                listening, counts = summarize(_psutil_entries(items), connections)
                readings[identity] = SocketReading(listening, counts)
            except psutil.NoSuchProcess:
                readings[identity] = SocketReading(gone=True)
            except psutil.AccessDenied:
                readings[identity] = SocketReading(denied=("net_connections",))
            except Exception as error:
                readings[identity] = SocketReading(error=f"net_connections: {error!r}")
        return readings


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
