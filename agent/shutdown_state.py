"""Merging the SDK's cumulative ``shutdown`` and ``inflight`` records into an instance.

Shutdown events are sent from the thread where they happen while snapshots come from the
reporter thread, so an older view can arrive after a newer one. Every field therefore
merges monotonically: the phase only advances, timestamps are set once, counters take the
larger value; only gauges (requests active now) take the latest value.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from drainwatch._histogram import WAIT_BUCKETS

from .inflight_series import InflightSeries

PHASES = ("running", "signalled", "draining", "stopping", "stopped")
OUTCOMES = ("ok", "error", "cancelled", "aborted_at_shutdown", "rejected_draining")
_SET_ONCE = ("exited", "exit_code", "inflight_at_exit")


@dataclass(slots=True)
class InflightMethod:
    """One (protocol, method) of one process, as last reported."""

    protocol: str
    method: str
    active: int = 0
    started_during_drain: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    # bucket counts (non-cumulative, +Inf last), then sum
    duration: list[float] = field(default_factory=lambda: [0.0] * (len(WAIT_BUCKETS) + 2))
    # ``active`` over time, as the agent received it (status page, drain report)
    series: InflightSeries = field(default_factory=InflightSeries)

    def merge(self, record: dict[str, Any]) -> None:
        self.active = record["active"]
        self.started_during_drain = max(self.started_during_drain, record["started_during_drain"])
        for outcome in OUTCOMES:
            self.outcomes[outcome] = max(self.outcomes[outcome], record["outcomes"][outcome])
        histogram = record["duration"]
        if histogram["count"] >= sum(self.duration[:-1]):
            self.duration[:-1] = histogram["counts"]
            self.duration[-1] = float(histogram["sum"])

    def absorb(self, other: InflightMethod) -> None:
        """Add the counters of a method of a process that is forgotten (retired totals)."""
        self.started_during_drain += other.started_during_drain
        for outcome in OUTCOMES:
            self.outcomes[outcome] += other.outcomes[outcome]
        for index, value in enumerate(other.duration):
            self.duration[index] += value


def merge_shutdown(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The union of two cumulative shutdown views; never loses a fact either one has."""
    if old is None:
        return copy.deepcopy(new)
    merged = copy.deepcopy(old)
    if PHASES.index(new["phase"]) > PHASES.index(merged["phase"]):
        merged["phase"] = new["phase"]
    if len(new["signals"]) > len(merged["signals"]):
        merged["signals"] = copy.deepcopy(new["signals"])
    _merge_steps(merged["steps"], new["steps"])
    if (new["ready_changed"] or 0.0) >= (merged["ready_changed"] or 0.0):
        merged["ready"], merged["ready_changed"] = new["ready"], new["ready_changed"]
    for service, health in new["health"].items():
        known = merged["health"].get(service)
        if known is None or health["at"] >= known["at"]:
            merged["health"][service] = dict(health)
    _merge_listeners(merged["listeners"], new["listeners"])
    for key in _SET_ONCE:
        if merged.get(key) is None and new.get(key) is not None:
            merged[key] = copy.deepcopy(new[key])
    if new.get("topology") is not None:
        merged["topology"] = copy.deepcopy(new["topology"])
    return merged


def _merge_steps(merged: dict[str, Any], new: dict[str, Any]) -> None:
    for name, step in new.items():
        known = merged.get(name)
        if known is None:
            merged[name] = dict(step)
        elif known["finished"] is None and step["finished"] is not None:
            known.update(
                finished=step["finished"], ok=step["ok"], detail=step["detail"] or known["detail"]
            )


def _merge_listeners(merged: dict[str, Any], new: dict[str, Any]) -> None:
    for name, listener in new.items():
        known = merged.get(name)
        if known is None:
            merged[name] = dict(listener)
            continue
        for key in ("stop_started", "closed"):
            if known[key] is None:
                known[key] = listener[key]
