"""Helpers shared by the SDK tests: bounded waits, worker threads and a stand-in agent.

These tests use only the standard library and pytest: CI also runs them under Python 3.13
with nothing else installed. Every async test goes through ``run`` (so it has a timeout),
and every wait on a thread is bounded and followed by an assertion that it finished.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import drainwatch
import pytest
from drainwatch import _inflight, _runtime, _shutdown

T = TypeVar("T")
Record = dict[str, Any]

needs_queue_shutdown = pytest.mark.skipif(
    not hasattr(asyncio, "QueueShutDown"),
    reason="needs Python 3.13+ queues (run by .ci/run under python3.13)",
)


# -- bounded waits -----------------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, T], timeout: float = 5.0) -> T:
    """Run ``coro`` in a fresh event loop; raise ``TimeoutError`` after ``timeout`` seconds.

    The timeout runs in the same task as ``coro`` (``asyncio.timeout``), so the test's
    code is the loop's main task, as in an application started with ``asyncio.run``.
    """

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` s pass; return whether it held.

    For states no event announces, such as a thread being blocked inside a channel.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
    return True


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    """``wait_until`` for the event loop: yields to other tasks while it polls."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.001)
    return True


def next_line() -> int:
    """The line after the caller's: lets a test name the line of the close call it makes."""
    return sys._getframe(1).f_lineno + 1


class Worker(Generic[T]):
    """Runs ``target`` in a daemon thread and keeps its result or exception for the test."""

    def __init__(self, target: Callable[[], T], name: str = "worker") -> None:
        self._target = target
        self._results: list[T] = []
        self.error: BaseException | None = None
        self.finished_at: float | None = None  # time.monotonic()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._results.append(self._target())
        except BaseException as error:  # handed to the test, never lost in the thread
            self.error = error
        finally:
            self.finished_at = time.monotonic()

    def join(self, timeout: float = 2.0) -> bool:
        """Wait up to ``timeout`` s; True if the thread finished."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def result(self) -> T:
        assert self.error is None, f"worker raised {self.error!r}"
        assert self._results, "worker has not finished"
        return self._results[0]


# -- a stand-in for the agent's ingest socket ---------------------------------------------------


@dataclass(frozen=True)
class Datagram:
    """One datagram as the agent would receive it."""

    size: int  # bytes on the wire
    at: float  # time.monotonic() on arrival
    body: dict[str, Any]

    @property
    def records(self) -> list[Record]:
        records: list[Record] = self.body["records"]
        return records


class Receiver:
    """A listening Unix ``SOCK_SEQPACKET`` socket read by a background thread.

    Accepts every connection (a reconfigured or forked SDK connects again) and decodes each
    datagram; the test takes them in arrival order with ``next``/``wait_for``/``collect``.
    """

    def __init__(self) -> None:
        # AF_UNIX paths are limited to 107 bytes: keep the directory short.
        self.directory = tempfile.mkdtemp(prefix="dw-", dir="/tmp")
        self.path = os.path.join(self.directory, "ingest.sock")
        self.endpoint = "unix://" + self.path
        self.malformed: list[bytes] = []
        self.connections = 0  # accepted so far
        self._inbox: queue.Queue[Datagram] = queue.Queue()
        self._pending: list[tuple[Datagram, Record]] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(self.path)
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-agent", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ, None)
            while not self._stopping.is_set():
                for key, _ in selector.select(0.02):
                    if key.data is None:
                        self._accept(selector)
                    else:
                        self._read(selector, key.data)
            for key in list(selector.get_map().values()):
                if key.data is not None:
                    key.data.close()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            connection, _ = self._listener.accept()
        except BlockingIOError:
            return
        connection.setblocking(False)
        self.connections += 1
        selector.register(connection, selectors.EVENT_READ, connection)

    def _read(self, selector: selectors.BaseSelector, connection: socket.socket) -> None:
        try:
            data = connection.recv(1 << 17)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the sender closed its end
            selector.unregister(connection)
            connection.close()
            return
        try:
            body = json.loads(data)
        except ValueError:
            self.malformed.append(data)
            return
        self._inbox.put(Datagram(len(data), time.monotonic(), body))

    def next(self, timeout: float = 2.0) -> Datagram | None:
        """The next datagram, or None if none arrives within ``timeout`` s."""
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def collect(self, duration: float) -> list[Datagram]:
        """Every datagram that arrives within ``duration`` s."""
        deadline = time.monotonic() + duration
        datagrams: list[Datagram] = []
        while (remaining := deadline - time.monotonic()) > 0:
            datagram = self.next(remaining)
            if datagram is not None:
                datagrams.append(datagram)
        return datagrams

    def wait_for(
        self, match: Callable[[Record], bool], timeout: float = 2.0
    ) -> tuple[Datagram, Record] | None:
        """The first record not yet looked at for which ``match`` holds, with its datagram.

        Records looked at and not matched are passed over for good.
        """
        deadline = time.monotonic() + timeout
        while True:
            while self._pending:
                seen, record = self._pending.pop(0)
                if match(record):
                    return seen, record
            remaining = deadline - time.monotonic()
            datagram = self.next(remaining) if remaining > 0 else None
            if datagram is None:
                return None
            self._pending = [(datagram, record) for record in datagram.records]

    def event(self, name: str, trigger: str, timeout: float = 2.0) -> Record | None:
        """The next record of channel ``name`` sent with ``trigger``."""
        found = self.wait_for(
            lambda record: record.get("name") == name and record.get("trigger") == trigger,
            timeout,
        )
        return None if found is None else found[1]

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(2.0)
        self._listener.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        assert not self._thread.is_alive(), "the receiver thread did not stop"


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _silent_reporter() -> Iterator[None]:
    """Start every test from a fresh reporter that sends nothing (never to a real agent),
    and from a process that has not begun to shut down."""
    drainwatch.configure(enabled=False)
    _shutdown.STATE.reset()
    _inflight.REGISTRY.reset()
    try:
        yield
    finally:
        _runtime.shutdown()
        drainwatch.configure(enabled=False)
        _shutdown.STATE.reset()
        _inflight.REGISTRY.reset()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A stand-in agent that the SDK reports to, with snapshots only every 60 s."""
    agent = Receiver()
    try:
        drainwatch.configure(service="sdk-tests", endpoint=agent.endpoint, interval=60)
        yield agent
    finally:
        _runtime.shutdown()
        drainwatch.configure(enabled=False)
        agent.close()
    assert not agent.malformed, f"datagrams that are not JSON: {agent.malformed[:3]!r}"


@pytest.fixture
def socket_dir() -> Iterator[str]:
    """A short, empty directory for socket paths (AF_UNIX paths are limited to 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="dw-", dir="/tmp")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


# -- subprocesses ------------------------------------------------------------------------------


def subprocess_env(**variables: str) -> dict[str, str]:
    """This environment without any ``DRAINWATCH_*`` variable, plus ``variables``.

    ``PYTHONPATH`` names the directory this ``drainwatch`` was imported from, so a child
    interpreter imports the same SDK however the tests were started.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("DRAINWATCH_")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(drainwatch.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
    env.update(variables)
    return env


def run_python(
    code: str, *args: str, env: dict[str, str], timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with this interpreter (``python -c code args...``)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_under_drainwatch(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``drainwatch run -- python -c code`` without the agent's extras on the path."""
    runner = textwrap.dedent("""
        import sys
        from drainwatch._run_command import build_environment, exec_command
        import os
        exec_command(sys.argv[1:], build_environment(os.environ))
    """)
    return run_python(runner, sys.executable, "-c", code, env=env)
