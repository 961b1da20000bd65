"""Figures 6 to 9: a loopback unary gRPC call counted by drainwatch's in-flight tracking.

For each server kind (``grpc.server`` with a thread pool and a sync client, ``grpc.aio``
with an aio client) a server process (``bench.grpc_target``) serves one raw-bytes method on
three ports: a plain server, one built with drainwatch's ``server()``/``aio_server()``, and
a plain one with OpenTelemetry's interceptor. The bench process is the client. A round
makes ``calls`` calls to each server, interleaved call by call (A B C, C B A, A B C, ...
with the first server rotating from round to round) and timed one by one; each server's
figure for the round is its mean call latency. A noisy neighbour's slice of CPU then lands
on all three servers alike, where timing a block of calls per server would charge it to
whichever server was running. The rounds are spread over ``SERVER_PROCESSES`` server
processes, one after the other, each warmed up first.

Two figures per kind: the round's drainwatch/baseline ratio (median over rounds, budget
``BUDGET_RATIO``), and drainwatch's added time per call against OpenTelemetry's (medians
over rounds of candidate minus baseline, budget ``BUDGET_SHARE_OF_OPENTELEMETRY``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc
import grpc.aio

from .agent_process import LineReader, stop_process
from .figure import Figure
from .grpc_target import FULL_METHOD, VARIANTS
from .interleaved import Labels, call_orders, overhead_figure, share_figure
from .measure import gc_paused

BUDGET_RATIO = 1.01
BUDGET_SHARE_OF_OPENTELEMETRY = 0.20
WARMUP_ROUNDS = 2
# Within one server process, its servers can sit a percent or two apart for the whole run
# (thread placement, memory layout), differently in the next process: a figure from one
# process would carry that offset, so the rounds are spread over many (eight processes of
# ten sync rounds each had medians from 0.999 to 1.014 with the same code).
SERVER_PROCESSES = 12
_PAYLOAD = b"ping"
_START_TIMEOUT_SECONDS = 30.0
_STOP_TIMEOUT_SECONDS = 10.0
_REPO_ROOT = Path(__file__).resolve().parent.parent

RoundRunner = Callable[[int, int], list[float]]
"""``(calls, round_index)``: runs one round, returns each server's mean call latency in ns."""


def _sync_round(
    stubs: Sequence[Callable[[bytes], bytes]], calls: int, round_index: int
) -> list[float]:
    forward, backward = call_orders(round_index)
    totals = [0] * len(stubs)
    clock = time.perf_counter_ns
    for call in range(calls):
        for index in forward if call % 2 == 0 else backward:
            stub = stubs[index]
            started = clock()
            stub(_PAYLOAD)
            totals[index] += clock() - started
    return [total / calls for total in totals]


async def _aio_round(
    stubs: Sequence[grpc.aio.UnaryUnaryMultiCallable], calls: int, round_index: int
) -> list[float]:
    forward, backward = call_orders(round_index)
    totals = [0] * len(stubs)
    clock = time.perf_counter_ns
    for call in range(calls):
        for index in forward if call % 2 == 0 else backward:
            stub = stubs[index]
            started = clock()
            await stub(_PAYLOAD)
            totals[index] += clock() - started
    return [total / calls for total in totals]


def _check_echo(response: object, port: int) -> None:
    if response != _PAYLOAD:
        raise RuntimeError(f"the server on port {port} answered {response!r}, not {_PAYLOAD!r}")


@contextmanager
def _sync_client(ports: Sequence[int]) -> Iterator[RoundRunner]:
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    try:
        # _registered_method=True is what generated stubs pass.
        stubs = [channel.unary_unary(FULL_METHOD, _registered_method=True) for channel in channels]
        for stub, port in zip(stubs, ports, strict=True):
            _check_echo(stub(_PAYLOAD), port)
        yield lambda calls, round_index: _sync_round(stubs, calls, round_index)
    finally:
        for channel in channels:
            channel.close()


async def _open_aio(ports: Sequence[int]) -> list[grpc.aio.Channel]:
    # Created inside the loop: an aio channel belongs to the loop running when it is made.
    return [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]


async def _check_aio(
    stubs: Sequence[grpc.aio.UnaryUnaryMultiCallable], ports: Sequence[int]
) -> None:
    for stub, port in zip(stubs, ports, strict=True):
        _check_echo(await stub(_PAYLOAD), port)


async def _close_aio(channels: Sequence[grpc.aio.Channel]) -> None:
    for channel in channels:
        await channel.close()


@contextmanager
def _aio_client(ports: Sequence[int]) -> Iterator[RoundRunner]:
    loop = asyncio.new_event_loop()
    try:
        channels = loop.run_until_complete(_open_aio(ports))
        try:
            stubs = [
                channel.unary_unary(FULL_METHOD, _registered_method=True) for channel in channels
            ]
            loop.run_until_complete(_check_aio(stubs, ports))
            yield lambda calls, round_index: loop.run_until_complete(
                _aio_round(stubs, calls, round_index)
            )
        finally:
            loop.run_until_complete(_close_aio(channels))
    finally:
        loop.close()


