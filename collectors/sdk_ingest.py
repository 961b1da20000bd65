"""Receive SDK datagrams on the agent's event loop: Unix SOCK_SEQPACKET and loopback UDP.

Each datagram is decoded and handed to a sink (the agent's state). Nothing here blocks:
sockets are non-blocking and read in bounded batches so one chatty process cannot starve
the HTTP server. On Unix, a closed connection means the SDK process exited or was killed,
which the sink hears about at once.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import stat
import time
from typing import Protocol

from drainwatch._endpoint import Endpoint
from drainwatch._protocol import MAX_DATAGRAM_BYTES

from .ingest_watch import CHECK_SECONDS, SocketWatch, SocketWatchStats
from .sdk_decode import Decoded, Rejected, decode_datagram

logger = logging.getLogger("drainwatch.agent")

_SOCKET_MODE = 0o660
# Connecting needs write on the socket and search on the directory: the group (the pod's
# app) can connect, only the agent can create, remove or replace entries.
_DIRECTORY_MODE = 0o750
_RECEIVE_BUFFER_BYTES = 4 << 20
# Datagrams read per wakeup and connection: small enough that a saturated ingest leaves the
# loop to the HTTP server often (bench/soak.py: scrape p50 0.63 s at 256, 0.18 s at 64).
_BATCH_PER_WAKEUP = 64
_REJECTION_LOG_GAP_SECONDS = 60.0


class IngestError(Exception):
    """An ingest endpoint that cannot be opened; the message says why and what to do."""


class IngestSink(Protocol):
    def apply(self, decoded: Decoded) -> None: ...

    def reject(self, reason: str, count: int = 1) -> None: ...

    def disconnected(self, instance_id: str) -> None: ...


class _Receiver:
    """Shared decode-and-apply step, with rate-limited logging of rejections."""

    def __init__(self, sink: IngestSink, label: str) -> None:
        self._sink = sink
        self._label = label
        self._last_logged: dict[str, float] = {}

    def handle(self, data: bytes) -> str | None:
        """Apply one datagram; return the sender's instance id if it was accepted."""
        try:
            decoded = decode_datagram(data)
        except Rejected as rejection:
            self._sink.reject(rejection.reason)
            self._log(rejection)
            return None
        self._sink.apply(decoded)
        return decoded.envelope.instance

    def _log(self, rejection: Rejected) -> None:
        now = time.monotonic()
        if now - self._last_logged.get(rejection.reason, -1e9) >= _REJECTION_LOG_GAP_SECONDS:
            self._last_logged[rejection.reason] = now
            logger.warning(
                "drainwatch agent: rejected a datagram on %s (%s): %s; "
                "further ones are only counted for a minute",
                self._label,
                rejection.reason,
                rejection.detail,
            )


