"""``python -m bench.soak [--seconds 600] [--rate 200000] [--check]``: sustained ingest
against a real agent, with the agent's memory, every event's fate and scrape latency watched.

A sender stands in for a fleet of SDK processes (20 processes x 50 channels, channel
snapshots batched 40 to a datagram, as the SDK packs them) and offers ``--rate`` events
(records) per second, the ingest budget of docs/performance.md, on a non-blocking socket
like the SDK's: a datagram the kernel refuses is dropped and counted, never waited for. Each
process's datagrams carry its cumulative drop count, as the SDK's do. Meanwhile the agent's
RSS is read and ``/metrics`` is scraped once a second, from a process of its own.

At the end every process sends one last datagram (waiting until it is accepted) and the
agent is asked what it counted. The run holds when:

- every event is accounted for: received by the agent + counted as dropped = offered, and
  the agent's own ``drainwatch_sdk_events_dropped_total`` equals the sender's count;
- nothing was rejected;
- RSS is flat: the slope of a least-squares line through the samples after the first
  fifth of the run is below ``--max-rss-slope`` MiB per minute;
- scrape latency is stable: the p99 of the second half is at most 4x the first half's
  (or 1 s), and under 5 s.

``--check`` turns a miss into exit code 1 (``scripts/test`` runs 60 s with it).
"""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
from drainwatch._histogram import WAIT_BUCKETS
from prometheus_client.parser import text_string_to_metric_families

from .agent_process import AgentProcess, MetricsScraper, running_agent

PROCESSES = 20
CHANNELS_PER_PROCESS = 50
RECORDS_PER_DATAGRAM = 40
VARIANTS = 8
TICK_SECONDS = 0.01
_EMPTY = {"counts": [0] * (len(WAIT_BUCKETS) + 1), "sum": 0.0, "count": 0}


def _record(channel_id: int, variant: int, now: float) -> bytes:
    record: dict[str, Any] = {
        "type": "channel",
        "trigger": "snapshot",
        "id": channel_id,
        "name": f"queue-{channel_id % CHANNELS_PER_PROCESS}",
        "kind": "asyncio",
        "owner": None,
        "capacity": 100,
        "created": now - 60,
        "closed": None,
        "immediate": False,
        "closed_by": None,
        "closed_where": None,
        "drained": None,
        "residual": None,
        "depth": variant,
        "sent": 1000 * variant + channel_id,
        "received": 1000 * variant,
        "discarded": 0,
        "read_after_close": 0,
        "send_after_close": 0,
        "double_close": 0,
        "waiters": {"send": 0, "receive": variant % 2},
        "oldest_wait": {"send": 0.0, "receive": 0.001 * variant},
        "wait": {"send": _EMPTY, "receive": _EMPTY},
    }
    return json.dumps(record, separators=(",", ":")).encode()


@dataclass
class Process:
    """One simulated SDK process: its batches (per variant) and its counters."""

    instance: str
    pid: int
    batches: list[list[tuple[bytes, int]]]
    seq: int = 0
    dropped: int = 0

    def datagram(self, body: bytes) -> bytes:
        self.seq += 1
        head = (
            f'{{"v":1,"service":"soak","instance":"{self.instance}","pid":{self.pid},'
            f'"seq":{self.seq},"time":{time.time()},"dropped":{self.dropped},"records":['
        )
        return head.encode() + body + b"]}"


def _processes(now: float) -> list[Process]:
    processes = []
    for index in range(PROCESSES):
        variants = []
        for variant in range(VARIANTS):
            records = [
                _record(channel, variant, now) for channel in range(1, CHANNELS_PER_PROCESS + 1)
            ]
            variants.append(
                [
                    (b",".join(records[start : start + RECORDS_PER_DATAGRAM]), len(chunk))
                    for start in range(0, len(records), RECORDS_PER_DATAGRAM)
                    if (chunk := records[start : start + RECORDS_PER_DATAGRAM])
                ]
            )
        processes.append(Process(f"soak-{index:03d}", 10_000 + index, variants))
    return processes


