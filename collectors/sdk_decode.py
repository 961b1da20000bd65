"""Decode and validate SDK datagrams (protocol v1) before they touch the agent's state.

Everything that arrives on the ingest socket is untrusted: any process in the pod can
send it. A datagram is accepted, or rejected whole with one reason; inside an accepted
datagram each record is accepted or rejected on its own. Nothing from a datagram is
evaluated or used as a path; strings are only stored and later escaped on output.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard

from drainwatch._histogram import WAIT_BUCKETS
from drainwatch._protocol import MAX_DATAGRAM_BYTES, PROTOCOL_VERSION

# Reasons, as they appear in drainwatch_agent_events_rejected_total{reason}.
OVERSIZED: Final = "oversized"
MALFORMED: Final = "malformed"
VERSION: Final = "unsupported_version"
SCHEMA: Final = "schema"
UNKNOWN_TYPE: Final = "unknown_type"
REJECT_REASONS: Final = (OVERSIZED, MALFORMED, VERSION, SCHEMA, UNKNOWN_TYPE)

MAX_STRING_CHARS: Final = 1024
# Timestamps beyond year 2200 or before 2000 are not from a real clock.
_MIN_TIMESTAMP: Final = 946_684_800.0
_MAX_TIMESTAMP: Final = 7_258_118_400.0
_MAX_COUNT: Final = 2**63 - 1
_BUCKET_COUNT: Final = len(WAIT_BUCKETS) + 1
_CHANNEL_KINDS: Final = frozenset({"asyncio", "thread", "asyncio_queue", "thread_queue"})
_PROTOCOLS: Final = frozenset({"grpc", "http", "websocket"})
_OUTCOMES: Final = ("ok", "error", "cancelled", "aborted_at_shutdown", "rejected_draining")
_PHASES: Final = frozenset({"running", "signalled", "draining", "stopping", "stopped"})
_ROLES: Final = frozenset({"business", "health", "metrics", "unknown"})
_MAX_ENTRIES: Final = 64
_MAX_TOPOLOGY_NODES: Final = 128
_MAX_SDK_LIMITS: Final = 16
_SDK_LIMIT: Final = re.compile(r"[a-z][a-z_]{0,31}")
_TRIGGERS: Final = frozenset(
    {
        "snapshot",
        "closed",
        "double_close",
        "send_after_close",
        "read_after_close",
        "drained",
        "gone",
    }
)


class Rejected(Exception):  # noqa: N818 - a verdict, not a failure of the decoder
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Envelope:
    service: str | None
    instance: str
    pid: int
    seq: int
    time: float
    dropped: int


@dataclass(slots=True)
class Decoded:
    envelope: Envelope
    records: list[dict[str, Any]] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def _is_int(value: object, low: int = 0, high: int = _MAX_COUNT) -> bool:
    return type(value) is int and low <= value <= high


def _is_number(value: object, low: float, high: float) -> bool:
    if type(value) is float or type(value) is int:
        return low <= value <= high
    return False


def _is_text(value: object, limit: int = MAX_STRING_CHARS) -> bool:
    return type(value) is str and 0 < len(value) <= limit


def _is_optional_text(value: object) -> bool:
    return value is None or _is_text(value)


def _is_timestamp(value: object) -> bool:
    return _is_number(value, _MIN_TIMESTAMP, _MAX_TIMESTAMP)


def _is_optional_timestamp(value: object) -> bool:
    return value is None or _is_timestamp(value)


def _is_one_of(value: object, choices: frozenset[str]) -> bool:
    # Checked as text first: a list or an object is unhashable and must not reach `in`.
    return type(value) is str and value in choices


def _is_optional_bool(value: object) -> bool:
    # By type: 0 and 1 compare equal to False and True.
    return value is None or type(value) is bool


def decode_datagram(data: bytes) -> Decoded:
    """Parse one datagram; raise ``Rejected`` if the whole datagram must be dropped."""
    if len(data) > MAX_DATAGRAM_BYTES:
        raise Rejected(OVERSIZED, f"{len(data)} bytes > {MAX_DATAGRAM_BYTES}")
    try:
        message = json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise Rejected(MALFORMED, str(error)[:200]) from None
    if type(message) is not dict:
        raise Rejected(MALFORMED, "a datagram must be a JSON object")
    version = message.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise Rejected(VERSION, f"protocol version {str(version)[:20]!r} (this agent reads 1)")
    envelope = _envelope(message)
    records = message.get("records")
    if type(records) is not list:
        raise Rejected(SCHEMA, '"records" must be a list')
    decoded = Decoded(envelope)
    for record in records:
        reason = _check_record(record)
        if reason is None:
            decoded.records.append(record)
        else:
            decoded.rejected[reason] = decoded.rejected.get(reason, 0) + 1
    return decoded


def _envelope(message: dict[str, Any]) -> Envelope:
    service = message.get("service")
    instance = message.get("instance")
    pid = message.get("pid")
    seq = message.get("seq")
    sent = message.get("time")
    dropped = message.get("dropped", 0)
    if not _is_optional_text(service):
        raise Rejected(SCHEMA, '"service" must be null or a non-empty string')
    if not (
        _is_text(instance, 64)
        and _is_int(pid, 1, 2**31)
        and _is_int(seq, 1)
        and _is_timestamp(sent)
        and _is_int(dropped)
    ):
        raise Rejected(SCHEMA, "envelope fields instance/pid/seq/time/dropped are missing or wrong")
    return Envelope(service, instance, pid, seq, float(sent), dropped)  # type: ignore[arg-type]


def _check_record(record: object) -> str | None:
    if type(record) is not dict:
        return SCHEMA
    kind = record.get("type")
    if kind == "channel":
        return _check_channel(record)
    if kind == "process":
        return _check_process(record)
    if kind == "inflight":
        return _check_inflight(record)
    if kind == "shutdown":
        return _check_shutdown(record)
    return UNKNOWN_TYPE


def _check_inflight(record: dict[str, Any]) -> str | None:
    outcomes = record.get("outcomes")
    ok = (
        _is_one_of(record.get("protocol"), _PROTOCOLS)
        and _is_text(record.get("method"))
        and _is_int(record.get("active"))
        and _is_int(record.get("started_during_drain"))
        and type(outcomes) is dict
        and len(outcomes) == len(_OUTCOMES)
        and all(_is_int(outcomes.get(outcome)) for outcome in _OUTCOMES)
        and _check_histogram(record.get("duration"))
    )
    return None if ok else SCHEMA


def _is_small_map(value: object) -> TypeGuard[dict[str, Any]]:
    """A JSON object of at most _MAX_ENTRIES entries with short keys ("" allowed)."""
    return (
        type(value) is dict
        and len(value) <= _MAX_ENTRIES
        and all(len(key) <= MAX_STRING_CHARS for key in value)
    )


# Keys the agent's merge reads directly: present (possibly null) in every record the SDK sends.
_STEP_KEYS: Final = frozenset({"started", "finished", "ok", "detail"})
_LISTENER_KEYS: Final = frozenset({"role", "port", "opened", "stop_started", "closed"})
_SHUTDOWN_KEYS: Final = frozenset(
    {"phase", "signals", "steps", "ready", "ready_changed", "health", "listeners"}
)


def _check_step(step: object) -> bool:
    return (
        type(step) is dict
        and step.keys() >= _STEP_KEYS
        and _is_timestamp(step.get("started"))
        and _is_optional_timestamp(step.get("finished"))
        and _is_optional_bool(step.get("ok"))
        and _is_optional_text(step.get("detail"))
    )


def _check_listener(listener: object) -> bool:
    return (
        type(listener) is dict
        and listener.keys() >= _LISTENER_KEYS
        and _is_one_of(listener.get("role"), _ROLES)
        and (listener.get("port") is None or _is_int(listener.get("port"), 0, 65535))
        and _is_timestamp(listener.get("opened"))
        and _is_optional_timestamp(listener.get("stop_started"))
        and _is_optional_timestamp(listener.get("closed"))
    )


def _check_component(component: object) -> bool:
    if type(component) is not dict or not _is_text(component.get("name")):
        return False
    depends_on = component.get("depends_on")
    return (
        type(depends_on) is list
        and len(depends_on) <= _MAX_TOPOLOGY_NODES
        and all(_is_text(name) for name in depends_on)
        and _is_optional_text(component.get("role"))
    )


def _check_topology(topology: object) -> bool:
    if topology is None:
        return True
    if type(topology) is not dict:
        return False
    components = topology.get("components")
    return (
        type(components) is list
        and len(components) <= _MAX_TOPOLOGY_NODES
        and all(_check_component(component) for component in components)
    )


def _check_signal(signal: object) -> bool:
    return (
        type(signal) is dict
        and _is_text(signal.get("signal"), 32)
        and _is_timestamp(signal.get("at"))
    )


def _check_health(health: object) -> bool:
    return (
        type(health) is dict
        and _is_text(health.get("status"), 32)
        and _is_timestamp(health.get("at"))
    )


def _check_exit_counts(counts: object) -> bool:
    return counts is None or (
        type(counts) is dict
        and set(counts) <= _PROTOCOLS
        and all(_is_int(count) for count in counts.values())
    )


def _check_shutdown(record: dict[str, Any]) -> str | None:
    signals = record.get("signals")
    steps = record.get("steps")
    health = record.get("health")
    listeners = record.get("listeners")
    exit_code = record.get("exit_code")
    ok = (
        record.keys() >= _SHUTDOWN_KEYS
        and _is_one_of(record.get("phase"), _PHASES)
        and type(signals) is list
        and len(signals) <= _MAX_ENTRIES
        and all(_check_signal(signal) for signal in signals)
        and _is_small_map(steps)
        and all(_check_step(step) for step in steps.values())
        and _is_optional_bool(record.get("ready"))
        and _is_optional_timestamp(record.get("ready_changed"))
        and _is_small_map(health)
        and all(_check_health(entry) for entry in health.values())
        and _is_small_map(listeners)
        and all(_check_listener(listener) for listener in listeners.values())
        and _is_optional_timestamp(record.get("exited"))
        and (exit_code is None or _is_int(exit_code, -255, 255))
        and _check_exit_counts(record.get("inflight_at_exit"))
        and _check_topology(record.get("topology"))
    )
    return None if ok else SCHEMA


def _check_capped(capped: object) -> bool:
    """Optional ``{limit: count}`` of the SDK's own caps: at most 16 short identifiers."""
    return capped is None or (
        type(capped) is dict
        and len(capped) <= _MAX_SDK_LIMITS
        and all(
            _SDK_LIMIT.fullmatch(name) is not None and _is_int(count)
            for name, count in capped.items()
        )
    )


