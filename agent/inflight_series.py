"""Requests in flight over time, per (process, protocol, method): a small bounded series.

The SDK reports each method's ``active`` count in its snapshots (about once a second, every
100 ms while the process shuts down). The agent keeps the changes, so a drain can be drawn
as "in flight over time" on the status page and in the drain report.

Bounded: at most ``capacity`` points per method. When the series is full, the older half is
thinned by merging neighbouring pairs (the earlier time, the larger count), so the series
always spans from its first point to now, the newest points keep full resolution, and a
peak is never thinned away. Memory per method: two arrays of ``capacity`` numbers.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Final

DEFAULT_CAPACITY: Final = 256
# A constant count is still refreshed this often, so a chart knows the value was current.
_HEARTBEAT_SECONDS: Final = 10.0


class InflightSeries:
    """(Unix seconds, requests in flight) points, oldest first. Not thread-safe: the agent
    updates and reads it under the state lock."""

    __slots__ = ("_capacity", "_counts", "_times")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 4 or capacity % 2:
            raise ValueError(f'"capacity" must be an even number >= 4: {capacity!r}')
        self._capacity = capacity
        self._times = array("d")
        self._counts = array("q")

    def __len__(self) -> int:
        return len(self._times)

    def __iter__(self) -> Iterator[tuple[float, int]]:
        return zip(self._times, self._counts, strict=True)

    def observe(self, at: float, active: int) -> None:
        """Record that ``active`` requests were in flight at ``at``. A repeated count is kept
        only as a heartbeat; a time before the last point is taken as the last point's time
        (snapshots from two threads can arrive out of order)."""
        times, counts = self._times, self._counts
        if times:
            at = max(at, times[-1])
            if counts[-1] == active and at - times[-1] < _HEARTBEAT_SECONDS:
                return
            if len(times) >= 2 and counts[-1] == active == counts[-2]:
                times[-1] = at  # a run of equal counts needs its two ends only
                return
        if len(times) >= self._capacity:
            self._thin()
        self._times.append(at)
        self._counts.append(active)

    def _thin(self) -> None:
        half = self._capacity // 2
        times, counts = self._times, self._counts
        self._times = array("d", times[0:half:2]) + times[half:]
        self._counts = (
            array("q", (max(counts[i], counts[i + 1]) for i in range(0, half, 2))) + counts[half:]
        )

    def points(self, since: float | None = None, until: float | None = None) -> list[list[float]]:
        """``[[at, active], ...]`` between ``since`` and ``until`` (inclusive), with the last
        point before ``since`` moved to ``since`` so the count at the window's start is known."""
        found: list[list[float]] = []
        count_before: int | None = None
        for at, active in self:
            if until is not None and at > until:
                break
            if since is not None and at < since:
                count_before = active
                continue
            found.append([at, active])
        if since is not None and count_before is not None and (not found or found[0][0] > since):
            found.insert(0, [since, count_before])
        return found
