"""Wire format v1: how the SDK packs records into datagrams for the agent.

Documented in ``docs/protocol.md``; the JSON Schema ships as ``protocol/v1.schema.json``.
Every datagram is one UTF-8 JSON object: an envelope naming the process, plus a list of
records. Records carry cumulative values (like Prometheus counters), so a lost, repeated
or reordered datagram never corrupts the agent's state: the next one corrects it.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ._caps import CAPPED

PROTOCOL_VERSION = 1

# The SDK never sends more than this in one datagram; the agent accepts up to
# MAX_DATAGRAM_BYTES so a newer SDK may grow its batches a little.
DEFAULT_BATCH_BYTES = 32 * 1024
MAX_DATAGRAM_BYTES = 64 * 1024

# Long names are cut on the SDK side so that every record stays far below a datagram.
MAX_NAME_CHARS = 200
MAX_LOCATION_CHARS = 400

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


# Records with lists of stacks (``loop``, ``threads``) are cut to this size, so that each one
# fits a datagram whatever the stacks hold.
RECORD_BUDGET_BYTES = 24 * 1024


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (counted as an SDK cap when it is)."""
    if len(text) <= limit:
        return text
    CAPPED.note("name_length")
    return text[: limit - 1] + "\u2026"


def _size(value: object) -> int:
    return len(_dumps(value).encode())


def fit(record: dict[str, Any], lists: Sequence[str], budget: int = RECORD_BUDGET_BYTES) -> None:
    """Drop entries from the end of ``record[key]`` for each key of ``lists`` in turn (lists
    are ordered most important first) until the record encodes within ``budget`` bytes, and
    mark it ``truncated``. Never raises on values JSON cannot carry (``pack`` skips those)."""
    try:
        size = _size(record)
    except (TypeError, ValueError):
        return
    if size <= budget:
        return
    record["truncated"] = True
    for key in lists:
        items = record.get(key)
        if not isinstance(items, list):
            continue
        while items and size > budget:
            size -= _size(items.pop()) + 1
        if size <= budget:
            return


class Packer:
    """Turns records into datagrams no larger than ``batch_bytes``; thread-safe.

    The envelope names the process: ``instance`` is random per process (and per fork),
    ``seq`` increases by one per datagram so the agent can count gaps, ``dropped`` is the
    cumulative number of datagrams this process could not hand to the kernel.
    """

    def __init__(self, service: str | None, batch_bytes: int = DEFAULT_BATCH_BYTES) -> None:
        self.service = clip(service, MAX_NAME_CHARS) if service else None
        self.batch_bytes = batch_bytes
        self.instance = secrets.token_hex(8)
        self.pid = os.getpid()
        self.dropped = 0
        self._seq = 0
        self._lock = threading.Lock()
        # The envelope's size with the widest numbers it can hold, so a batch plus its
        # envelope never exceeds batch_bytes whatever the service name.
        widest = _dumps(
            {
                "v": PROTOCOL_VERSION,
                "service": self.service,
                "instance": self.instance,
                "pid": 2**31,
                "seq": 2**63,
                "time": -1.7976931348623157e308,
                "dropped": 2**63,
            }
        )
        self._envelope_bytes = len(widest.encode()) + len(',"records":[]}')

    def successor(self, service: str | None) -> Packer:
        """A packer for new settings of the same process: same instance, same sequence."""
        following = Packer(service, self.batch_bytes)
        following.instance, following.pid = self.instance, self.pid
        following._seq, following.dropped = self._seq, self.dropped
        return following

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _envelope_prefix(self) -> bytes:
        head = _dumps(
            {
                "v": PROTOCOL_VERSION,
                "service": self.service,
                "instance": self.instance,
                "pid": self.pid,
                "seq": self._next_seq(),
                "time": time.time(),
                "dropped": self.dropped,
            }
        )
        return head[:-1].encode() + b',"records":['

    def pack(self, records: Iterable[dict[str, Any]]) -> list[tuple[bytes, int]]:
        """Encode ``records`` into as few datagrams as fit, each with its record count.

        Never raises on bad values.

        A record that cannot be encoded (a value JSON cannot carry) is skipped rather than
        breaking the batch; records are built by the SDK itself, so this is defensive.
        """
        encoded: list[bytes] = []
        for record in records:
            try:
                encoded.append(_dumps(record).encode())
            except (TypeError, ValueError):
                continue
        return self._split(encoded)

    def _split(self, encoded: Sequence[bytes]) -> list[tuple[bytes, int]]:
        budget = self.batch_bytes - self._envelope_bytes
        datagrams: list[tuple[bytes, int]] = []
        batch: list[bytes] = []
        size = 0
        for item in encoded:
            if batch and size + len(item) + 1 > budget:
                datagrams.append((self._wrap(batch), len(batch)))
                batch, size = [], 0
            batch.append(item)
            size += len(item) + 1
        if batch:
            datagrams.append((self._wrap(batch), len(batch)))
        return datagrams

    def _wrap(self, batch: list[bytes]) -> bytes:
        return self._envelope_prefix() + b",".join(batch) + b"]}"
