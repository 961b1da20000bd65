"""Decode and validate SDK datagrams (protocol v1) before they touch the agent's state.

Everything that arrives on the ingest socket is untrusted: any process in the pod can
send it. A datagram is accepted, or rejected whole with one reason; inside an accepted
datagram each record is accepted or rejected on its own. Nothing from a datagram is
evaluated or used as a path; strings are only stored and later escaped on output.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard

import msgspec
from drainwatch._protocol import MAX_DATAGRAM_BYTES, PROTOCOL_VERSION

from .channel_decode import check_channel, decode_snapshot
from .decode_values import (
    MAX_STRING_CHARS,
    is_histogram,
    is_int,
    is_one_of,
    is_optional_bool,
    is_optional_text,
    is_optional_timestamp,
    is_text,
    is_timestamp,
)
from .task_decode import check_loop, check_threads

# Reasons, as they appear in drainwatch_agent_events_rejected_total{reason}.
OVERSIZED: Final = "oversized"
MALFORMED: Final = "malformed"
VERSION: Final = "unsupported_version"
SCHEMA: Final = "schema"
UNKNOWN_TYPE: Final = "unknown_type"
REJECT_REASONS: Final = (OVERSIZED, MALFORMED, VERSION, SCHEMA, UNKNOWN_TYPE)

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


_parse: Final = msgspec.json.Decoder().decode


def decode_datagram(data: bytes) -> Decoded:
    """Parse one datagram; raise ``Rejected`` if the whole datagram must be dropped."""
    if len(data) > MAX_DATAGRAM_BYTES:
        raise Rejected(OVERSIZED, f"{len(data)} bytes > {MAX_DATAGRAM_BYTES}")
    snapshot = decode_snapshot(data)
    if snapshot is not None:  # the common case, parsed and checked in one pass
        return Decoded(
            Envelope(
                snapshot.service,
                snapshot.instance,
                snapshot.pid,
                snapshot.seq,
                snapshot.time,
                snapshot.dropped,
            ),
            snapshot.records,  # type: ignore[arg-type]  # TypedDicts are dicts
        )
    try:
        # msgspec's parser: UTF-8 only, no NaN or Infinity, no lone surrogate escapes.
        message = _parse(data)
    except (msgspec.DecodeError, ValueError, RecursionError) as error:
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
    if not is_optional_text(service):
        raise Rejected(SCHEMA, '"service" must be null or a non-empty string')
    if not (
        is_text(instance, 64)
        and is_int(pid, 1, 2**31)
        and is_int(seq, 1)
        and is_timestamp(sent)
        and is_int(dropped)
    ):
        raise Rejected(SCHEMA, "envelope fields instance/pid/seq/time/dropped are missing or wrong")
    return Envelope(service, instance, pid, seq, float(sent), dropped)  # type: ignore[arg-type]


def _check_record(record: object) -> str | None:
    if type(record) is not dict:
        return SCHEMA
    kind = record.get("type")
    # Looked up only as text: a list or an object is unhashable.
    check = _RECORD_CHECKS.get(kind) if type(kind) is str else None
    return UNKNOWN_TYPE if check is None else check(record)


def _check_inflight(record: dict[str, Any]) -> str | None:
    outcomes = record.get("outcomes")
    ok = (
        is_one_of(record.get("protocol"), _PROTOCOLS)
        and is_text(record.get("method"))
        and is_int(record.get("active"))
        and is_int(record.get("started_during_drain"))
        and type(outcomes) is dict
        and len(outcomes) == len(_OUTCOMES)
        and all(is_int(outcomes.get(outcome)) for outcome in _OUTCOMES)
        and is_histogram(record.get("duration"))
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
        and is_timestamp(step.get("started"))
        and is_optional_timestamp(step.get("finished"))
        and is_optional_bool(step.get("ok"))
        and is_optional_text(step.get("detail"))
    )


def _check_listener(listener: object) -> bool:
    return (
        type(listener) is dict
        and listener.keys() >= _LISTENER_KEYS
        and is_one_of(listener.get("role"), _ROLES)
        and (listener.get("port") is None or is_int(listener.get("port"), 0, 65535))
        and is_timestamp(listener.get("opened"))
        and is_optional_timestamp(listener.get("stop_started"))
        and is_optional_timestamp(listener.get("closed"))
    )


def _check_component(component: object) -> bool:
    if type(component) is not dict or not is_text(component.get("name")):
        return False
    depends_on = component.get("depends_on")
    return (
        type(depends_on) is list
        and len(depends_on) <= _MAX_TOPOLOGY_NODES
        and all(is_text(name) for name in depends_on)
        and is_optional_text(component.get("role"))
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
        and is_text(signal.get("signal"), 32)
        and is_timestamp(signal.get("at"))
    )


def _check_health(health: object) -> bool:
    return (
        type(health) is dict
        and is_text(health.get("status"), 32)
        and is_timestamp(health.get("at"))
    )


def _check_exit_counts(counts: object) -> bool:
    return counts is None or (
        type(counts) is dict
        and set(counts) <= _PROTOCOLS
        and all(is_int(count) for count in counts.values())
    )


def _check_shutdown(record: dict[str, Any]) -> str | None:
    signals = record.get("signals")
    steps = record.get("steps")
    health = record.get("health")
    listeners = record.get("listeners")
    exit_code = record.get("exit_code")
    ok = (
        record.keys() >= _SHUTDOWN_KEYS
        and is_one_of(record.get("phase"), _PHASES)
        and type(signals) is list
        and len(signals) <= _MAX_ENTRIES
        and all(_check_signal(signal) for signal in signals)
        and _is_small_map(steps)
        and all(_check_step(step) for step in steps.values())
        and is_optional_bool(record.get("ready"))
        and is_optional_timestamp(record.get("ready_changed"))
        and _is_small_map(health)
        and all(_check_health(entry) for entry in health.values())
        and _is_small_map(listeners)
        and all(_check_listener(listener) for listener in listeners.values())
        and is_optional_timestamp(record.get("exited"))
        and (exit_code is None or is_int(exit_code, -255, 255))
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
            _SDK_LIMIT.fullmatch(name) is not None and is_int(count)
            for name, count in capped.items()
        )
    )


def _check_process(record: dict[str, Any]) -> str | None:
    ok = (
        is_timestamp(record.get("started"))
        and is_text(record.get("python"), 32)
        and is_text(record.get("sdk"), 32)
        and is_int(record.get("channels"))
        and is_int(record.get("internal_errors", 0))
        and _check_capped(record.get("capped"))
    )
    return None if ok else SCHEMA


def _check_pair(value: object, check: Any) -> bool:
    return type(value) is dict and check(value.get("send")) and check(value.get("receive"))


def _check_channel(record: dict[str, Any]) -> str | None:
    return None if check_channel(record) else SCHEMA


def _check_loop(record: dict[str, Any]) -> str | None:
    return None if check_loop(record) else SCHEMA


def _check_threads(record: dict[str, Any]) -> str | None:
    return None if check_threads(record) else SCHEMA


_RECORD_CHECKS: Final[dict[object, Callable[[dict[str, Any]], str | None]]] = {
    "channel": _check_channel,
    "process": _check_process,
    "inflight": _check_inflight,
    "shutdown": _check_shutdown,
    "loop": _check_loop,
    "threads": _check_threads,
}