def _check_process(record: dict[str, Any]) -> str | None:
    ok = (
        _is_timestamp(record.get("started"))
        and _is_text(record.get("python"), 32)
        and _is_text(record.get("sdk"), 32)
        and _is_int(record.get("channels"))
        and _is_int(record.get("internal_errors", 0))
        and _check_capped(record.get("capped"))
    )
    return None if ok else SCHEMA


def _check_histogram(value: object) -> bool:
    if type(value) is not dict:
        return False
    counts = value.get("counts")
    total = value.get("sum")
    return (
        type(counts) is list
        and len(counts) == _BUCKET_COUNT
        and all(_is_int(count) for count in counts)
        and _is_number(total, 0.0, math.inf)
        and value.get("count") == sum(counts)
    )


def _check_pair(value: object, check: Any) -> bool:
    return type(value) is dict and check(value.get("send")) and check(value.get("receive"))


def _is_count(value: object) -> bool:
    return _is_int(value)


def _is_seconds(value: object) -> bool:
    return _is_number(value, 0.0, 1e9)


# Every key of a channel record, nullable ones included: the agent's merge reads them all.
_CHANNEL_KEYS: Final = frozenset(
    {
        "trigger",
        "id",
        "name",
        "kind",
        "owner",
        "capacity",
        "created",
        "closed",
        "immediate",
        "closed_by",
        "closed_where",
        "drained",
        "residual",
        "depth",
        "sent",
        "received",
        "discarded",
        "read_after_close",
        "send_after_close",
        "double_close",
        "waiters",
        "oldest_wait",
        "wait",
    }
)


