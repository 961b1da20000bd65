"""A real ``drainwatch agent`` subprocess for the end-to-end figures, and a /metrics scraper.

The agent logs ``listening on http://HOST:PORT`` to stderr once it serves; a reader thread
keeps draining stderr afterwards so a chatty agent can never block on a full pipe, and
keeps the last lines for error messages.
"""

from __future__ import annotations

import http.client
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

_LISTENING = re.compile(r"listening on http://(?P<host>[^\s:]+|\[[^\]]+\]):(?P<port>\d+)")
_START_TIMEOUT_SECONDS = 15.0
_STOP_TIMEOUT_SECONDS = 5.0
_SCRAPE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class AgentProcess:
    """Where a running agent listens: ``host``/``port`` for HTTP, ``ingest`` for SDKs."""

    host: str
    port: int
    ingest: str
    workdir: str
    pid: int = 0


class LineReader:
    """Drains a child's text stream in a thread; ``next_line`` waits with a timeout."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._tail: deque[str] = deque(maxlen=40)
        self._thread = threading.Thread(target=self._drain, args=(stream,), name=name, daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[str]) -> None:
        for line in stream:
            self._tail.append(line.rstrip())
            self._lines.put(line)
        self._lines.put(None)

    def next_line(self, timeout: float) -> str | None:
        """The next line; None at end of stream or when ``timeout`` seconds pass first."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def tail(self) -> str:
        """The last lines read, for error messages."""
        return "\n".join(self._tail) or "(no output)"


def _wait_for_address(reader: LineReader) -> tuple[str, int]:
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        line = reader.next_line(remaining)
        if line is None:
            break
        match = _LISTENING.search(line)
        if match:
            return match["host"].strip("[]"), int(match["port"])
    raise RuntimeError(f"the agent did not report its HTTP address; its stderr:\n{reader.tail()}")


def stop_process(process: subprocess.Popen[str]) -> None:
    """Terminate, then kill after a bounded wait; safe on a process that already exited."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(_STOP_TIMEOUT_SECONDS)


@contextmanager
def running_agent(extra_arguments: Sequence[str] = ()) -> Iterator[AgentProcess]:
    """Start an agent on a free loopback port and a fresh Unix socket; stop it on exit.
    ``extra_arguments`` go to ``drainwatch agent`` after the others."""
    # Unix socket paths are limited to ~108 bytes: keep the directory short.
    workdir = tempfile.mkdtemp(prefix="dwb-", dir="/tmp")
    ingest = f"unix://{workdir}/ingest.sock"
    command = [
        sys.executable,
        "-m",
        "drainwatch.agent.cli",
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--ingest",
        ingest,
        "--log-level",
        "info",
        # Nothing here scrapes a stopping agent: it may leave at once.
        "--final-metrics-seconds",
        "0",
        *extra_arguments,
    ]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if process.stderr is None:  # pragma: no cover - stderr=PIPE always sets it
            raise RuntimeError("the agent's stderr pipe is missing")
        host, port = _wait_for_address(LineReader(process.stderr, "agent-stderr"))
        yield AgentProcess(host, port, ingest, workdir, process.pid)
    finally:
        stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)


class MetricsScraper:
    """GETs /metrics over one kept-alive connection; reconnects once if it was dropped."""

    def __init__(self, agent: AgentProcess, timeout: float = _SCRAPE_TIMEOUT_SECONDS) -> None:
        self._agent = agent
        self._timeout = timeout
        self._connection = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self._agent.host, self._agent.port, timeout=self._timeout)

    def scrape(self) -> str:
        try:
            return self._get()
        except (http.client.HTTPException, ConnectionError):
            self._connection.close()
            self._connection = self._connect()
            return self._get()

    def _get(self) -> str:
        self._connection.request("GET", "/metrics")
        response = self._connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET /metrics answered {response.status}: {body[:200]!r}")
        return body.decode()

    def close(self) -> None:
        self._connection.close()
