"""The ``grpc.health.v1`` messages on the wire, without protobuf.

Both messages have one field: ``HealthCheckRequest{string service = 1}`` and
``HealthCheckResponse{enum status = 1}``. Encoding them here spares the agent a protobuf
dependency; ``GrpcHealthProbe`` (:mod:`drainwatch.collectors.probes`) sends the bytes over a
raw unary call to ``CHECK_METHOD``.
"""

from __future__ import annotations

from typing import Final

CHECK_METHOD: Final = "/grpc.health.v1.Health/Check"
STATUS_NAMES: Final = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SERVING: Final = 1


def encode_varint(value: int) -> bytes:
    """``value`` (not negative) as a protobuf base-128 varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_request(service: str) -> bytes:
    """A ``HealthCheckRequest`` for ``service``; "" (the whole server) is the empty message."""
    data = service.encode()
    return b"\x0a" + encode_varint(len(data)) + data if data else b""


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint at offset ``at`` and the offset after it; ``ValueError`` when cut short or
    longer than ten bytes."""
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def decode_status(data: bytes) -> int | None:
    """The ``status`` field (0 when absent, as proto3 says); None when malformed."""
    status, at = 0, 0
    try:
        while at < len(data):
            key, at = read_varint(data, at)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, at = read_varint(data, at)
                if number == 1:
                    status = value
            elif wire == 2:
                length, at = read_varint(data, at)
                at += length
            elif wire in (1, 5):
                at += 8 if wire == 1 else 4
            else:
                return None
    except ValueError:
        return None
    return status if at == len(data) else None
