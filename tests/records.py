"""Protocol v1 records as an SDK would send them, for tests that feed the agent directly."""

from __future__ import annotations

import time
from bisect import bisect_left
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


def _histogram(*observations: float) -> dict[str, Any]:
    counts = [0] * (len(WAIT_BUCKETS) + 1)
    for seconds in observations:
        counts[bisect_left(WAIT_BUCKETS, seconds)] += 1
    return {"counts": counts, "sum": float(sum(observations)), "count": len(observations)}


def task_wait(task: str, reason: str, wait: float, target: str | None = None) -> dict[str, Any]:
    """One ``top`` entry of a ``loop`` record."""
    now = time.time()
    return {
        "task": task,
        "reason": reason,
        "target": target,
        "since": now - wait,
        "wait": wait,
        "age": wait,
    }


def loop_record(
    loop_id: int = 1, *top: dict[str, Any], lags: tuple[float, ...] = (0.001,), **fields: Any
) -> dict[str, Any]:
    """A valid ``loop`` record with ``top`` waits (blocked counts follow them); ``lags`` are
    the probe delays so far; ``fields`` override any key."""
    blocked: dict[str, int] = {}
    for entry in top:
        blocked[entry["reason"]] = blocked.get(entry["reason"], 0) + 1
    record: dict[str, Any] = {
        "type": "loop",
        "id": loop_id,
        "thread": "MainThread",
        "running": True,
        "closed": False,
        "sampled_at": time.time(),
        "tasks": len(top) + 1,
        "sampled": len(top) + 1,
        "blocked": blocked,
        "top": list(top),
        "sites": [
            {
                "reason": entry["reason"],
                "target": entry["target"],
                "count": 1,
                "oldest": entry["wait"],
                "newest": entry["wait"],
                "tasks": [{"name": entry["task"], "wait": entry["wait"], "age": entry["age"]}],
                "stack": [f"{entry['task']}_body (app.py:12)"],
            }
            for entry in top
        ],
        "lag": _histogram(*lags),
        "lag_max": max(lags, default=0.0),
        "threshold": 0.1,
        "stalls_total": 0,
        "stalls": [],
    }
    record.update(fields)
    return record


def thread_wait(name: str, reason: str, wait: float, ident: int = 7) -> dict[str, Any]:
    """One ``top`` entry of a ``threads`` record."""
    return {
        "thread": name,
        "ident": ident,
        "native_id": ident + 1000,
        "reason": reason,
        "target": None,
        "since": time.time() - wait,
        "wait": wait,
        "site": "Queue.get (queue.py:171)",
        "stack": ["Queue.get (queue.py:171)", "work (app.py:30)"],
    }


def threads_record(*top: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A valid ``threads`` record listing ``top``."""
    waiting: dict[str, int] = {}
    for entry in top:
        waiting[entry["reason"]] = waiting.get(entry["reason"], 0) + 1
    record: dict[str, Any] = {
        "type": "threads",
        "sampled_at": time.time(),
        "threads": len(top) + 1,
        "waiting": waiting,
        "top": list(top),
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
