"""Non-blocking senders for the two ingest transports.

``send`` is called from application threads (close events) and from the reporter thread
(snapshots). It never blocks and never raises: when the agent is absent, slow or gone, the
datagram is refused and the caller counts it as dropped.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Protocol

from ._endpoint import Endpoint

# Ask for a large send buffer so a burst of close events fits in the kernel while the
# agent catches up; the kernel caps it at net.core.wmem_max.
_SEND_BUFFER_BYTES = 1 << 20
# After a failed connect, do not try again for this long: a missing agent must not cost
# the application a syscall per event.
_RECONNECT_BACKOFF_SECONDS = 1.0


class Transport(Protocol):
    def send(self, datagram: bytes) -> bool:
        """Hand one datagram to the kernel; True if accepted. Never blocks or raises."""
        ...

    @property
    def connected(self) -> bool:
        """Whether an agent was reachable at the last attempt (a refusal is then transient)."""
        ...

    def shorten_backoff(self, seconds: float) -> None:
        """Allow the next connection attempt after ``seconds`` at most (a caller that is
        willing to wait, such as the final flush at exit, retries sooner than the idle
        backoff would)."""
        ...

    def close(self) -> None: ...


class UnixSeqpacketTransport:
    """A connected ``SOCK_SEQPACKET`` socket to the agent, reconnected lazily."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._sock: socket.socket | None = None
        self._next_attempt = 0.0
        self._connect_lock = threading.Lock()

    def _connect(self) -> socket.socket | None:
        # Only one thread reconnects; others drop their datagram instead of waiting.
        if not self._connect_lock.acquire(blocking=False):
            return None
        try:
            if self._sock is not None:
                return self._sock
            now = time.monotonic()
            if now < self._next_attempt:
                return None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER_BYTES)
                sock.connect(self._path)
            except OSError:
                sock.close()
                self._next_attempt = now + _RECONNECT_BACKOFF_SECONDS
                return None
            self._sock = sock
            return sock
        finally:
            self._connect_lock.release()

    def send(self, datagram: bytes) -> bool:
        sock = self._sock or self._connect()
        if sock is None:
            return False
        try:
            sock.send(datagram)
        except BlockingIOError:
            return False  # the agent is behind: drop, never wait
        except OSError:
            # The agent went away (EPIPE, ECONNRESET) or the socket was replaced:
            # forget this connection, the next send reconnects.
            self._discard(sock)
            return False
        return True

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def shorten_backoff(self, seconds: float) -> None:
        self._next_attempt = min(self._next_attempt, time.monotonic() + seconds)

    def _discard(self, sock: socket.socket) -> None:
        if self._sock is sock:
            self._sock = None
        try:
            sock.close()
        except OSError:
            pass

    def close(self) -> None:
        sock = self._sock
        if sock is not None:
            self._discard(sock)


class UdpTransport:
    """A connected UDP socket to a loopback address.

    Connected, so that the kernel reports ``ECONNREFUSED`` once nobody listens on the
    port (after an ICMP port-unreachable) and that loss is counted; a loss inside the
    agent's receive buffer stays invisible to the sender, which is why Unix is the default.
    """

    def __init__(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.connect((host, port))

    def send(self, datagram: bytes) -> bool:
        try:
            self._sock.send(datagram)
        except OSError:
            return False
        return True

    @property
    def connected(self) -> bool:
        return True  # connectionless: nothing tells an absent agent from a slow one

    def shorten_backoff(self, seconds: float) -> None:
        return None  # connectionless: nothing to reconnect

    def close(self) -> None:
        self._sock.close()


class NullTransport:
    """Used when reporting is disabled: every datagram is refused (and counted)."""

    def send(self, datagram: bytes) -> bool:
        return False

    @property
    def connected(self) -> bool:
        return False

    def shorten_backoff(self, seconds: float) -> None:
        return None

    def close(self) -> None:
        return None


def open_transport(endpoint: Endpoint) -> Transport:
    if endpoint.scheme == "unix":
        return UnixSeqpacketTransport(endpoint.path)
    return UdpTransport(endpoint.host, endpoint.port)