@dataclass
class Watch:
    """RSS and scrape latency, sampled once a second in a process of its own: in the
    sender's process, the sender's busy loop would hold the GIL and inflate the latencies
    the watcher measures."""

    agent: AgentProcess
    rss: list[tuple[float, int]] = field(default_factory=list)
    scrapes: list[tuple[float, float]] = field(default_factory=list)

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._results, sender = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_watch, args=(self.agent, self._stop, sender), name="soak-watch"
        )
        self._process.start()
        sender.close()

    def finish(self) -> None:
        self._stop.set()
        self.rss, self.scrapes = self._results.recv()
        self._process.join(60)


def _watch(agent: AgentProcess, stop: Any, results: Any) -> None:
    """The watcher process: sample until ``stop``, then send (rss, scrapes) back."""
    scraper = MetricsScraper(agent, timeout=30.0)
    process = psutil.Process(agent.pid)
    rss: list[tuple[float, int]] = []
    scrapes: list[tuple[float, float]] = []
    started = time.monotonic()
    try:
        while not stop.wait(1.0):
            now = time.monotonic() - started
            rss.append((now, process.memory_info().rss))
            began = time.perf_counter()
            scraper.scrape()
            scrapes.append((now, time.perf_counter() - began))
    finally:
        scraper.close()
        results.send((rss, scrapes))
        results.close()


@dataclass(frozen=True)
class SoakResult:
    seconds: float
    rate: int
    offered: int
    dropped: int
    received: float
    agent_dropped: float
    rejected: float
    rss_start_mib: float
    rss_end_mib: float
    rss_slope_mib_per_minute: float
    scrape_p99_first: float
    scrape_p99_second: float
    scrape_p50: float

    @property
    def accounted(self) -> bool:
        return self.received + self.dropped == self.offered and self.agent_dropped == self.dropped

    def problems(self, max_rss_slope: float) -> list[str]:
        found = []
        if not self.accounted:
            found.append(
                f"events not accounted for: received {self.received:.0f} + dropped "
                f"{self.dropped} != offered {self.offered} (agent counted "
                f"{self.agent_dropped:.0f} dropped)"
            )
        if self.rejected:
            found.append(f"{self.rejected:.0f} records rejected")
        if self.rss_slope_mib_per_minute > max_rss_slope:
            found.append(
                f"RSS grows {self.rss_slope_mib_per_minute:.2f} MiB/min (> {max_rss_slope})"
            )
        if self.scrape_p99_second > max(4 * self.scrape_p99_first, 1.0) or (
            self.scrape_p99_second > 5.0
        ):
            found.append(
                f"scrape p99 went from {self.scrape_p99_first:.3f} s to "
                f"{self.scrape_p99_second:.3f} s"
            )
        return found


