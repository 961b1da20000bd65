"""The datagram decoder: what the SDK really sends is accepted, anything else is refused."""

from __future__ import annotations

import asyncio
import copy
import json
from importlib import resources
from typing import Any

import drainwatch
import jsonschema
import pytest
from drainwatch._protocol import Packer
from drainwatch.collectors.sdk_decode import (
    MALFORMED,
    OVERSIZED,
    SCHEMA,
    UNKNOWN_TYPE,
    VERSION,
    Rejected,
    decode_datagram,
)


def _schema() -> dict[str, Any]:
    text = resources.files("drainwatch").joinpath("protocol/v1.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def _real_datagrams() -> list[bytes]:
    """Datagrams packed by the SDK from channels that went through every state."""
    drainwatch.configure(enabled=False)

    async def exercise() -> list[dict[str, Any]]:
        busy: drainwatch.Channel[int] = drainwatch.Channel("busy", maxsize=2, owner="me")
        await busy.put(1)
        busy.close()
        busy.close()
        await busy.get()
        try:
            busy.put_nowait(3)
        except drainwatch.ChannelClosed:
            pass
        waiting: drainwatch.Channel[int] = drainwatch.Channel("waiting")
        getter = asyncio.create_task(waiting.get())
        await asyncio.sleep(0.01)
        record = waiting.record()
        getter.cancel()
        jobs: drainwatch.ThreadChannel[str] = drainwatch.ThreadChannel("jobs")
        jobs.put("x")
        jobs.close(immediate=True)
        return [busy.record("closed"), record, jobs.record("gone")]

    records = asyncio.run(asyncio.wait_for(exercise(), 5))
    process = {
        "type": "process",
        "started": 1.7e9,
        "python": "3.11.7",
        "sdk": "0.1.0",
        "channels": 3,
        "internal_errors": 0,
    }
    return [datagram for datagram, _ in Packer("checkout").pack([process, *records])]


def test_real_sdk_datagrams_are_accepted_and_match_the_published_schema() -> None:
    """The decoder and docs' JSON Schema both accept exactly what the SDK sends."""
    schema = _schema()
    for datagram in _real_datagrams():
        message = json.loads(datagram)
        jsonschema.validate(message, schema)
        decoded = decode_datagram(datagram)
        assert decoded.rejected == {}
        assert len(decoded.records) == len(message["records"])
        assert decoded.envelope.service == "checkout"


def _mutations() -> list[tuple[str, Any]]:
    """(expected reason, how to break a real channel record)."""

    def setter(key: str, value: Any) -> Any:
        def apply(record: dict[str, Any]) -> None:
            record[key] = value

        return apply

    def nested(outer: str, inner: str, value: Any) -> Any:
        def apply(record: dict[str, Any]) -> None:
            record[outer][inner] = value

        return apply

    return [
        (SCHEMA, setter("sent", "lots")),
        (SCHEMA, setter("sent", -1)),
        (SCHEMA, setter("sent", 2**64)),
        (SCHEMA, setter("depth", True)),
        (SCHEMA, setter("created", 12.0)),
        (SCHEMA, setter("closed", "yesterday")),
        (SCHEMA, setter("name", "")),
        (SCHEMA, setter("name", "n" * 5000)),
        (SCHEMA, setter("kind", "quantum")),
        (SCHEMA, setter("trigger", "reboot")),
        (SCHEMA, setter("waiters", [0, 0])),
        (SCHEMA, nested("oldest_wait", "send", -3)),
        (SCHEMA, nested("wait", "send", {"counts": [1], "sum": 0, "count": 1})),
        (UNKNOWN_TYPE, setter("type", "exploit")),
    ]


@pytest.mark.parametrize(("reason", "mutate"), _mutations())
def test_each_broken_record_is_refused_alone_with_its_reason(reason: str, mutate: Any) -> None:
    """A bad record is rejected with its reason; the good records beside it still count."""
    message = json.loads(_real_datagrams()[0])
    good = copy.deepcopy(message["records"])
    broken = copy.deepcopy(good[1])
    mutate(broken)
    message["records"] = [*good, broken]
    decoded = decode_datagram(json.dumps(message).encode())
    assert decoded.rejected == {reason: 1}
    assert decoded.records == good
    if reason == SCHEMA:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(message, _schema())


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", MALFORMED),
        (b"\xff\xfe\x00", MALFORMED),
        (b"{", MALFORMED),
        (b"[]", MALFORMED),
        (b'{"v": 1, "time": Infinity}', MALFORMED),
        (b"[" * 100_00 + b"]" * 100_00, MALFORMED),
        (b'{"v": 1, "pad": "' + b"x" * 70_000 + b'"}', OVERSIZED),
        (b'{"v": 2}', VERSION),
        (b'{"v": true}', VERSION),
        (b'{"v": 1.0}', VERSION),
        (b'{"v": 1}', SCHEMA),
        (b'{"v": 1, "instance": "i", "pid": 1, "seq": 1, "time": 1.7e9, "records": {}}', SCHEMA),
        (b'{"v": 1, "instance": "i", "pid": 0, "seq": 1, "time": 1.7e9, "records": []}', SCHEMA),
        (b'{"v": 1, "instance": 7, "pid": 1, "seq": 1, "time": 1.7e9, "records": []}', SCHEMA),
        (
            b'{"v": 1, "service": "", "instance": "i", "pid": 1, "seq": 1, "time": 1.7e9, '
            b'"records": []}',
            SCHEMA,
        ),
    ],
)
def test_whole_datagram_rejections_carry_one_reason(datagram: bytes, reason: str) -> None:
    """Garbage, oversized, other versions and broken envelopes are refused whole."""
    with pytest.raises(Rejected) as caught:
        decode_datagram(datagram)
    assert caught.value.reason == reason


def test_huge_integer_literal_is_malformed_not_a_hang() -> None:
    """A 60 kB integer is refused by the JSON parser's digit limit, quickly."""
    datagram = b'{"v": 1, "pid": ' + b"9" * 60_000 + b"}"
    with pytest.raises(Rejected) as caught:
        decode_datagram(datagram)
    assert caught.value.reason == MALFORMED


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    """A newer SDK may add fields; a v1 agent ignores them and keeps the record."""
    message = json.loads(_real_datagrams()[0])
    message["future_envelope_field"] = {"anything": [1, 2]}
    message["records"][1]["future_record_field"] = "x"
    decoded = decode_datagram(json.dumps(message).encode())
    assert decoded.rejected == {}
    assert len(decoded.records) == len(message["records"])
