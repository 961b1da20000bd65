"""A fixed-bucket histogram of wait durations, cheap enough to update on every wait."""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds in seconds, shared by the SDK and the agent (protocol v1). A wait that
# ends after close or after minutes is exactly what a drain investigation looks for,
# so the buckets reach far beyond what a healthy hand-off takes.
WAIT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


class WaitHistogram:
    """Counts of completed waits per bucket (non-cumulative, +Inf last), their sum and count.

    Updated by the thread or task that waited; read by the reporter thread. Each update
    is a few integer stores under the GIL, and the reporter tolerates reading a sum that
    is one observation ahead of the counts: the next snapshot corrects it.
    """

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(WAIT_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(WAIT_BUCKETS, seconds)] += 1
        self.total += seconds

    def as_record(self) -> dict[str, object]:
        counts = list(self.counts)
        return {"counts": counts, "sum": self.total, "count": sum(counts)}
