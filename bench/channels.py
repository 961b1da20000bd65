"""``Channel`` against ``asyncio.Queue``: the non-blocking pair and the awaited handoff.

Both sides run the same loop body with methods bound to locals, so the loop's own cost
is shared and as small as Python allows; it dilutes a ratio towards 1, never away from it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import drainwatch

from .figure import Figure, ratio_figure
from .measure import Sample, alternate

HANDOFF_MAXSIZE = 16


class _AsyncQueue(Protocol):
    def put_nowait(self, item: int) -> None: ...
    def get_nowait(self) -> int: ...
    async def put(self, item: int) -> None: ...
    async def get(self) -> int: ...


QueueFactory = Callable[[int], _AsyncQueue]


def _stdlib_queue(maxsize: int) -> _AsyncQueue:
    return asyncio.Queue(maxsize)


def _channel(maxsize: int) -> _AsyncQueue:
    return drainwatch.Channel("bench", maxsize)


def _nowait_pairs(factory: QueueFactory, pairs: int) -> Sample:
    def sample() -> float:
        queue = factory(0)
        put, get = queue.put_nowait, queue.get_nowait
        started = time.perf_counter_ns()
        for item in range(pairs):
            put(item)
            get()
        return (time.perf_counter_ns() - started) / pairs

    return sample


async def _handoff(queue: _AsyncQueue, items: int) -> int:
    async def produce() -> None:
        put = queue.put
        for item in range(items):
            await put(item)

    async def consume() -> None:
        get = queue.get
        for _ in range(items):
            await get()

    started = time.perf_counter_ns()
    await asyncio.gather(produce(), consume())
    return time.perf_counter_ns() - started


def _handoffs(loop: asyncio.AbstractEventLoop, factory: QueueFactory, items: int) -> Sample:
    def sample() -> float:
        elapsed = loop.run_until_complete(_handoff(factory(HANDOFF_MAXSIZE), items))
        return elapsed / items

    return sample


def nowait_pair(pairs: int, rounds: int) -> Figure:
    """Figure 1: ``put_nowait`` + ``get_nowait`` on an unbounded queue."""
    comparison = alternate(
        _nowait_pairs(_stdlib_queue, pairs), _nowait_pairs(_channel, pairs), rounds
    )
    return ratio_figure(
        "Channel put_nowait+get_nowait",
        comparison,
        baseline="asyncio.Queue",
        candidate="Channel",
        unit="pair",
        budget=1.0,
        note=f"{pairs} pairs per sample",
    )


def awaited_handoff(items: int, rounds: int) -> Figure:
    """Figure 2: a producer task awaiting ``put`` and a consumer awaiting ``get``."""
    loop = asyncio.new_event_loop()
    try:
        comparison = alternate(
            _handoffs(loop, _stdlib_queue, items), _handoffs(loop, _channel, items), rounds
        )
    finally:
        loop.close()
    return ratio_figure(
        f"Channel awaited handoff (maxsize={HANDOFF_MAXSIZE})",
        comparison,
        baseline="asyncio.Queue",
        candidate="Channel",
        unit="item",
        budget=1.1,
        note=f"{items} items per sample, one producer and one consumer task",
    )