class UnixIngest:
    """Listens on a Unix ``SOCK_SEQPACKET`` socket (mode 0660) and reads every connection;
    keeps the path pointing at this socket (``ingest_watch.SocketWatch``)."""

    def __init__(
        self, endpoint: Endpoint, sink: IngestSink, check_seconds: float = CHECK_SECONDS
    ) -> None:
        self.endpoint = endpoint
        self._receiver = _Receiver(sink, str(endpoint))
        self._sink = sink
        self._listener: socket.socket | None = None
        self._connections: dict[socket.socket, str | None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._check_seconds = check_seconds
        self._watch: SocketWatch | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._path_identity: tuple[int, int] | None = None

    @property
    def watch_stats(self) -> SocketWatchStats:
        return self._watch.stats if self._watch is not None else SocketWatchStats()

    async def start(self) -> None:
        path = self.endpoint.path
        _prepare_socket_path(path)
        try:
            listener = _listen(path)
        except OSError as error:
            raise IngestError(
                f"ingest {self.endpoint}: cannot listen ({error.strerror or error}); "
                "check that the directory is writable by the agent's user"
            ) from None
        self._loop = asyncio.get_running_loop()
        self._use(listener)
        self._path_identity = _identity(path)
        self._watch = SocketWatch(path, self._path_identity, self._rebind)
        self._watch_task = self._loop.create_task(self._watch_forever(), name="drainwatch-ingest")

    def _use(self, listener: socket.socket) -> None:
        old, self._listener = self._listener, listener
        if self._loop is not None:
            if old is not None:
                self._loop.remove_reader(old.fileno())
            self._loop.add_reader(listener.fileno(), self._accept)
        if old is not None:
            old.close()  # connections it accepted stay open and keep being read

    def _rebind(self) -> None:
        path = self.endpoint.path
        self._use(_listen(path))
        self._path_identity = _identity(path)
        if self._watch is not None:
            self._watch.bound(self._path_identity)

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(self._check_seconds)
            if self._watch is not None:
                self._watch.check()

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(_BATCH_PER_WAKEUP):
            try:
                connection, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                logger.warning("drainwatch agent: accept on %s failed: %s", self.endpoint, error)
                return
            connection.setblocking(False)
            self._connections[connection] = None
            if self._loop is not None:
                self._loop.add_reader(connection.fileno(), self._read, connection)

    def _read(self, connection: socket.socket) -> None:
        for _ in range(_BATCH_PER_WAKEUP):
            try:
                data = connection.recv(MAX_DATAGRAM_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._drop(connection)
                return
            instance = self._receiver.handle(data)
            if instance is not None:
                self._connections[connection] = instance

    def _drop(self, connection: socket.socket) -> None:
        instance = self._connections.pop(connection, None)
        if self._loop is not None:
            self._loop.remove_reader(connection.fileno())
        connection.close()
        if instance is not None:
            self._sink.disconnected(instance)

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None
        for connection in list(self._connections):
            self._drop(connection)
        listener, self._listener = self._listener, None
        if listener is not None:
            if self._loop is not None:
                self._loop.remove_reader(listener.fileno())
            mine = self._path_identity
            listener.close()
            try:
                # only this agent's socket: a path taken over since belongs to someone else
                if _identity(self.endpoint.path) == mine:
                    os.unlink(self.endpoint.path)
            except FileNotFoundError:
                pass


def _listen(path: str) -> socket.socket:
    """A non-blocking listening SEQPACKET socket bound at ``path`` with mode 0660."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        listener.bind(path)
        os.chmod(path, _SOCKET_MODE)
        listener.listen(128)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


def _identity(path: str) -> tuple[int, int]:
    """(device, inode) of the file at ``path``."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _check_directory_owner(directory: str) -> None:
    """Refuse a socket directory that another (non-root) user owns: whoever owns it can
    replace the socket with their own and collect every process's datagrams, which is what
    a directory pre-created in a shared /tmp would allow."""
    try:
        owner = os.stat(directory).st_uid
    except OSError as error:
        raise IngestError(
            f"ingest directory {directory}: cannot check it ({error.strerror or error})"
        ) from None
    if owner not in (0, os.geteuid()):
        raise IngestError(
            f"ingest directory {directory} must belong to the agent's user "
            f"(uid {os.geteuid()}) or root, not uid {owner}: its owner could replace the "
            "socket; use a directory of the agent's own (an emptyDir volume in a pod) or "
            "remove this one"
        )


def _prepare_socket_path(path: str) -> None:
    directory = os.path.dirname(path) or "/"
    try:
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=_DIRECTORY_MODE)
            os.chmod(directory, _DIRECTORY_MODE)  # makedirs' mode is cut by the umask
    except FileExistsError:
        pass  # created in between by someone else: the owner check below decides
    except OSError as error:
        raise IngestError(
            f"ingest unix://{path}: cannot create directory {directory} "
            f"({error.strerror or error}); create it or choose a writable path"
        ) from None
    _check_directory_owner(directory)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise IngestError(
            f"ingest unix://{path}: the path exists and is not a socket; "
            "remove it or choose another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
    except OSError as error:
        if error.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise IngestError(
                f"ingest unix://{path}: cannot check the old socket: {error}"
            ) from None
        os.unlink(path)  # left behind by an agent that is gone
    else:
        raise IngestError(
            f"ingest unix://{path}: another agent already listens there; "
            "stop it or give this one another --ingest path"
        )
    finally:
        probe.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: _Receiver) -> None:
        self._receiver = receiver

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._receiver.handle(data)


class UdpIngest:
    """Listens for UDP datagrams on a loopback address only."""

    def __init__(self, endpoint: Endpoint, sink: IngestSink) -> None:
        self.endpoint = endpoint
        self._receiver = _Receiver(sink, str(endpoint))
        self._transport: asyncio.DatagramTransport | None = None
        self.port = endpoint.port

    async def start(self) -> None:
        try:
            loopback = ipaddress.ip_address(self.endpoint.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            # parse_endpoint refuses these already; an endpoint built in code must not
            # reach a network either: datagrams are unauthenticated.
            raise IngestError(
                f"ingest {self.endpoint}: UDP ingest must bind a loopback address "
                "(127.0.0.1 or ::1); datagrams are unauthenticated and must stay in the pod"
            )
        family = socket.AF_INET6 if ":" in self.endpoint.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER_BYTES)
            sock.bind((self.endpoint.host, self.endpoint.port))
        except OSError as error:
            sock.close()
            raise IngestError(
                f"ingest {self.endpoint}: cannot bind ({error.strerror or error}); "
                "is another agent using the port?"
            ) from None
        self.port = sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self._receiver), sock=sock
        )

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


Ingest = UnixIngest | UdpIngest


def open_ingest(endpoint: Endpoint, sink: IngestSink) -> Ingest:
    if endpoint.scheme == "unix":
        return UnixIngest(endpoint, sink)
    return UdpIngest(endpoint, sink)
