"""``channel`` records (docs/protocol.md), the agent's hottest path, checked by a schema.

Channel snapshots are nearly every record an agent reads: each live channel of each SDK
process, about once a second. Their schema is written once, as msgspec types, and used
two ways:

- ``decode_snapshot`` parses and checks a whole datagram of channel records in one pass
  in C (msgspec), about as fast as parsing the JSON alone: 2 µs a record where the json
  module and checks value by value took 15. It returns None for anything else (another
  record type in it, any value out of range, anything malformed), and the datagram then
  takes the general path, which says what is wrong with which record.
- ``check_channel`` checks one record already parsed, on that general path.

Both also require each histogram's ``count`` to be the sum of its ``counts``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypedDict

import msgspec
from msgspec import Meta

from .decode_values import (
    BUCKET_COUNT,
    MAX_COUNT,
    MAX_SECONDS,
    MAX_STRING_CHARS,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
)

_MAX_INSTANCE_CHARS: Final = 64
_MAX_PID: Final = 2**31

Count = Annotated[int, Meta(ge=0, le=MAX_COUNT)]
Timestamp = Annotated[float, Meta(ge=MIN_TIMESTAMP, le=MAX_TIMESTAMP)]
Seconds = Annotated[float, Meta(ge=0.0, le=MAX_SECONDS)]
Text = Annotated[str, Meta(min_length=1, max_length=MAX_STRING_CHARS)]
Trigger = Literal[
    "snapshot", "closed", "double_close", "send_after_close", "read_after_close", "drained", "gone"
]
Kind = Literal["asyncio", "thread", "asyncio_queue", "thread_queue"]


class Histogram(TypedDict):
    counts: Annotated[list[Count], Meta(min_length=BUCKET_COUNT, max_length=BUCKET_COUNT)]
    sum: Annotated[float, Meta(ge=0.0)]
    count: Count


class Counts(TypedDict):
    send: Count
    receive: Count


class Waits(TypedDict):
    send: Seconds
    receive: Seconds


class Histograms(TypedDict):
    send: Histogram
    receive: Histogram


# Every key is required, nullable ones included: the agent's merge reads them all.
class ChannelRecord(TypedDict):
    type: Literal["channel"]
    trigger: Trigger
    id: Annotated[int, Meta(ge=1, le=MAX_COUNT)]
    name: Text
    kind: Kind
    owner: Text | None
    capacity: Count
    created: Timestamp
    closed: Timestamp | None
    immediate: bool
    closed_by: Text | None
    closed_where: Text | None
    drained: Timestamp | None
    residual: Count | None
    depth: Count
    sent: Count
    received: Count
    discarded: Count
    read_after_close: Count
    send_after_close: Count
    double_close: Count
    waiters: Counts
    oldest_wait: Waits
    wait: Histograms


class ChannelDatagram(msgspec.Struct):
    """A datagram whose records are all channel records (the envelope as in
    ``sdk_decode``; fields not listed are ignored)."""

    v: Literal[1]
    instance: Annotated[str, Meta(min_length=1, max_length=_MAX_INSTANCE_CHARS)]
    pid: Annotated[int, Meta(ge=1, le=_MAX_PID)]
    seq: Annotated[int, Meta(ge=1, le=MAX_COUNT)]
    time: Timestamp
    records: list[ChannelRecord]
    service: Text | None = None
    dropped: Count = 0


_DATAGRAM: Final = msgspec.json.Decoder(ChannelDatagram)


def _counted(record: ChannelRecord | dict[str, Any]) -> bool:
    wait = record["wait"]
    send, receive = wait["send"], wait["receive"]
    return bool(send["count"] == sum(send["counts"]) and receive["count"] == sum(receive["counts"]))


def decode_snapshot(data: bytes) -> ChannelDatagram | None:
    """The datagram, when it is well-formed and holds only valid channel records; None
    otherwise (the general path then decides)."""
    try:
        datagram = _DATAGRAM.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
    for record in datagram.records:
        if not _counted(record):
            return None
    return datagram


def check_channel(record: dict[str, Any]) -> bool:
    """Whether a parsed ``channel`` record has every field, each of its type and range."""
    try:
        msgspec.convert(record, ChannelRecord)
    except msgspec.ValidationError:
        return False
    return _counted(record)
