"""The sending side of the ingest figures: ``python -m bench.ingest_sender URL PROCESSES
CHANNELS RATE SECONDS``.

Stands in for ``PROCESSES`` SDK processes, each on its own connection to the agent at
``URL`` (``unix://`` path), each reporting ``CHANNELS`` channels with channel snapshot
records packed 40 to a datagram, as the SDK's reporter packs them, and together offering
``RATE`` records a second for ``SECONDS`` seconds. Every datagram carries its process's
sequence number and cumulative drop count, as the SDK's do. Sends never wait, as the
SDK's never do: a datagram the kernel refuses (its queue to the agent full) is dropped
and its records counted as dropped, which the next datagram tells the agent.

Records vary from round to round (counters grow, waits are recorded), so the agent's
merge does real work on every one. At the end every process sends one last datagram with
no record, waiting until it is taken, so its drop count reaches the agent. Prints one
JSON line: records offered, sent and dropped, datagrams sent and refused, and the seconds
it took.
"""

from __future__ import annotations

import errno
import json
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from drainwatch._histogram import WAIT_BUCKETS

RECORDS_PER_DATAGRAM = 40
VARIANTS = 16
_TICK_SECONDS = 0.005


def _histogram(variant: int) -> dict[str, Any]:
    counts = [0] * (len(WAIT_BUCKETS) + 1)
    counts[variant % len(counts)] = variant
    counts[0] = 3 * variant
    return {"counts": counts, "sum": 0.0007 * variant, "count": sum(counts)}


def _record(channel_id: int, variant: int, created: float) -> bytes:
    record: dict[str, Any] = {
        "type": "channel",
        "trigger": "snapshot",
        "id": channel_id,
        "name": f"queue-{channel_id}",
        "kind": "asyncio",
        "owner": None,
        "capacity": 100,
        "created": created,
        "closed": None,
        "immediate": False,
        "closed_by": None,
        "closed_where": None,
        "drained": None,
        "residual": None,
        "depth": variant % 7,
        "sent": 1000 * variant + channel_id,
        "received": 1000 * variant + channel_id - variant % 7,
        "discarded": 0,
        "read_after_close": 0,
        "send_after_close": 0,
        "double_close": 0,
        "waiters": {"send": 0, "receive": variant % 2},
        "oldest_wait": {"send": 0.0, "receive": 0.001 * (variant % 2)},
        "wait": {"send": _histogram(variant // 2), "receive": _histogram(variant)},
    }
    return json.dumps(record, separators=(",", ":")).encode()


@dataclass
class _Process:
    """One simulated SDK process: its socket, its datagram bodies per variant, its counts."""

    instance: str
    pid: int
    sock: socket.socket
    bodies: list[list[tuple[bytes, int]]]
    seq: int = 0
    dropped: int = 0
    refused: int = 0
    sent: int = 0
    datagrams: int = 0

    def datagram(self, body: bytes) -> bytes:
        self.seq += 1
        head = (
            f'{{"v":1,"service":"ingest","instance":"{self.instance}","pid":{self.pid},'
            f'"seq":{self.seq},"time":{time.time()},"dropped":{self.dropped},"records":['
        )
        return head.encode() + body + b"]}"

    def _refused(self, records: int) -> None:
        # Its sequence number is spent, as in the SDK: the agent sees the gap too.
        self.dropped += records
        self.refused += 1

    def offer(self, body: bytes, records: int) -> None:
        try:
            self.sock.send(self.datagram(body))
        except BlockingIOError:
            self._refused(records)
            return
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ENOBUFS):
                raise
            self._refused(records)
            return
        self.sent += records
        self.datagrams += 1


def _processes(path: str, count: int, channels: int) -> list[_Process]:
    created = time.time() - 60
    processes = []
    for index in range(count):
        first = index * channels + 1
        bodies = []
        for variant in range(1, VARIANTS + 1):
            records = [_record(first + offset, variant, created) for offset in range(channels)]
            bodies.append(
                [
                    (b",".join(records[start : start + RECORDS_PER_DATAGRAM]), len(chunk))
                    for start in range(0, len(records), RECORDS_PER_DATAGRAM)
                    if (chunk := records[start : start + RECORDS_PER_DATAGRAM])
                ]
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(path)
        sock.setblocking(False)
        processes.append(_Process(f"ingest-{index:04d}", 20_000 + index, sock, bodies))
    return processes


def send(path: str, processes: int, channels: int, rate: float, seconds: float) -> dict[str, Any]:
    senders = _processes(path, processes, channels)
    # One round: every process sends one snapshot of all its channels.
    round_records = processes * channels
    offered = 0
    started = time.perf_counter()
    round_index = 0
    while (elapsed := time.perf_counter() - started) < seconds:
        due = int(rate * elapsed) - offered
        if due < round_records:
            time.sleep(_TICK_SECONDS)
            continue
        variant = round_index % VARIANTS
        for sender in senders:
            for body, records in sender.bodies[variant]:
                sender.offer(body, records)
        offered += round_records
        round_index += 1
    elapsed = time.perf_counter() - started
    for sender in senders:  # the last word: each process's drop count, waited for
        sender.sock.setblocking(True)
        sender.sock.send(sender.datagram(b""))
        sender.sock.close()
    return {
        "offered": offered,
        "sent": sum(sender.sent for sender in senders),
        "dropped": sum(sender.dropped for sender in senders),
        "refused": sum(sender.refused for sender in senders),
        "datagrams": sum(sender.datagrams for sender in senders) + len(senders),
        "seconds": elapsed,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 5 or not argv[0].startswith("unix://"):
        print(__doc__, file=sys.stderr)
        return 2
    path = argv[0].removeprefix("unix://")
    result = send(path, int(argv[1]), int(argv[2]), float(argv[3]), float(argv[4]))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
