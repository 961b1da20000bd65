"""``ThreadChannel`` against ``queue.Queue``: a bounded handoff between two threads.

The clock starts when a barrier releases both threads and stops when the consumer
has taken the last item; thread start-up and join stay outside it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

import drainwatch

from .figure import Figure, ratio_figure
from .measure import Sample, alternate

HANDOFF_MAXSIZE = 16
_JOIN_TIMEOUT_SECONDS = 60.0


class _BlockingQueue(Protocol):
    def put(self, item: int, block: bool = True, timeout: float | None = None) -> None: ...
    def get(self, block: bool = True, timeout: float | None = None) -> int: ...


QueueFactory = Callable[[int], _BlockingQueue]


def _stdlib_queue(maxsize: int) -> _BlockingQueue:
    return queue.Queue(maxsize)


def _thread_channel(maxsize: int) -> _BlockingQueue:
    return drainwatch.ThreadChannel("bench", maxsize)


def _handoffs(factory: QueueFactory, items: int) -> Sample:
    def sample() -> float:
        channel = factory(HANDOFF_MAXSIZE)
        started: list[int] = []
        finished: list[int] = []
        # The barrier's action runs once both threads arrived, just before it releases them.
        start = threading.Barrier(2, action=lambda: started.append(time.perf_counter_ns()))

        def produce() -> None:
            put = channel.put
            start.wait()
            for item in range(items):
                put(item)

        def consume() -> None:
            get = channel.get
            start.wait()
            for _ in range(items):
                get()
            finished.append(time.perf_counter_ns())

        threads = [
            threading.Thread(target=produce, name="bench-producer", daemon=True),
            threading.Thread(target=consume, name="bench-consumer", daemon=True),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(_JOIN_TIMEOUT_SECONDS)
        if not finished:
            raise RuntimeError(f"thread handoff of {items} items did not finish")
        return (finished[0] - started[0]) / items

    return sample


def thread_handoff(items: int, rounds: int) -> Figure:
    """Figure 3: producer thread ``put``, consumer thread ``get``, bounded."""
    comparison = alternate(
        _handoffs(_stdlib_queue, items), _handoffs(_thread_channel, items), rounds
    )
    return ratio_figure(
        f"ThreadChannel thread handoff (maxsize={HANDOFF_MAXSIZE})",
        comparison,
        baseline="queue.Queue",
        candidate="ThreadChannel",
        unit="item",
        budget=1.0,
        note=f"{items} items per sample, one producer and one consumer thread",
    )