class _ServerProcess:
    """A running ``bench.grpc_target``: its ports, and at the end what it counted."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.grpc_target", kind],
            cwd=_REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if self._process.stdout is None or self._process.stderr is None:
            raise RuntimeError("the gRPC server's pipes are missing")  # pragma: no cover
        self._stdout = LineReader(self._process.stdout, f"grpc-{kind}-stdout")
        self._stderr = LineReader(self._process.stderr, f"grpc-{kind}-stderr")
        self.ports = [
            int(port) for port in self._expect("ready", len(VARIANTS), _START_TIMEOUT_SECONDS)
        ]

    def _expect(self, word: str, count: int, timeout: float) -> list[str]:
        """The ``count`` fields after ``word`` on the server's next line of output."""
        line = self._stdout.next_line(timeout)
        fields = line.split() if line is not None else []
        if fields[:1] != [word] or len(fields) != count + 1:
            raise RuntimeError(
                f"the {self.kind} gRPC server did not print {word!r} (got {line!r}); "
                f"its stderr:\n{self._stderr.tail()}"
            )
        return fields[1:]

    def counted(self) -> tuple[int, int]:
        """Stop the servers; (RPCs drainwatch counted, spans OpenTelemetry ended)."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        rpcs, spans = self._expect("counted", 2, _STOP_TIMEOUT_SECONDS)
        return int(rpcs), int(spans)

    def stop(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()
        stop_process(self._process)


def _measure(kind: str, calls: int, rounds: int) -> list[list[float]]:
    """Per variant, each round's mean call latency in ns, the rounds spread evenly over
    ``SERVER_PROCESSES`` server processes run one after the other."""
    samples: list[list[float]] = [[] for _ in VARIANTS]
    processes = max(1, min(SERVER_PROCESSES, rounds))
    first = 0
    for index in range(processes):
        share = rounds // processes + (1 if index < rounds % processes else 0)
        measured = _measure_process(kind, calls, range(first, first + share))
        for sample, latencies in zip(samples, measured, strict=True):
            sample.extend(latencies)
        first += share
    return samples


def _measure_process(kind: str, calls: int, round_indexes: range) -> list[list[float]]:
    """Per variant, the mean call latency in ns of each round in ``round_indexes``, all
    served by one server process."""
    server = _ServerProcess(kind)
    try:
        client = _sync_client if kind == "sync" else _aio_client
        samples: list[list[float]] = [[] for _ in VARIANTS]
        with client(server.ports) as run_round:
            for round_index in range(WARMUP_ROUNDS):
                run_round(calls, round_index)
            for round_index in round_indexes:
                with gc_paused():
                    latencies = run_round(calls, round_index)
                for sample, latency in zip(samples, latencies, strict=True):
                    sample.append(latency)
        sent = 1 + (WARMUP_ROUNDS + len(round_indexes)) * calls
        rpcs, spans = server.counted()
    finally:
        server.stop()
    if (rpcs, spans) != (sent, sent):
        raise RuntimeError(
            f"{sent} calls per server, but drainwatch counted {rpcs} RPCs and OpenTelemetry "
            f"ended {spans} spans: one of them did not see every call"
        )
    return samples


def _labels(kind: str, calls: int) -> Labels:
    return Labels(
        overhead_name=f"gRPC unary ({kind}) with in-flight tracking",
        share_name=f"gRPC unary ({kind}): drainwatch's added time vs OpenTelemetry's",
        baseline="no interceptor",
        unit="call",
        overhead_note=(
            f"{calls} calls per server per round, interleaved call by call with the "
            f"baseline and OpenTelemetry servers, rounds spread over {SERVER_PROCESSES} "
            "server processes"
        ),
        share_note=(
            "added time is a server's mean call latency minus the baseline's in the same "
            "round, per call; the ratio is drainwatch's median over OpenTelemetry's, the "
            "spread the interquartile ranges of both; OpenTelemetry runs "
            "opentelemetry-instrumentation-grpc with an opentelemetry-sdk TracerProvider "
            "whose only span processor counts ended spans (every span sampled and recorded, "
            "nothing exported)"
        ),
    )


def grpc_unary(kind: str, calls: int, rounds: int) -> list[Figure]:
    """The two figures of one server kind, ``"sync"`` or ``"aio"``: drainwatch against no
    interceptor, and drainwatch's added time against OpenTelemetry's."""
    samples = _measure(kind, calls, rounds)
    labels = _labels(kind, calls)
    return [
        overhead_figure(samples, labels, BUDGET_RATIO),
        share_figure(samples, labels, BUDGET_SHARE_OF_OPENTELEMETRY),
    ]
