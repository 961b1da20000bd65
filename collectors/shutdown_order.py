"""Whether the health port stopped listening before the business ports, from outside.

``health_closed_before_business(view)`` judges the order from the port timeline alone
(:mod:`drainwatch.collectors.timeline_view`), without any SDK, and only when the order is
certain: a health port was seen gone in a sample that finished before a later sample in
which a business port was still listening. Two closes seen in the same sample (a tie within
one sampling interval) are never flagged. Given a sampling interval P and a sample duration
d, closes at least 2P + d apart are always ordered; ``SamplingPlan``
(:mod:`drainwatch.collectors.port_timeline`) holds the recommended intervals.
"""

from __future__ import annotations

from typing import NamedTuple

from .timeline_view import BUSINESS, HEALTH, PortInterval, SampleMark, TimelineView


class OrderVerdict(NamedTuple):
    violated: bool
    explanation: str
    at: float | None  # Unix seconds: the first sample that saw the health port gone


def health_closed_before_business(
    view: TimelineView,
    *,
    since: float | None = None,
    min_gap_seconds: float = 0.0,
    origin: float | None = None,
) -> OrderVerdict:
    """Did a health port certainly stop listening before a business port (or while business
    ports kept listening until the process exited, or are listening still)?

    Only closes seen at or after ``since`` (e.g. the last restart) are judged. Flagged only
    when the health port was seen gone in a sample that finished at least
    ``min_gap_seconds`` before a later sample still saw a business port listening that had
    been listening together with it. Times in the explanation are offsets from ``origin``
    (default: the last sample that saw the health port). Pure; never raises on odd data.
    """
    roles = view.roles
    if not roles.known:
        return OrderVerdict(
            False,
            "port roles are unknown: configure the health ports or a health probe URL, or "
            "use the SDK, so that health and business ports can be told apart",
            None,
        )
    health = sorted(
        (
            (item.closed, item)
            for item in view.intervals
            if item.closed is not None
            and roles.role(item.port) == HEALTH
            and (since is None or item.closed.finished >= since)
        ),
        key=lambda pair: pair[0],
    )
    business = [item for item in view.intervals if roles.role(item.port) == BUSINESS]
    if not health:
        return OrderVerdict(False, "no health port stopped listening", None)
    if not business:
        return OrderVerdict(False, "the target has no business port", None)
    for gone, closed_health in health:
        overlapping = [
            item
            for item in business
            if item.opened.seq <= closed_health.last_seen.seq
            and item.last_seen.seq > gone.seq
            and item.last_seen.started - gone.finished >= min_gap_seconds
        ]
        if overlapping:
            latest = max(overlapping, key=lambda item: (item.last_seen.seq, -item.port))
            start = origin if origin is not None else closed_health.last_seen.started
            text = _explain(view, closed_health, gone, latest, start)
            return OrderVerdict(True, text, gone.started)
    return OrderVerdict(
        False,
        "every health port stopped listening after the business ports, or within the same "
        "sample (the order of closes seen in one sample is not known)",
        None,
    )


def _explain(
    view: TimelineView,
    health: PortInterval,
    gone: SampleMark,
    business: PortInterval,
    origin: float,
) -> str:
    def at(time: float) -> str:
        return f"{time - origin:+.3f} s"

    _, why = view.roles.explain(health.port)
    text = (
        f"health port {health.port} ({why}) stopped listening between "
        f"{at(health.last_seen.started)} and {at(gone.finished)}, while business port "
        f"{business.port} was still listening at {at(business.last_seen.started)}"
    )
    closed = business.closed
    if closed is None:
        text += " and is listening still"
    elif business.closed_by_exit:
        text += f" and stopped only when the target exited (gone by {at(closed.finished)})"
    else:
        text += f" and stopped only by {at(closed.finished)}"
    return (
        f"{text}: liveness probes fail while business traffic is still served, so the "
        "orchestrator may kill the drain; close the health endpoint last"
    )
