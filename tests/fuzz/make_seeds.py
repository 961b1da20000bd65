"""``python -m tests.fuzz.make_seeds``: write the seed corpus under ``tests/fuzz/corpus/``.

Seeds are real inputs: datagrams packed by the SDK's own packer from records of every type,
the config examples of docs/configuration.md, py-spy dumps recorded from real targets, and
the query strings the API documents. Crash reproducers are added by hand next to them
(``crash-<what>``) and are never overwritten here.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from drainwatch._protocol import Packer

from bench.storm import _inflight, _shutdown
from tests.records import (
    channel_record,
    loop_record,
    task_wait,
    thread_wait,
    threads_record,
)

CORPUS = Path(__file__).resolve().parent / "corpus"
_RECORDED = Path(__file__).resolve().parent.parent / "collectors" / "recorded"

CONFIGS = (
    "listen: 0.0.0.0:9469\ningest:\n  - unix:///run/drainwatch/ingest.sock\nservice: checkout\n"
    "drain_budget_seconds: 40\nlimits:\n  max_channels_per_service: 500\n",
    'target:\n  cmdline: "gunicorn .*orders:app"\nports:\n  health: [8081]\nprobes:\n  http:\n'
    "    liveness: http://127.0.0.1:8081/healthz\n    readiness: http://127.0.0.1:8081/readyz\n"
    "pyspy:\n  interval_seconds: 5\nstate:\n  dir: /var/lib/drainwatch\n",
    "log_level: debug\nretention_seconds: 60\nservice_retention_seconds: 600\n"
    "ingest: udp://127.0.0.1:9470\n",
    "probes:\n  grpc:\n    - grpc=127.0.0.1:50051/pay.Payments\npushgateway:\n"
    "  url: http://127.0.0.1:9091\n  job: drainwatch\n",
    "limits:\n  max_services: 10\n  max_label_length: 64\n  max_channels_total: 100\n",
    "a: &a [1, 2]\nb: *a\n",
)
QUERIES = (
    b"\x00service=checkout",
    b"\x01all=1",
    b"\x01service=payments&all=true",
    b"\x02service=checkout",
    b"\x00",
    b"\x01all=maybe",
    b"\x03service=checkout",
    b"\x03service=",
)


def _datagrams() -> list[bytes]:
    now = time.time()
    process = {
        "type": "process",
        "started": now - 10,
        "python": "3.11.7",
        "sdk": "0.1.0",
        "channels": 2,
        "internal_errors": 0,
        "capped": {"methods": 2, "name_length": 1},
    }
    closed = channel_record(
        2, "jobs", closed=now, closed_by="Task-1", closed_where="app.py:10", residual=3
    )
    packer = Packer("checkout")
    records = [process, channel_record(1, "orders"), closed]
    records += [_inflight("/pay.Payments/Charge"), _shutdown("s", now)]
    records += [
        loop_record(1, task_wait("consumer-0", "channel_receive", 3.0, "idle")),
        threads_record(thread_wait("restock", "queue_get", 2.0)),
    ]
    return [datagram for datagram, _ in packer.pack(records)] + [
        datagram for record in records for datagram, _ in packer.pack([record])
    ]


def _write(target: str, data: bytes) -> None:
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"seed-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)


def main() -> None:
    for datagram in _datagrams():
        _write("datagram", datagram)
    for text in CONFIGS:
        _write("config", text.encode())
    for dump in sorted(_RECORDED.glob("pyspy_py3*.json")):
        if not dump.name.endswith(".kernel.json"):
            _write("pyspy", json.dumps(json.loads(dump.read_text())).encode())
    for query in QUERIES:
        _write("query", query)


if __name__ == "__main__":
    main()
