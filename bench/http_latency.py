"""An HTTP request through drainwatch's aiohttp and ASGI middleware.

For each server kind (aiohttp, and a Starlette app under uvicorn) a server process
(``bench.http_target``) serves one route on three ports: the plain app, the app with
drainwatch's middleware, and the app with OpenTelemetry's. The bench process is the
client, with one kept-alive connection per server, and calls the three in turn, call by
call (``bench.interleaved``), as the gRPC figures do. Each request asks for a new item
(``GET /items/<n>``, ``n`` counting up), as a service's clients would, so nothing keyed by
the concrete path can be reused from one request to the next. The rounds are spread over
``SERVER_PROCESSES`` server processes, one after the other, each warmed up first.

The client is a few lines over a blocking socket (one ``sendall`` of a prepared request,
then reads up to the body's length) rather than ``http.client``: the less time the client
spends per request, the larger the share of the server's time in each latency, and the
stricter the ratio.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .agent_process import LineReader, stop_process
from .figure import Figure
from .http_target import BODY, ROUTE, VARIANTS
from .interleaved import Labels, call_orders, overhead_figure, share_figure
from .measure import gc_paused

BUDGET_RATIO = 1.02
# "Below OpenTelemetry": drainwatch's added time at most OpenTelemetry's.
BUDGET_SHARE_OF_OPENTELEMETRY = 1.00
WARMUP_ROUNDS = 2
SERVER_PROCESSES = 6
_START_TIMEOUT_SECONDS = 30.0
_STOP_TIMEOUT_SECONDS = 10.0
_SOCKET_TIMEOUT_SECONDS = 10.0
_HEADER_END = b"\r\n\r\n"
_REPO_ROOT = Path(__file__).resolve().parent.parent
_KIND_NAMES = {"aiohttp": "aiohttp", "asgi": "ASGI (Starlette on uvicorn)"}


class _Connection:
    """One kept-alive HTTP/1.1 connection; ``get`` returns the response body."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._sock = socket.create_connection(("127.0.0.1", port), _SOCKET_TIMEOUT_SECONDS)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def get(self, request: bytes) -> bytes:
        sock = self._sock
        sock.sendall(request)
        buffer = self._buffer
        while (end := buffer.find(_HEADER_END)) < 0:
            buffer += self._receive()
        head = buffer[:end]
        length = _content_length(head, self.port)
        start = end + len(_HEADER_END)
        while len(buffer) < start + length:
            buffer += self._receive()
        self._buffer = buffer[start + length :]
        if not head.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"the server on port {self.port} answered {head[:60]!r}")
        return buffer[start : start + length]

    def _receive(self) -> bytes:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"the server on port {self.port} closed the connection")
        return chunk

    def close(self) -> None:
        self._sock.close()


def _content_length(head: bytes, port: int) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise RuntimeError(f"the server on port {port} sent no Content-Length: {head!r}")


def _request(number: int) -> bytes:
    path = ROUTE.replace("{item_id}", str(number))
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


class _Client:
    """The bench's side: one connection per server, and the next item number."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.connections = [_Connection(port) for port in ports]
        self.number = 0
        for connection in self.connections:
            if connection.get(self._next()) != BODY:
                raise RuntimeError(f"the server on port {connection.port} did not answer {BODY!r}")

    def _next(self) -> bytes:
        self.number += 1
        return _request(self.number)

    def round(self, calls: int, round_index: int) -> list[float]:
        """Each server's mean request latency in ns over ``calls`` interleaved requests."""
        forward, backward = call_orders(round_index)
        connections = self.connections
        totals = [0] * len(connections)
        clock = time.perf_counter_ns
        for call in range(calls):
            for index in forward if call % 2 == 0 else backward:
                request = self._next()
                get = connections[index].get
                started = clock()
                get(request)
                totals[index] += clock() - started
        return [total / calls for total in totals]

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


