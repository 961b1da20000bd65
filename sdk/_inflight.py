"""Requests and RPCs in flight, per protocol and method, and how each one ended.

Framework integrations call ``start`` when a request is accepted and ``finish`` when it
ends. Both are cheap (one uncontended lock, a few integer updates) because they run on
every request; everything else (records, totals at exit) runs on rare paths.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import Any, Final

from . import _shutdown
from ._caps import CAPPED
from ._histogram import WAIT_BUCKETS, WaitHistogram
from ._protocol import MAX_NAME_CHARS, clip

PROTOCOLS: Final = ("grpc", "http", "websocket")
OK: Final = "ok"
ERROR: Final = "error"
CANCELLED: Final = "cancelled"
ABORTED_AT_SHUTDOWN: Final = "aborted_at_shutdown"
REJECTED_DRAINING: Final = "rejected_draining"
OUTCOMES: Final = (OK, ERROR, CANCELLED, ABORTED_AT_SHUTDOWN, REJECTED_DRAINING)

# Methods beyond this many per process are reported as "other": HTTP paths in particular
# can be unbounded when an integration cannot find a route template.
MAX_METHODS: Final = 500
OTHER_METHOD: Final = "other"


class MethodStats:
    """Counters for one (protocol, method); updated under the registry's lock."""

    __slots__ = ("active", "duration", "method", "outcomes", "protocol", "started_during_drain")

    def __init__(self, protocol: str, method: str) -> None:
        self.protocol = protocol
        self.method = method
        self.active = 0
        self.started_during_drain = 0
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.duration = WaitHistogram()

    def record(self) -> dict[str, Any]:
        return {
            "type": "inflight",
            "protocol": self.protocol,
            "method": self.method,
            "active": self.active,
            "started_during_drain": self.started_during_drain,
            "outcomes": dict(self.outcomes),
            "duration": self.duration.as_record(),
        }


class InflightRegistry:
    """All methods of this process. Thread-safe; ``start``/``finish`` never raise."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._methods: dict[tuple[str, str], MethodStats] = {}
        self._active_total = 0
        self.capped = 0

    def stats(self, protocol: str, method: str) -> MethodStats:
        """The stats object for a method; integrations cache it per method."""
        key = (protocol, method)
        stats = self._methods.get(key)
        if stats is not None:
            return stats
        with self._lock:
            stats = self._methods.get(key)
            if stats is None:
                if len(self._methods) >= MAX_METHODS:
                    self.capped += 1
                    CAPPED.note("methods")
                    key = (protocol, OTHER_METHOD)
                    stats = self._methods.get(key)
                if stats is None:
                    stats = self._methods[key] = MethodStats(protocol, clip(key[1], MAX_NAME_CHARS))
            return stats

    # start() and finish() run on every request: they take the lock with acquire() and
    # release() rather than a with statement, which costs about twice as much in CPython.

    def start(self, stats: MethodStats) -> float:
        """A request was accepted; returns its start time for ``finish``."""
        lock = self._lock
        lock.acquire()
        try:
            stats.active += 1
            self._active_total += 1
            if _shutdown.STATE.shutting_down:
                stats.started_during_drain += 1
        finally:
            lock.release()
        return time.perf_counter()

    def finish(self, stats: MethodStats, started: float, outcome: str) -> None:
        """A request ended with ``outcome`` (one of ``OUTCOMES``)."""
        elapsed = time.perf_counter() - started
        lock = self._lock
        lock.acquire()
        try:
            stats.active -= 1
            self._active_total -= 1
            stats.outcomes[outcome] += 1
            duration = stats.duration  # WaitHistogram.observe, inlined: this runs per request
            duration.counts[bisect_left(WAIT_BUCKETS, elapsed)] += 1
            duration.total += elapsed
            drained = self._active_total == 0
        finally:
            lock.release()
        if drained and _shutdown.STATE.shutting_down:
            _shutdown.STATE.inflight_reached_zero()

    def reject(self, stats: MethodStats) -> None:
        """A request refused because the process is draining (never started)."""
        with self._lock:
            stats.outcomes[REJECTED_DRAINING] += 1
            if _shutdown.STATE.shutting_down:
                stats.started_during_drain += 1

    def reset(self) -> None:
        """Zero every count (tests, and a forked child that starts its own life).

        The stats objects stay: integrations hold on to them per method.
        """
        with self._lock:
            for stats in self._methods.values():
                stats.active = 0
                stats.started_during_drain = 0
                stats.outcomes = dict.fromkeys(OUTCOMES, 0)
                stats.duration = WaitHistogram()
            self._active_total = 0
            self.capped = 0

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread may have held it), zero counts."""
        self._lock = threading.Lock()
        self.reset()

    def active(self) -> int:
        return self._active_total

    def active_by_protocol(self) -> dict[str, int]:
        with self._lock:
            totals = dict.fromkeys(PROTOCOLS, 0)
            for stats in self._methods.values():
                totals[stats.protocol] = totals.get(stats.protocol, 0) + stats.active
            return totals

    def unfinished_by_protocol(self) -> dict[str, int]:
        """Requests the shutdown cut off: still active now, or aborted at shutdown."""
        with self._lock:
            totals = dict.fromkeys(PROTOCOLS, 0)
            for stats in self._methods.values():
                cut = stats.active + stats.outcomes[ABORTED_AT_SHUTDOWN]
                totals[stats.protocol] = totals.get(stats.protocol, 0) + cut
            return totals

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [stats.record() for stats in self._methods.values()]


def aborted_or_cancelled() -> str:
    """The outcome of a request cut short: by the shutdown once it began, else by the peer."""
    return ABORTED_AT_SHUTDOWN if _shutdown.STATE.shutting_down else CANCELLED


REGISTRY = InflightRegistry()
