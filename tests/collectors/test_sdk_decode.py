"""The datagram decoder: what the SDK really sends is accepted, anything else is refused."""

from __future__ import annotations

import asyncio
import copy
import json
import signal
from importlib import resources
from typing import Any

import drainwatch
import jsonschema
import pytest
from drainwatch import _shutdown
from drainwatch._inflight import InflightRegistry
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


# -- shutdown and inflight records --------------------------------------------------------------


def _real_shutdown_records(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A shutdown record and inflight records as the SDK builds them, mid-drain and at exit."""
    state = _shutdown.ShutdownState()
    registry = InflightRegistry()
    monkeypatch.setattr(_shutdown, "STATE", state)
    monkeypatch.setattr(_shutdown, "_emit", lambda: None)  # build records, send nothing
    state.listener_opened("grpc", "business", 50051)
    state.listener_opened("uds", "unknown", None)
    state.set_topology({"components": [{"name": "grpc", "depends_on": [], "role": "business"}]})
    state.set_health("", "SERVING")
    charge = registry.stats("grpc", "/pay.Payments/Charge")
    registry.finish(charge, registry.start(charge), "ok")
    stuck = registry.start(registry.stats("http", "GET /orders/{id}"))
    state.note_signal(int(signal.SIGTERM))
    state.set_health("", "NOT_SERVING")
    state.step_started("propagation_wait", detail="5s")
    state.step_finished("propagation_wait")
    state.listener_stop_started("grpc")
    registry.reject(charge)
    draining = [state.record(), *registry.records()]
    state.listener_closed("grpc")
    registry.finish(registry.stats("http", "GET /orders/{id}"), stuck, "aborted_at_shutdown")
    state.note_exit(0, registry.unfinished_by_protocol())
    return [*draining, state.record(), *registry.records()]


def test_real_shutdown_and_inflight_records_match_decoder_and_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What ShutdownState.record() and InflightRegistry.records() produce is valid for both."""
    records = _real_shutdown_records(monkeypatch)
    assert {record["type"] for record in records} == {"shutdown", "inflight"}
    schema = _schema()
    for datagram, _ in Packer("checkout").pack(records):
        message = json.loads(datagram)
        jsonschema.validate(message, schema)
        decoded = decode_datagram(datagram)
        assert decoded.rejected == {}
        assert len(decoded.records) == len(message["records"])


def _drop(key: str) -> Any:
    def apply(record: dict[str, Any]) -> None:
        del record[key]

    return apply


def _set(path: str, value: Any) -> Any:
    def apply(record: dict[str, Any]) -> None:
        *outer, last = path.split(".")
        target = record
        for key in outer:
            target = target[key]
        target[last] = value

    return apply


def _drop_nested(path: str) -> Any:
    def apply(record: dict[str, Any]) -> None:
        *outer, last = path.split(".")
        target = record
        for key in outer:
            target = target[key]
        del target[last]

    return apply


_BROKEN_SHUTDOWN = {
    "unknown-phase": _set("phase", "exploding"),
    "signals-not-a-list": _set("signals", {"SIGTERM": 1.7e9}),
    "signal-name-too-long": _set("signals", [{"signal": "S" * 33, "at": 1.7e9}]),
    "step-started-not-a-time": _set("steps.drain.started", "now"),
    "step-without-finished": _drop_nested("steps.drain.finished"),
    "65-steps": _set(
        "steps",
        {
            f"step{n}": {"started": 1.7e9, "finished": None, "ok": None, "detail": None}
            for n in range(65)
        },
    ),
    "ready-not-a-bool": _set("ready", "yes"),
    "no-ready-changed": _drop("ready_changed"),
    "no-listeners": _drop("listeners"),
    "unknown-role": _set("listeners.grpc.role", "admin"),
    "port-out-of-range": _set("listeners.grpc.port", 70000),
    "listener-without-closed": _drop_nested("listeners.grpc.closed"),
    "empty-health-status": _set("health..status", ""),
    "exit-code-out-of-range": _set("exit_code", 300),
    "unknown-protocol-at-exit": _set("inflight_at_exit", {"ftp": 1}),
    "negative-count-at-exit": _set("inflight_at_exit", {"grpc": -1}),
    "components-not-a-list": _set("topology", {"components": "grpc"}),
}
_BROKEN_INFLIGHT = {
    "unknown-protocol": _set("protocol", "ftp"),
    "empty-method": _set("method", ""),
    "negative-active": _set("active", -1),
    "fractional-count": _set("started_during_drain", 1.5),
    "missing-outcome": _drop_nested("outcomes.ok"),
    "unknown-outcome": _set("outcomes.teleported", 1),
    "short-histogram": _set("duration.counts", [0, 1]),
    "no-duration": _drop("duration"),
}


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [pytest.param("shutdown", mutate, id=name) for name, mutate in _BROKEN_SHUTDOWN.items()]
    + [pytest.param("inflight", mutate, id=name) for name, mutate in _BROKEN_INFLIGHT.items()],
)
def test_broken_shutdown_and_inflight_records_are_refused_by_decoder_and_schema(
    monkeypatch: pytest.MonkeyPatch, kind: str, mutate: Any
) -> None:
    """A shutdown or inflight record with a wrong or missing field is a schema rejection,
    alone in its datagram, and the published JSON Schema refuses it too."""
    records = _real_shutdown_records(monkeypatch)[-3:]  # the exit-time records
    good = [record for record in records if record["type"] in ("shutdown", "inflight")]
    broken = copy.deepcopy(next(record for record in good if record["type"] == kind))
    mutate(broken)
    message = json.loads(next(iter(Packer("checkout").pack(good)))[0])
    message["records"] = [*message["records"], broken]
    decoded = decode_datagram(json.dumps(message).encode())
    assert decoded.rejected == {SCHEMA: 1}
    assert len(decoded.records) == len(good)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(message, _schema())
