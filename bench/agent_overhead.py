"""Figure 5: channel churn with no agent listening against the same churn with an agent.

A missing agent must not cost the application anything: the SDK keeps packing records
either way, and the transport backs off instead of trying to connect on every event.
Both sides run in this process, reconfigured before each sample (outside the clock); the
agent side reports to a real agent subprocess, the other to a socket path nobody serves.

Each sample ends with ``drainwatch.flush(timeout=0)`` inside the clock. Without it the
comparison is unfair: the final records of collected channels are packed by the next
snapshot, which a refused close event hastens into the sample when no agent listens but
which lands after the sample when the agent accepts every event.
"""

from __future__ import annotations

import asyncio
import time

import drainwatch

from .agent_process import running_agent
from .figure import Figure, ratio_figure
from .measure import Sample, alternate

BUDGET_RATIO = 1.05
# Channels that stay open for the whole figure, as a service's long-lived queues would;
# every snapshot reports them.
LONG_LIVED_CHANNELS = 20


async def _churn(cycles: int) -> int:
    channel_type = drainwatch.Channel
    started = time.perf_counter_ns()
    for item in range(cycles):
        # Rebinding drops the previous channel, so its final "gone" record is included.
        channel: drainwatch.Channel[int] = channel_type("churn")
        channel.put_nowait(item)
        channel.get_nowait()
        channel.close()
    del channel
    drainwatch.flush(timeout=0)
    return time.perf_counter_ns() - started


def _churns(loop: asyncio.AbstractEventLoop, endpoint: str, cycles: int) -> Sample:
    def sample() -> float:
        drainwatch.configure(service="bench", endpoint=endpoint)
        return loop.run_until_complete(_churn(cycles)) / cycles

    return sample


def agent_overhead(cycles: int, rounds: int) -> Figure:
    """Create, put, get, close, drop: per-cycle cost without an agent / with one."""
    loop = asyncio.new_event_loop()
    try:
        with running_agent() as agent:
            absent = f"unix://{agent.workdir}/absent.sock"
            long_lived: list[drainwatch.Channel[int]] = [
                drainwatch.Channel(f"long-lived-{index}", 16)
                for index in range(LONG_LIVED_CHANNELS)
            ]
            try:
                comparison = alternate(
                    _churns(loop, agent.ingest, cycles), _churns(loop, absent, cycles), rounds
                )
            finally:
                drainwatch.configure(enabled=False)
                del long_lived
    finally:
        loop.close()
    return ratio_figure(
        "SDK churn, no agent vs agent",
        comparison,
        baseline="agent listening",
        candidate="no agent",
        unit="cycle",
        budget=BUDGET_RATIO,
        note=(
            f"{cycles} create/put/get/close/drop cycles per sample inside a running loop, "
            f"then a flush, with {LONG_LIVED_CHANNELS} long-lived channels open; the budget "
            f"allows {BUDGET_RATIO - 1:.0%} for the noise of a figure that involves two processes"
        ),
    )
