"""Requests kept in flight against a service under test: for the demo and for checks.

A burst of slow calls is started, the caller does something to the service (sends it
SIGTERM), and each call's outcome is collected: the status a client really saw.
"""

from __future__ import annotations

import asyncio
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class CallOutcome:
    """What one client call ended with: ``OK`` or a gRPC status name / HTTP status, how long
    it took, and when (Unix seconds) the client saw it end."""

    status: str
    seconds: float
    ended_at: float

    @property
    def ok(self) -> bool:
        return self.status in ("OK", "200")

    @classmethod
    def ended(cls, status: str, started: float) -> CallOutcome:
        """The outcome of a call started at ``started`` (``time.monotonic()``), ending now."""
        return cls(status, time.monotonic() - started, time.time())


async def wait_for_port(host: str, port: int, timeout: float = 20.0) -> bool:
    """Poll until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for starting a service under test)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_listening(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


class _Burst(ABC):
    """Concurrent calls started by ``start()``; ``outcomes()`` waits for all of them."""

    def __init__(self, count: int, timeout: float) -> None:
        self.count = count
        self.timeout = timeout
        self._task: asyncio.Task[list[CallOutcome]] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def outcomes(self) -> list[CallOutcome]:
        if self._task is None:
            raise RuntimeError("call start() first")
        return await self._task

    @abstractmethod
    async def _run(self) -> list[CallOutcome]:
        """Make the calls; each burst kind knows its protocol."""


class GrpcCaller:
    """Unary calls of ``method`` with raw-bytes ``request`` on one channel to ``target``.

    Use as ``async with GrpcCaller(...) as caller: await caller.call()``; ``call`` never
    raises for a failing call: the outcome carries the status the client saw.
    """

    def __init__(self, target: str, method: str, request: bytes, timeout: float = 60.0) -> None:
        import grpc

        self.target = target
        self.method = method
        self.request = request
        self.timeout = timeout
        self._grpc = grpc
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.UnaryUnaryMultiCallable | None = None

    async def __aenter__(self) -> GrpcCaller:
        self._channel = self._grpc.aio.insecure_channel(self.target)
        self._call = self._channel.unary_unary(self.method)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._call = None

    async def call(self) -> CallOutcome:
        if self._call is None:
            raise RuntimeError("use GrpcCaller as an async context manager")
        started = time.monotonic()
        try:
            await self._call(self.request, timeout=self.timeout)
        except self._grpc.aio.AioRpcError as error:
            return CallOutcome.ended(error.code().name, started)
        return CallOutcome.ended("OK", started)


class HttpCaller:
    """Requests of ``url`` (``method``, optional ``body`` and ``headers``) on one session.

    Use as ``async with HttpCaller(...) as caller: await caller.call()``; ``call`` never
    raises for a failing request: the outcome is the HTTP status, or the client error's
    type name (``ServerDisconnectedError``, ``ClientConnectorError``, ``TimeoutError``).
    """

    def __init__(
        self,
        url: str,
        timeout: float = 60.0,
        method: str = "GET",
        body: bytes | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        import aiohttp

        self.url = url
        self.timeout = timeout
        self.method = method
        self.body = body
        self.headers = headers
        self._aiohttp = aiohttp
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpCaller:
        timeout = self._aiohttp.ClientTimeout(total=self.timeout)
        self._session = self._aiohttp.ClientSession(timeout=timeout)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self) -> CallOutcome:
        if self._session is None:
            raise RuntimeError("use HttpCaller as an async context manager")
        started = time.monotonic()
        try:
            async with self._session.request(
                self.method, self.url, data=self.body, headers=list(self.headers)
            ) as response:
                await response.read()
                return CallOutcome.ended(str(response.status), started)
        except (TimeoutError, self._aiohttp.ClientError) as error:
            return CallOutcome.ended(type(error).__name__, started)


class GrpcBurst(_Burst):
    """``count`` concurrent unary calls of ``method`` with raw-bytes ``request``."""

    def __init__(
        self, target: str, method: str, request: bytes, count: int, timeout: float = 60.0
    ) -> None:
        super().__init__(count, timeout)
        self.target = target
        self.method = method
        self.request = request

    async def _run(self) -> list[CallOutcome]:
        async with GrpcCaller(self.target, self.method, self.request, self.timeout) as caller:
            return list(await asyncio.gather(*(caller.call() for _ in range(self.count))))


class HttpBurst(_Burst):
    """``count`` concurrent GET requests of ``url``."""

    def __init__(self, url: str, count: int, timeout: float = 60.0) -> None:
        super().__init__(count, timeout)
        self.url = url

    async def _run(self) -> list[CallOutcome]:
        async with HttpCaller(self.url, self.timeout) as caller:
            return list(await asyncio.gather(*(caller.call() for _ in range(self.count))))
