"""The SDK's steady timestamps: the wall clock read once, then the monotonic clock."""

from __future__ import annotations

from drainwatch._clock import SteadyClock


class Clocks:
    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.monotonic = 50.0


def test_timestamps_follow_the_monotonic_clock_after_the_first_reading() -> None:
    """A wall clock stepped by an hour moves no timestamp; elapsed monotonic time does."""
    clocks = Clocks()
    steady = SteadyClock(lambda: clocks.wall, lambda: clocks.monotonic)
    first = steady()
    assert first == clocks.wall
    clocks.wall += 3600
    clocks.monotonic += 0.5
    assert steady() - first == 0.5
    clocks.wall -= 7200
    clocks.monotonic += 1.0
    assert steady() - first == 1.5


def test_nothing_is_read_before_the_first_call() -> None:
    """Creating the clock reads no clock: the SDK does nothing at import time."""
    read: list[str] = []

    def wall() -> float:
        read.append("wall")
        return 0.0

    def monotonic() -> float:
        read.append("monotonic")
        return 0.0

    steady = SteadyClock(wall, monotonic)
    assert read == []
    steady()
    assert read == ["wall", "monotonic", "monotonic"]
