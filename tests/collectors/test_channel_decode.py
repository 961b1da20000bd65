"""Channel records checked by their schema: the one-pass path for datagrams of channel
records says yes only where the general path, record by record, says yes too."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from drainwatch._histogram import WAIT_BUCKETS
from drainwatch.collectors import sdk_decode
from drainwatch.collectors.channel_decode import check_channel, decode_snapshot
from drainwatch.collectors.sdk_decode import MALFORMED, SCHEMA, Decoded, Rejected, decode_datagram

from tests.records import channel_record

NOW = time.time()
_BUCKETS = len(WAIT_BUCKETS) + 1


def _datagram(*records: dict[str, Any], **envelope: Any) -> bytes:
    message = {
        "v": 1,
        "service": "checkout",
        "instance": "abc123",
        "pid": 42,
        "seq": 7,
        "time": NOW,
        "dropped": 3,
        **envelope,
        "records": list(records),
    }
    return json.dumps(message).encode()


def _busy(channel_id: int = 1) -> dict[str, Any]:
    counts = [index % 3 for index in range(_BUCKETS)]
    return channel_record(
        channel_id,
        f"queue-{channel_id}",
        created=NOW - 30,
        closed=NOW - 1,
        residual=2,
        drained=None,
        closed_by="task:worker",
        closed_where="app.py:12",
        owner="worker",
        sent=10,
        received=8,
        double_close=1,
        waiters={"send": 0, "receive": 2},
        oldest_wait={"send": 0, "receive": 1.5},
        wait={
            "send": {"counts": counts, "sum": 0.25, "count": sum(counts)},
            "receive": {"counts": [0] * _BUCKETS, "sum": 0, "count": 0},
        },
    )


def _general(data: bytes, monkeypatch: pytest.MonkeyPatch) -> Decoded:
    with monkeypatch.context() as patched:
        patched.setattr(sdk_decode, "decode_snapshot", lambda data: None)
        return decode_datagram(data)


def test_a_datagram_of_channel_records_decodes_as_the_general_path_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one-pass path returns the same envelope and record values as record by record."""
    data = _datagram(_busy(1), channel_record(2, "idle", created=NOW - 5), _busy(3))
    assert decode_snapshot(data) is not None
    fast = decode_datagram(data)
    general = _general(data, monkeypatch)
    assert fast.envelope == general.envelope
    assert fast.rejected == general.rejected == {}
    assert fast.records == general.records
    assert fast.envelope.dropped == 3 and fast.envelope.service == "checkout"


def _broken() -> list[tuple[str, Any]]:
    """(what is wrong, a change to a valid channel record that breaks it)."""

    def setting(path: str, value: Any) -> Any:
        def change(record: dict[str, Any]) -> None:
            *outer, last = path.split(".")
            target = record
            for key in outer:
                target = target[key]
            target[last] = value

        return change

    def removing(key: str) -> Any:
        return lambda record: record.pop(key)

    return [
        ("text for a count", setting("sent", "lots")),
        ("negative count", setting("sent", -1)),
        ("count beyond int64", setting("sent", 2**63)),
        ("bool for a count", setting("depth", True)),
        ("float for a count", setting("depth", 1.0)),
        ("id zero", setting("id", 0)),
        ("timestamp from 1970", setting("created", 12.0)),
        ("timestamp from 2300", setting("closed", 1.1e10)),
        ("text for a timestamp", setting("closed", "yesterday")),
        ("empty name", setting("name", "")),
        ("oversized name", setting("name", "n" * 1025)),
        ("unknown kind", setting("kind", "quantum")),
        ("unknown trigger", setting("trigger", "reboot")),
        ("list for a trigger", setting("trigger", ["snapshot"])),
        ("number for immediate", setting("immediate", 1)),
        ("negative residual", setting("residual", -2)),
        ("list for waiters", setting("waiters", [0, 0])),
        ("waiters without receive", setting("waiters", {"send": 0})),
        ("negative wait", setting("oldest_wait.send", -3)),
        ("wait of 40 years", setting("oldest_wait.receive", 1.3e9)),
        ("short histogram", setting("wait.send.counts", [1])),
        ("count not the sum", setting("wait.send.count", 99)),
        ("negative sum", setting("wait.receive.sum", -1.0)),
        ("bool bucket", setting("wait.send.counts", [True] + [0] * (_BUCKETS - 1))),
        ("missing nullable key", removing("drained")),
        ("missing key", removing("wait")),
    ]


@pytest.mark.parametrize(("what", "change"), _broken(), ids=[what for what, _ in _broken()])
def test_a_broken_record_is_refused_alone_whichever_path_sees_it(
    what: str, change: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken channel record turns the datagram away from the one-pass path, and the
    general path refuses that record alone (schema) and keeps the good ones."""
    good = [_busy(1), _busy(2)]
    broken = copy.deepcopy(_busy(3))
    change(broken)
    data = _datagram(*good, broken)
    assert decode_snapshot(data) is None
    assert not check_channel(broken)
    decoded = decode_datagram(data)
    assert decoded.rejected == {SCHEMA: 1}
    assert len(decoded.records) == 2
    assert decoded.records == _general(data, monkeypatch).records


def test_unknown_fields_are_ignored_on_both_paths() -> None:
    """A newer SDK's extra fields, in the envelope or a record, keep the one-pass path."""
    record = _busy(1)
    record["future"] = {"nested": [1, 2]}
    record["waiters"]["future"] = 1
    data = _datagram(record, future_envelope_field="x")
    snapshot = decode_snapshot(data)
    assert snapshot is not None and len(snapshot.records) == 1
    assert check_channel(record)


def test_other_records_take_the_general_path() -> None:
    """A datagram with a process record beside channel records is decoded whole."""
    process = {
        "type": "process",
        "started": NOW - 100,
        "python": "3.11.7",
        "sdk": "0.1.0",
        "channels": 1,
        "internal_errors": 0,
    }
    data = _datagram(process, _busy(1))
    assert decode_snapshot(data) is None
    decoded = decode_datagram(data)
    assert decoded.rejected == {} and [r["type"] for r in decoded.records] == ["process", "channel"]


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [({"v": 2}, "unsupported_version"), ({"pid": 0}, SCHEMA), ({"instance": "i" * 65}, SCHEMA)],
)
def test_a_broken_envelope_is_judged_by_the_general_path(
    envelope: dict[str, Any], reason: str
) -> None:
    """An envelope the one-pass path refuses gets the general path's verdict and reason."""
    data = _datagram(_busy(1), **envelope)
    assert decode_snapshot(data) is None
    with pytest.raises(Rejected) as caught:
        decode_datagram(data)
    assert caught.value.reason == reason


def test_a_lone_surrogate_is_malformed() -> None:
    """A name with an unpaired UTF-16 surrogate escape cannot be written out as UTF-8 on
    /metrics, so the datagram is refused as malformed."""
    data = _datagram(_busy(1)).replace(b'"queue-1"', b'"queue-\\ud800"')
    with pytest.raises(Rejected) as caught:
        decode_datagram(data)
    assert caught.value.reason == MALFORMED
