"""Timestamps that never jump: the wall clock read once, then advanced by the monotonic clock.

Every timestamp the SDK reports (channel created/closed/drained, signals, shutdown steps,
listeners, readiness, exit) comes from ``steady_time()``: Unix seconds, equal to the wall
clock when the process first asked, advanced since by ``time.monotonic()``. The agent
subtracts these timestamps to get durations (close to drained, signal to exit, the drain
waterfall) and orders events by them; a wall clock stepped by NTP, a VM resume or an
operator in the middle of a drain would otherwise stretch, shrink or reorder the drain. The
price: after a step, this process's timestamps are off by the step until it restarts.

Nothing happens at import time; the anchor is taken on the first call. Thread-safe: two
threads racing for the first call take two anchors microseconds apart, and the second wins.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SteadyClock:
    """``wall`` read once, then advanced by ``monotonic``; callable, returns Unix seconds."""

    __slots__ = ("_anchor", "_monotonic", "_wall")

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._anchor: tuple[float, float] | None = None

    def __call__(self) -> float:
        anchor = self._anchor
        if anchor is None:
            anchor = self._anchor = (self._wall(), self._monotonic())
        return anchor[0] + (self._monotonic() - anchor[1])


_STEADY = SteadyClock()


def steady_time() -> float:
    """Unix seconds that advance with the monotonic clock (see the module docstring)."""
    return _STEADY()
