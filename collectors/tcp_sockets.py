"""A target's TCP sockets: what a socket source reports, and the psutil source.

``ProcessCollector`` (:mod:`drainwatch.collectors.process`) reads sockets through a
``SocketSource``. The netlink source (:mod:`drainwatch.collectors.sock_diag`) is the default;
``PsutilSockets`` here is both its fallback and the simplest source. Both reduce what they
find to ``SocketReading``s with ``summarize``, so the collector cannot tell them apart.

``PsutilSockets`` calls ``psutil.Process.net_connections()`` per process. psutil parses
``/proc/PID/net/tcp*``, which the kernel builds by walking its whole connection hash table:
about 10 ms per process on a host with a 262144-bucket table, which is why it is only the
fallback (targets in another network namespace, netlink refused).
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import psutil

from .psutil_types import Connection, ProcessHandle
from .target_types import ProcessId

LISTEN: Final = psutil.CONN_LISTEN
_FAMILIES: Final[dict[int, str]] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}


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


class SocketSource(Protocol):
    """Reads the TCP sockets of several processes at once. Never raises."""

    @property
    def name(self) -> str: ...

    @property
    def problem(self) -> str | None: ...

    def read(
        self, processes: Sequence[tuple[ProcessId, ProcessHandle]], *, connections: bool
    ) -> dict[ProcessId, SocketReading]: ...


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