def _slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, bytes), in MiB per minute."""
    if len(points) < 3:
        return 0.0
    xs = [x for x, _ in points]
    ys = [y / 2**20 for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    numerator = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    denominator = sum((x - mean_x) ** 2 for x in xs)
    return 60.0 * numerator / denominator if denominator else 0.0


def _p(values: list[float], quantile: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


def _agent_counts(scraper: MetricsScraper) -> tuple[float, float, float]:
    received = dropped = rejected = 0.0
    for family in text_string_to_metric_families(scraper.scrape()):
        for sample in family.samples:
            if sample.name == "drainwatch_agent_events_received_total":
                received += sample.value
            elif sample.name == "drainwatch_sdk_events_dropped_total":
                dropped += sample.value
            elif sample.name == "drainwatch_agent_events_rejected_total":
                rejected += sample.value
    return received, dropped, rejected


def _offer(sock: socket.socket, processes: list[Process], seconds: float, rate: int) -> int:
    """Offer ``rate`` records per second for ``seconds``; returns the records offered."""
    offered = 0
    per_tick = rate * TICK_SECONDS
    owed = 0.0
    started = time.monotonic()
    tick = 0
    cursor = 0
    while (now := time.monotonic()) - started < seconds:
        owed += per_tick
        while owed >= RECORDS_PER_DATAGRAM:
            process = processes[cursor % len(processes)]
            batches = process.batches[(cursor // len(processes)) % VARIANTS]
            body, count = batches[(cursor // (len(processes) * VARIANTS)) % len(batches)]
            cursor += 1
            owed -= count
            offered += count
            try:
                sock.send(process.datagram(body))
            except BlockingIOError:
                process.dropped += count
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    raise
                process.dropped += count
        tick += 1
        delay = started + tick * TICK_SECONDS - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif now - started > tick * TICK_SECONDS + 1.0:
            tick = int((now - started) / TICK_SECONDS)  # the sender fell behind: skip ahead
    return offered


def _final(sock: socket.socket, processes: list[Process]) -> int:
    """One last datagram per process, waited for, carrying its final drop count."""
    sent = 0
    sock.setblocking(True)
    sock.settimeout(30.0)
    for process in processes:
        body, count = process.batches[0][0]
        sock.send(process.datagram(body))
        sent += count
    return sent


def soak(seconds: float, rate: int) -> SoakResult:
    with running_agent() as agent:
        watch = Watch(agent)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.connect(agent.ingest.removeprefix("unix://"))
        sock.setblocking(False)
        processes = _processes(time.time())
        watch.start()
        try:
            offered = _offer(sock, processes, seconds, rate)
            offered += _final(sock, processes)
        finally:
            watch.finish()
            sock.close()
        dropped = sum(process.dropped for process in processes)
        scraper = MetricsScraper(agent, timeout=30.0)
        deadline = time.monotonic() + 60
        while True:
            received, agent_dropped, rejected = _agent_counts(scraper)
            if received + dropped >= offered or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        scraper.close()
    warm = [point for point in watch.rss if point[0] >= seconds / 5]
    half = seconds / 2
    first = [latency for at, latency in watch.scrapes if at < half]
    second = [latency for at, latency in watch.scrapes if at >= half]
    return SoakResult(
        seconds=seconds,
        rate=rate,
        offered=offered,
        dropped=dropped,
        received=received,
        agent_dropped=agent_dropped,
        rejected=rejected,
        rss_start_mib=(warm[0][1] if warm else 0) / 2**20,
        rss_end_mib=(warm[-1][1] if warm else 0) / 2**20,
        rss_slope_mib_per_minute=_slope(warm),
        scrape_p99_first=_p(first, 0.99),
        scrape_p99_second=_p(second, 0.99),
        scrape_p50=_p([latency for _, latency in watch.scrapes], 0.5),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=int, default=200_000, help="records offered per second")
    parser.add_argument("--max-rss-slope", type=float, default=2.0, help="MiB per minute")
    parser.add_argument("--check", action="store_true", help="exit 1 when a property fails")
    args = parser.parse_args(argv)
    if args.seconds < 10 or args.rate < RECORDS_PER_DATAGRAM:
        parser.error("--seconds must be >= 10 and --rate >= 40")
    result = soak(args.seconds, args.rate)
    print(
        f"soak {result.seconds:.0f} s at {result.rate} events/s offered: "
        f"{result.offered} offered, {result.received:.0f} received "
        f"({result.received / result.seconds:.0f}/s), {result.dropped} dropped and counted "
        f"(agent counted {result.agent_dropped:.0f}), {result.rejected:.0f} rejected"
    )
    print(
        f"RSS {result.rss_start_mib:.1f} -> {result.rss_end_mib:.1f} MiB after warm-up, "
        f"slope {result.rss_slope_mib_per_minute:+.2f} MiB/min; scrape p50 "
        f"{result.scrape_p50 * 1000:.1f} ms, p99 first half {result.scrape_p99_first * 1000:.1f}"
        f" ms, second half {result.scrape_p99_second * 1000:.1f} ms"
    )
    problems = result.problems(args.max_rss_slope)
    for problem in problems:
        print(f"soak: {problem}", file=sys.stderr)
    return 1 if problems and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