def _check_channel(record: dict[str, Any]) -> str | None:
    ok = (
        record.keys() >= _CHANNEL_KEYS
        and _is_one_of(record.get("trigger"), _TRIGGERS)
        and _is_int(record.get("id"), 1)
        and _is_text(record.get("name"))
        and _is_one_of(record.get("kind"), _CHANNEL_KINDS)
        and _is_optional_text(record.get("owner"))
        and _is_int(record.get("capacity"))
        and _is_timestamp(record.get("created"))
        and _is_optional_timestamp(record.get("closed"))
        and type(record.get("immediate")) is bool
        and _is_optional_text(record.get("closed_by"))
        and _is_optional_text(record.get("closed_where"))
        and _is_optional_timestamp(record.get("drained"))
        and (record.get("residual") is None or _is_int(record.get("residual")))
        and _is_int(record.get("depth"))
        and _is_int(record.get("sent"))
        and _is_int(record.get("received"))
        and _is_int(record.get("discarded"))
        and _is_int(record.get("read_after_close"))
        and _is_int(record.get("send_after_close"))
        and _is_int(record.get("double_close"))
        and _check_pair(record.get("waiters"), _is_count)
        and _check_pair(record.get("oldest_wait"), _is_seconds)
        and _check_pair(record.get("wait"), _check_histogram)
    )
    return None if ok else SCHEMA
