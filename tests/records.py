"""Protocol v1 records as an SDK would send them, for tests that feed the agent directly."""

from __future__ import annotations

import time
from typing import Any

from drainwatch._histogram import WAIT_BUCKETS


def channel_record(channel_id: int = 1, name: str = "orders", **fields: Any) -> dict[str, Any]:
    """A valid ``channel`` record of an open, idle channel; ``fields`` override any key."""
    empty_histogram = {"counts": [0] * (len(WAIT_BUCKETS) + 1), "sum": 0.0, "count": 0}
    record: dict[str, Any] = {
        "type": "channel",
        "trigger": "snapshot",
        "id": channel_id,
        "name": name,
        "kind": "asyncio",
        "owner": None,
        "capacity": 10,
        "created": time.time() - 60,
        "closed": None,
        "immediate": False,
        "closed_by": None,
        "closed_where": None,
        "drained": None,
        "residual": None,
        "depth": 0,
        "sent": 0,
        "received": 0,
        "discarded": 0,
        "read_after_close": 0,
        "send_after_close": 0,
        "double_close": 0,
        "waiters": {"send": 0, "receive": 0},
        "oldest_wait": {"send": 0.0, "receive": 0.0},
        "wait": {"send": dict(empty_histogram), "receive": dict(empty_histogram)},
    }
    record.update(fields)
    return record


def inflight_record(
    protocol: str = "grpc", method: str = "/pay.Payments/Charge", **fields: Any
) -> dict[str, Any]:
    """A valid ``inflight`` record with nothing in flight; ``fields`` override any key."""
    record: dict[str, Any] = {
        "type": "inflight",
        "protocol": protocol,
        "method": method,
        "active": 0,
        "started_during_drain": 0,
        "outcomes": dict.fromkeys(
            ("ok", "error", "cancelled", "aborted_at_shutdown", "rejected_draining"), 0
        ),
        "duration": {"counts": [0] * (len(WAIT_BUCKETS) + 1), "sum": 0.0, "count": 0},
    }
    record.update(fields)
    return record
