"""Event-loop lag: how late the loop runs a callback that is due, measured all the time.

A probe callback reschedules itself every ``probe_interval`` seconds (``loop.call_at``) and,
each time it runs, records how late it ran: the loop's scheduling delay, with no asyncio
debug mode. Lags go into a histogram (the protocol's wait buckets) and into the worst lag of
the last ``WINDOW_SECONDS``.

A loop blocked by synchronous code cannot say so until it is free again, by which time the
culprit is gone. So the reporter thread wakes when the pending probe becomes overdue by
``threshold`` (:meth:`LagMonitor.next_check`) and, if it has still not run, reads the loop
thread's current frame (``sys._current_frames()``) while the block is still going on: that
stack is the blocking code. A block longer than the probe interval plus the threshold is
always seen while it lasts. When the probe finally runs, the stall is closed with its real
duration. A block that holds the GIL the whole time (a C extension) leaves the reporter no
chance to look: the stall is still recorded when the probe runs, without a stack.

Each probe is a wakeup of an idle loop, and each check one of the reporter thread: the
probe interval is the threshold (100 ms by default), so an idle service wakes some 20 times
a second for them (``docs/performance.md`` has what that costs).

Thread safety: ``_tick``, ``pause`` and ``resume`` run on the loop's thread; ``check`` and
``fields`` on the reporter's. They share a lock held for a few attribute updates.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ._frames import MAX_FRAMES, describe_frames, outward
from ._gc_pause import collections_paused
from ._histogram import WaitHistogram

WINDOW_SECONDS: Final = 60.0
_SLOTS: Final = 6  # the window in slots of 10 s, so the worst lag ages out in steps
MAX_STALLS: Final = 4  # the most recent stalls kept, with their stacks
MIN_PROBE_SECONDS: Final = 0.01
MAX_PROBE_SECONDS: Final = 0.25


def probe_interval(threshold: float) -> float:
    """The stall threshold, within bounds: a block is seen while it lasts once it is longer
    than twice that, and the lag is measured as finely."""
    return min(MAX_PROBE_SECONDS, max(MIN_PROBE_SECONDS, threshold))


@dataclass(slots=True)
class Stall:
    """A block longer than the threshold. Times: ``at`` wall clock, ``seconds`` its length
    (so far, while ``ongoing``)."""

    at: float
    started: float  # monotonic: when the overdue probe was due
    seconds: float
    ongoing: bool
    stack: list[str]

    def as_record(self, mono: float) -> dict[str, Any]:
        seconds = max(self.seconds, mono - self.started) if self.ongoing else self.seconds
        return {
            "at": self.at,
            "seconds": round(seconds, 6),
            "ongoing": self.ongoing,
            "stack": list(self.stack),
        }


class LagMonitor:
    """Probes one loop. Create and ``start`` it on the loop's thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.threshold = threshold
        self.interval = probe_interval(threshold)
        self.thread_id = threading.get_ident()
        self.histogram = WaitHistogram()
        self.stalls_total = 0
        self._loop = loop
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._due = clock()
        self._handle: asyncio.TimerHandle | None = None
        self._paused = False
        self._stopped = False
        self._stall: Stall | None = None
        self._stalls: deque[Stall] = deque(maxlen=MAX_STALLS)
        self._slot_max = [0.0] * _SLOTS
        self._slot_epoch = [-1] * _SLOTS

    def start(self) -> None:
        """Schedule the first probe; call on the loop's thread."""
        self._due = self._clock() + self.interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        """No more probes (thread-safe): the pending one does nothing when it runs."""
        self._stopped = True

    def _tick(self) -> None:
        now = self._clock()
        with self._lock:
            lag = max(0.0, now - self._due)
            self.histogram.observe(lag)
            self._note_max(now, lag)
            stall = self._stall
            if stall is not None:
                stall.seconds, stall.ongoing = lag, False
                self._stall = None
            elif lag > self.threshold:
                # Nobody looked while it lasted: the block held the GIL (or the reporter
                # could not run); its length is known, its code is not.
                self._stalls.append(Stall(self._wall() - lag, self._due, lag, False, []))
                self.stalls_total += 1
            if self._stopped:
                return
            self._due = now + self.interval
        try:
            self._handle = self._loop.call_at(self._due, self._tick)
        except RuntimeError:  # the loop is closing: nothing left to probe
            self._stopped = True

    def _note_max(self, now: float, lag: float) -> None:
        epoch = int(now // (WINDOW_SECONDS / _SLOTS))
        slot = epoch % _SLOTS
        if self._slot_epoch[slot] != epoch:
            self._slot_epoch[slot], self._slot_max[slot] = epoch, 0.0
        self._slot_max[slot] = max(self._slot_max[slot], lag)

    def pause(self) -> None:
        """The loop stopped running (``run_until_complete`` returned): time spent stopped is
        not lag. Called on the loop's thread."""
        with self._lock:
            self._paused = True
            self._stall = None

    def resume(self) -> None:
        """The loop runs again: the pending probe counts from now."""
        with self._lock:
            self._paused = False
            self._due = max(self._due, self._clock())

    def next_check(self) -> float:
        """When (``time.monotonic()``) the pending probe is overdue by the threshold: the
        moment to look for a stall. Later while a stall's stack is already taken."""
        with self._lock:
            if self._paused or self._stopped:
                return math.inf  # a stopped loop cannot stall; resuming wakes the reporter
            if self._stall is not None:
                return self._clock() + self.interval
            return self._due + self.threshold

    def check(self) -> None:
        """From the reporter thread: if the loop is blocked past the threshold right now,
        capture the blocking code's stack. Never raises."""
        now = self._clock()
        with self._lock:
            if self._paused or self._stopped or self._stall is not None:
                return
            overdue = now - self._due
            if overdue <= self.threshold:
                return
            with collections_paused():  # frame objects of the loop thread are made here
                frame = sys._current_frames().get(self.thread_id)
                stack = describe_frames(outward(frame, MAX_FRAMES))
            stall = Stall(self._wall() - overdue, self._due, overdue, True, stack)
            self._stall = stall
            self._stalls.append(stall)
            self.stalls_total += 1

    def fields(self) -> dict[str, Any]:
        """The lag part of a ``loop`` record (docs/protocol.md)."""
        now = self._clock()
        with self._lock:
            epoch = int(now // (WINDOW_SECONDS / _SLOTS))
            worst = max(
                (
                    value
                    for value, seen in zip(self._slot_max, self._slot_epoch, strict=True)
                    if epoch - seen < _SLOTS
                ),
                default=0.0,
            )
            if self._stall is not None and not self._paused:
                worst = max(worst, now - self._stall.started)
            return {
                "lag": self.histogram.as_record(),
                "lag_max": round(worst, 6),
                "threshold": self.threshold,
                "stalls_total": self.stalls_total,
                "stalls": [stall.as_record(now) for stall in self._stalls],
            }
