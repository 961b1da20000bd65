"""A cardinality storm against a real agent: 20,000 unique names in every dimension a
target can name, and what the agent's series and memory do.

``python -m bench.storm`` starts an agent, measures its series and RSS, sends the storm,
and measures again; ``docs/reliability.md`` records the figures. ``tests/e2e/test_storm.py``
runs the same storm and checks the bounds.

The storm, in this order (each through the real ingest socket, as valid protocol v1):

1. ``long``: 200 channel names of 1,024 characters (the decoder's longest string) in a
   service whose name has 1,012.
2. ``channels``: 20,000 channel names in one service, from one process.
3. ``methods``: 20,000 request method names over 8 services, 500 per process.
4. ``spread``: 20,000 channel names over 200 services (100 each).
5. ``services``: 20,000 more services, one channel each.
6. ``instances``: 20,000 processes of one service.
7. ``steps``: 64 shutdown steps per process (the decoder's cap) with unique names and
   64 listeners, for 200 processes.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
from drainwatch._histogram import WAIT_BUCKETS

from .agent_process import MetricsScraper, running_agent

UNIQUE_NAMES = 20_000
_RECORDS_PER_DATAGRAM = 40
_BATCH_BYTES = 32 * 1024
_EMPTY_HISTOGRAM = {"counts": [0] * (len(WAIT_BUCKETS) + 1), "sum": 0.0, "count": 0}
_OUTCOMES = ("ok", "error", "cancelled", "aborted_at_shutdown", "rejected_draining")
# a label value in the text exposition: quoted, with \\, \" and \n escaped
_LABEL_VALUE = re.compile(r'="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class AgentFootprint:
    """Series in one scrape, the scrape's wall time, the agent's RSS."""

    series: int
    scrape_seconds: float
    rss_bytes: int
    longest_label: int


@dataclass(frozen=True)
class StormResult:
    before: AgentFootprint
    after: AgentFootprint
    datagrams: int
    records: int
    seconds: float
    capped: dict[str, float]


def _channel(channel_id: int, name: str, now: float) -> dict[str, Any]:
    return {
        "type": "channel",
        "trigger": "snapshot",
        "id": channel_id,
        "name": name,
        "kind": "asyncio",
        "owner": None,
        "capacity": 10,
        "created": now - 60,
        "closed": None,
        "immediate": False,
        "closed_by": None,
        "closed_where": None,
        "drained": None,
        "residual": None,
        "depth": 1,
        "sent": 3,
        "received": 2,
        "discarded": 0,
        "read_after_close": 0,
        "send_after_close": 0,
        "double_close": 0,
        "waiters": {"send": 0, "receive": 0},
        "oldest_wait": {"send": 0.0, "receive": 0.0},
        "wait": {"send": _EMPTY_HISTOGRAM, "receive": _EMPTY_HISTOGRAM},
    }


def _inflight(method: str) -> dict[str, Any]:
    return {
        "type": "inflight",
        "protocol": "grpc",
        "method": method,
        "active": 1,
        "started_during_drain": 0,
        "outcomes": dict.fromkeys(_OUTCOMES, 1),
        "duration": {**_EMPTY_HISTOGRAM, "counts": [5] + [0] * len(WAIT_BUCKETS), "count": 5},
    }


def _shutdown(prefix: str, now: float) -> dict[str, Any]:
    steps = {
        f"{prefix}-step-{index}": {"started": now, "finished": now + 1, "ok": True, "detail": None}
        for index in range(64)
    }
    listeners = {
        f"{prefix}-listener-{index}": {
            "role": "business",
            "port": 1000 + index,
            "opened": now - 10,
            "stop_started": now,
            "closed": now + 1,
        }
        for index in range(64)
    }
    return {
        "type": "shutdown",
        "phase": "draining",
        "signals": [{"signal": "SIGTERM", "at": now}],
        "steps": steps,
        "ready": False,
        "ready_changed": now,
        "health": {},
        "listeners": listeners,
    }


def _batches(records: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Up to 40 records per datagram, and never more than the SDK's 32 KiB of them."""
    batch: list[dict[str, Any]] = []
    size = 0
    for record in records:
        length = len(json.dumps(record))
        if batch and (len(batch) == _RECORDS_PER_DATAGRAM or size + length > _BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += length
    if batch:
        yield batch


class StormSender:
    """Sends protocol v1 datagrams over one blocking connection (a storm may wait)."""

    def __init__(self, socket_path: str) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._socket.connect(socket_path)
        self._seq: dict[str, int] = {}
        self.datagrams = 0
        self.records = 0

    def send(self, service: str, instance: str, records: list[dict[str, Any]]) -> None:
        for batch in _batches(records):
            seq = self._seq[instance] = self._seq.get(instance, 0) + 1
            message = {
                "v": 1,
                "service": service,
                "instance": instance,
                "pid": 4242,
                "seq": seq,
                "time": time.time(),
                "dropped": 0,
                "records": batch,
            }
            self._socket.sendall(json.dumps(message).encode())
            self.datagrams += 1
            self.records += len(batch)

    def close(self) -> None:
        self._socket.close()


def _waves(now: float, unique: int, prefix: str) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    long_names = [
        _channel(index + 1, f"{index:06d}" + "x" * 1018, now) for index in range(unique // 100)
    ]
    yield f"{prefix}-long-" + "y" * 1000, f"{prefix}-long", long_names
    channels = [_channel(index + 1, f"channel-{index}", now) for index in range(unique)]
    yield f"{prefix}-channels", f"{prefix}-channels", channels
    per_process = 500
    for process in range(unique // per_process):
        methods = [
            _inflight(f"/{prefix}.Methods/M{process * per_process + index}")
            for index in range(per_process)
        ]
        yield f"{prefix}-methods-{process % 8}", f"{prefix}-methods-{process}", methods
    per_service = 100
    for service in range(unique // per_service):
        records = [
            _channel(index + 1, f"spread-{service}-{index}", now) for index in range(per_service)
        ]
        yield f"{prefix}-spread-{service}", f"{prefix}-spread-{service}", records
    for service in range(unique):
        yield (
            f"{prefix}-service-{service}",
            f"{prefix}-service-{service}",
            [_channel(1, "one", now)],
        )
    for process in range(unique):
        yield f"{prefix}-instances", f"{prefix}-instance-{process}", [_channel(1, "shared", now)]
    for process in range(unique // 100):
        yield f"{prefix}-steps", f"{prefix}-steps-{process}", [_shutdown(f"p{process}", now)]


def send_storm(
    socket_path: str, unique: int = UNIQUE_NAMES, prefix: str = "storm"
) -> tuple[int, int]:
    """Send the whole storm with ``unique`` names per dimension, all starting with
    ``prefix``; returns (datagrams, records) sent."""
    sender = StormSender(socket_path)
    try:
        now = time.time()
        for service, instance, records in _waves(now, unique, prefix):
            sender.send(service, instance, records)
        return sender.datagrams, sender.records
    finally:
        sender.close()


def footprint(scraper: MetricsScraper, pid: int) -> tuple[AgentFootprint, str]:
    started = time.perf_counter()
    text = scraper.scrape()
    seconds = time.perf_counter() - started
    series = longest = 0
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series += 1
            for match in _LABEL_VALUE.finditer(line):
                value = match[1].replace("\\\\", "\\").replace('\\"', '"').replace("\\n", "\n")
                longest = max(longest, len(value))
    rss = psutil.Process(pid).memory_info().rss
    return AgentFootprint(series, seconds, rss, longest), text


def capped_counts(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "drainwatch_agent_series_capped_total":
                found[sample.labels["limit"]] = sample.value
    return found


def wait_until_applied(scraper: MetricsScraper, records: int, timeout: float = 120.0) -> str:
    """Scrape until the agent has counted ``records`` received or rejected records."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + timeout
    while True:
        text = scraper.scrape()
        seen = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (
                    "drainwatch_agent_events_received_total",
                    "drainwatch_agent_events_rejected_total",
                ):
                    seen += sample.value
        if seen >= records or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def run_storm(socket_path: str, scraper: MetricsScraper, pid: int) -> StormResult:
    before, _ = footprint(scraper, pid)
    started = time.monotonic()
    datagrams, records = send_storm(socket_path)
    wait_until_applied(scraper, records)
    seconds = time.monotonic() - started
    after, text = footprint(scraper, pid)
    return StormResult(before, after, datagrams, records, seconds, capped_counts(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__)
    parser.parse_args(argv)
    with running_agent() as agent:
        scraper = MetricsScraper(agent, timeout=60.0)
        result = run_storm(agent.ingest.removeprefix("unix://"), scraper, agent.pid)
        scraper.close()
    for label, value in (("before", result.before), ("after", result.after)):
        print(
            f"{label}: {value.series} series, scrape {value.scrape_seconds * 1000:.0f} ms, "
            f"RSS {value.rss_bytes / 2**20:.1f} MiB, longest label {value.longest_label}"
        )
    print(
        f"storm: {result.datagrams} datagrams, {result.records} records in {result.seconds:.1f} s"
    )
    print("capped: " + ", ".join(f"{k}={v:g}" for k, v in sorted(result.capped.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