class _ServerProcess:
    """A running ``bench.http_target``: its ports, and at the end what it counted."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.http_target", kind],
            cwd=_REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if self._process.stdout is None or self._process.stderr is None:
            raise RuntimeError("the HTTP server's pipes are missing")  # pragma: no cover
        self._stdout = LineReader(self._process.stdout, f"http-{kind}-stdout")
        self._stderr = LineReader(self._process.stderr, f"http-{kind}-stderr")
        self.ports = [
            int(port) for port in self._expect("ready", len(VARIANTS), _START_TIMEOUT_SECONDS)
        ]

    def _expect(self, word: str, count: int, timeout: float) -> list[str]:
        line = self._stdout.next_line(timeout)
        fields = line.split() if line is not None else []
        if fields[:1] != [word] or len(fields) != count + 1:
            raise RuntimeError(
                f"the {self.kind} HTTP server did not print {word!r} (got {line!r}); "
                f"its stderr:\n{self._stderr.tail()}"
            )
        return fields[1:]

    def counted(self) -> tuple[int, int]:
        """Stop the servers; (requests drainwatch counted, server spans OpenTelemetry ended)."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        requests, spans = self._expect("counted", 2, _STOP_TIMEOUT_SECONDS)
        return int(requests), int(spans)

    def stop(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()
        stop_process(self._process)


@contextmanager
def _client(ports: Sequence[int]) -> Iterator[_Client]:
    client = _Client(ports)
    try:
        yield client
    finally:
        client.close()


def _measure_process(kind: str, calls: int, rounds: int, first_round: int) -> list[list[float]]:
    """Per variant, the mean latency in ns of each of ``rounds`` rounds, one server process."""
    server = _ServerProcess(kind)
    try:
        samples: list[list[float]] = [[] for _ in VARIANTS]
        with _client(server.ports) as client:
            for round_index in range(WARMUP_ROUNDS):
                client.round(calls, round_index)
            for round_index in range(first_round, first_round + rounds):
                with gc_paused():
                    latencies = client.round(calls, round_index)
                for sample, latency in zip(samples, latencies, strict=True):
                    sample.append(latency)
        sent = 1 + (WARMUP_ROUNDS + rounds) * calls
        requests, spans = server.counted()
    finally:
        server.stop()
    if (requests, spans) != (sent, sent):
        raise RuntimeError(
            f"{sent} requests per server, but drainwatch counted {requests} and OpenTelemetry "
            f"ended {spans} server spans: one of them did not see every request"
        )
    return samples


def _measure(kind: str, calls: int, rounds: int) -> list[list[float]]:
    samples: list[list[float]] = [[] for _ in VARIANTS]
    processes = max(1, min(SERVER_PROCESSES, rounds))
    first = 0
    for index in range(processes):
        share = rounds // processes + (1 if index < rounds % processes else 0)
        for sample, latencies in zip(
            samples, _measure_process(kind, calls, share, first), strict=True
        ):
            sample.extend(latencies)
        first += share
    return samples


def _labels(kind: str, calls: int) -> Labels:
    name = _KIND_NAMES[kind]
    if kind == "aiohttp":
        instrumented = (
            "drainwatch's middleware added by drainwatch.integrations.aiohttp.setup(app); "
            "OpenTelemetry's by opentelemetry-instrumentation-aiohttp-server's "
            "create_aiohttp_middleware"
        )
    else:
        instrumented = (
            "uvicorn with its default HTTP/1.1 parser (h11), the Starlette app wrapped in "
            "DrainwatchMiddleware, or in OpenTelemetry's OpenTelemetryMiddleware "
            "(opentelemetry-instrumentation-asgi, default settings: a server span and "
            "one internal span per ASGI message sent)"
        )
    return Labels(
        overhead_name=f"HTTP request ({name}) with in-flight tracking",
        share_name=f"HTTP request ({name}): drainwatch's added time vs OpenTelemetry's",
        baseline="no middleware",
        unit="request",
        overhead_note=(
            f"{calls} requests per server per round (GET {ROUTE}, a new item each time, "
            "over one kept-alive connection per server), interleaved request by request "
            f"with the baseline and OpenTelemetry servers, rounds spread over "
            f"{SERVER_PROCESSES} server processes; {instrumented}"
        ),
        share_note=(
            "added time is a server's mean request latency minus the baseline's in the same "
            "round; the ratio is drainwatch's median over OpenTelemetry's (the budget: "
            "below OpenTelemetry), the spread the interquartile ranges of both; "
            "OpenTelemetry runs with an opentelemetry-sdk TracerProvider whose only span "
            "processor counts ended server spans (every span sampled and recorded, nothing "
            "exported)"
        ),
    )


def http_request(kind: str, calls: int, rounds: int) -> list[Figure]:
    """The two figures of one server kind, ``"aiohttp"`` or ``"asgi"``: drainwatch against
    no middleware, and drainwatch's added time against OpenTelemetry's."""
    samples = _measure(kind, calls, rounds)
    labels = _labels(kind, calls)
    return [
        overhead_figure(samples, labels, BUDGET_RATIO),
        share_figure(samples, labels, BUDGET_SHARE_OF_OPENTELEMETRY),
    ]
