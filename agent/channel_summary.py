"""Channel series as exported: channel objects of one (service, name) folded together.

Several objects share a name when a service runs several worker processes, restarts, or
creates short-lived channels with one name. Counters add up (including objects that are
gone); gauges describe the objects alive now; a name counts as closed only when every
live object of that name is closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drainwatch._histogram import WAIT_BUCKETS

from .state import _COUNTERS, _OPS, ChannelObject, RetiredTotals, Service

# Health score weights (docs/metrics.md gives the formula and its reasoning).
_BLOCKED_WEIGHT = 40.0
_BLOCKED_FULL_PENALTY_SECONDS = 60.0
_AFTER_CLOSE_WEIGHT = 30.0
_AFTER_CLOSE_FULL_PENALTY = 10
_UNDRAINED_WEIGHT = 20.0
_DOUBLE_CLOSE_WEIGHT = 10.0


@dataclass(slots=True)
class ChannelSummary:
    service: str
    name: str
    objects: int = 0
    created: float | None = None
    closed: float | None = None
    drained: float | None = None
    residual: int | None = None
    depth: int = 0
    capacity: int = 0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    waiters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_OPS, 0))
    oldest_wait: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_OPS, 0.0))
    wait: dict[str, list[float]] = field(
        default_factory=lambda: {op: [0.0] * (len(WAIT_BUCKETS) + 2) for op in _OPS}
    )
    # Never kept for a summary (built anew for each scrape): as on ChannelObject, so that
    # /metrics reads both alike.
    wait_lines: None = None
    health: None = None

    @property
    def health_score(self) -> float:
        return health_score(
            max(self.oldest_wait.values()),
            self.counters["read_after_close"] + self.counters["send_after_close"],
            self.closed is not None and self.drained is None and (self.residual or 0) > 0,
            self.counters["double_close"] > 0,
        )


def health_score(oldest_wait: float, misuse: int, undrained: bool, double_closed: bool) -> float:
    """100 = healthy. Loses up to 40 for a long current wait (``oldest_wait`` seconds), 30
    for after-close use (``misuse`` reads and sends), 20 for a closed channel that never
    drained, 10 for a double close."""
    score = 100.0
    score -= _BLOCKED_WEIGHT * min(1.0, oldest_wait / _BLOCKED_FULL_PENALTY_SECONDS)
    score -= _AFTER_CLOSE_WEIGHT * min(1.0, misuse / _AFTER_CLOSE_FULL_PENALTY)
    if undrained:
        score -= _UNDRAINED_WEIGHT
    if double_closed:
        score -= _DOUBLE_CLOSE_WEIGHT
    return max(0.0, round(score, 1))


def summarize(service: Service) -> list[ChannelSummary]:
    """Fold a service's channel objects by name. Call with the state lock held."""
    live: dict[str, list[ChannelObject]] = {}
    for instance in service.instances.values():
        for channel in instance.channels.values():
            live.setdefault(channel.name, []).append(channel)
    return [
        fold(service.name, name, live.get(name, []), service.retired.get(name))
        for name in sorted(live.keys() | service.retired.keys())
    ]


def fold(
    service: str, name: str, channels: list[ChannelObject], retired: RetiredTotals | None
) -> ChannelSummary:
    """One name's series from its objects still tracked and the totals of those gone."""
    summary = ChannelSummary(service, name)
    if retired is not None:
        _add_retired(summary, retired)
    _add_live(summary, channels)
    return summary


def _add_retired(summary: ChannelSummary, retired: RetiredTotals) -> None:
    for key in _COUNTERS:
        summary.counters[key] += retired.counters[key]
    for op in _OPS:
        summary.wait[op] = list(retired.wait[op])
    summary.created = retired.created


def _add_live(summary: ChannelSummary, channels: list[ChannelObject]) -> None:
    """Fold the objects still tracked. Collected ("gone") ones add their counters and
    close facts; their last depth and capacity count only when no object of the name is
    left (the process ended), so the final state stays visible after exit."""
    present = [channel for channel in channels if not channel.gone]
    summary.objects = len(present)
    if not channels:
        return
    _add_history(summary, channels)
    _add_gauges(summary, present, present or channels)
    # Closed when no present object is open; the facts come from every closed object.
    if any(channel.closed is None for channel in present):
        return
    closed = [channel for channel in channels if channel.closed is not None]
    if not closed:
        return
    summary.closed = max(channel.closed or 0.0 for channel in closed)
    residuals = [channel.residual for channel in closed if channel.residual is not None]
    summary.residual = sum(residuals) if residuals else None
    drained = [channel.drained for channel in closed]
    if all(value is not None for value in drained):
        summary.drained = max(value or 0.0 for value in drained)


def _add_history(summary: ChannelSummary, channels: list[ChannelObject]) -> None:
    for channel in channels:
        if summary.created is None or channel.created < summary.created:
            summary.created = channel.created
        for key in _COUNTERS:
            summary.counters[key] += channel.counters[key]
        for op in _OPS:
            target, source = summary.wait[op], channel.wait[op]
            for index, value in enumerate(source):
                target[index] += value


def _add_gauges(
    summary: ChannelSummary, present: list[ChannelObject], holding: list[ChannelObject]
) -> None:
    unbounded = False
    for channel in holding:
        summary.depth += channel.depth
        unbounded = unbounded or channel.capacity == 0
        summary.capacity += channel.capacity
    if unbounded:
        summary.capacity = 0
    for channel in present:
        for op in _OPS:
            summary.waiters[op] += channel.waiters[op]
            summary.oldest_wait[op] = max(summary.oldest_wait[op], channel.oldest_wait[op])
