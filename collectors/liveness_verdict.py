"""Whether liveness failed during the drain while requests were in flight, judged from outside.

The kubelet restarts or kills a container whose liveness probe fails, so a liveness failure
in the middle of a drain cuts it short. ``liveness_failed_during_drain`` reads the probe's
``Transition``s (from ``ProbeRunner``, :mod:`drainwatch.collectors.probes`) against the
drain window and the in-flight timeline; it is pure and never raises on odd data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    # Only for the annotation: probes imports this module to offer the verdict too.
    from .probes import Transition


class LivenessFinding(NamedTuple):
    violated: bool
    explanation: str
    at: float | None  # the moment liveness was failing with requests in flight


def liveness_failed_during_drain(
    transitions: Sequence[Transition],
    drain_window: tuple[float, float | None],
    inflight_timeline: Sequence[tuple[float, int]],
) -> LivenessFinding:
    """Whether the ``liveness`` probe was failing during the drain while requests were in
    flight. ``drain_window`` is (start, end) in Unix seconds, end None while draining;
    ``inflight_timeline`` is (time, requests in flight) samples, each holding until the
    next. A failure exactly at the end of the drain does not count (it had reached zero)."""
    start, end = drain_window
    stop = math.inf if end is None else end
    samples = sorted(inflight_timeline)

    def inflight(at: float) -> int:
        count = 0
        for when, value in samples:
            if when > at:
                break
            count = value
        return count

    failing_seen = False
    ordered = sorted(transitions, key=lambda item: item.at)
    for index, item in enumerate(ordered):
        if item.ok:
            continue
        recovered = next((t.at for t in ordered[index + 1 :] if t.ok), math.inf)
        low, high = max(item.at, start), min(recovered, stop)
        if low >= high:
            continue
        failing_seen = True
        moments = [low, *(when for when, _ in samples if low < when < high)]
        for moment in moments:
            count = inflight(moment)
            if count > 0:
                return LivenessFinding(
                    True,
                    f"liveness failed ({item.detail}) {moment - start:+.3f} s into the drain "
                    f"while {count} request(s) were in flight: the kubelet restarts or kills a "
                    "container whose liveness fails, cutting the drain",
                    moment,
                )
    if failing_seen:
        return LivenessFinding(
            False, "liveness failed during the drain, but only when nothing was in flight", None
        )
    return LivenessFinding(False, "liveness did not fail during the drain", None)
