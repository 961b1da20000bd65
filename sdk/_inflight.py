"""Requests and RPCs in flight, per protocol and method, and how each one ended.

Framework integrations call ``start`` when a request is accepted and ``finish`` when it
ends. Both run on every request, so they take no lock: each thread counts into a shard of
its own (per method), which no other thread writes, and readers (the reporter thread, the
exit record, the drain check) add the shards up. A request may end on another thread than
the one it started on: its shards then read +1 and -1, and the sum is right. Everything
else (records, totals at exit) runs on rare paths, under the registry's lock.

This relies on the GIL, as CPython 3.11 to 3.13 (default builds) have it: a shard's
integers are only ever updated by the one thread that owns it, and read whole by others.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import Any, Final

from . import _shutdown
from ._caps import CAPPED
from ._histogram import WAIT_BUCKETS
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


_BUCKETS: Final = len(WAIT_BUCKETS) + 1
# Shards per method: one per thread that served it. Threads beyond this many (a pool that
# keeps replacing its threads) share one shard, under the registry's lock.
MAX_SHARDS: Final = 256
_SHARED: Final = -1


class Shard:
    """One thread's counts for one method. Only that thread writes them."""

    __slots__ = ("active", "counts", "outcomes", "started_during_drain", "total")

    def __init__(self) -> None:
        self.active = 0
        self.started_during_drain = 0
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.counts = [0] * _BUCKETS  # request durations, one bucket per WAIT_BUCKETS bound
        self.total = 0.0


class MethodStats:
    """The counts of one (protocol, method), as shards by thread; integrations keep it per
    method and hand it to ``start``/``finish``."""

    __slots__ = ("method", "protocol", "shards")

    def __init__(self, protocol: str, method: str) -> None:
        self.protocol = protocol
        self.method = method
        # thread ident -> that thread's shard; _SHARED -> the shard of the threads over cap
        self.shards: dict[int, Shard] = {}

    def active(self) -> int:
        return sum(shard.active for shard in list(self.shards.values()))

    def record(self) -> dict[str, Any]:
        active = started_during_drain = 0
        outcomes = dict.fromkeys(OUTCOMES, 0)
        counts = [0] * _BUCKETS
        total = 0.0
        for shard in list(self.shards.values()):
            active += shard.active
            started_during_drain += shard.started_during_drain
            for outcome, count in list(shard.outcomes.items()):
                outcomes[outcome] += count
            for bucket, count in enumerate(list(shard.counts)):
                counts[bucket] += count
            total += shard.total
        return {
            "type": "inflight",
            "protocol": self.protocol,
            "method": self.method,
            "active": active,
            "started_during_drain": started_during_drain,
            "outcomes": outcomes,
            # A sum read a request ahead of its bucket is corrected by the next record.
            "duration": {"counts": counts, "sum": total, "count": sum(counts)},
        }


class InflightRegistry:
    """All methods of this process. Thread-safe; ``start``/``finish`` never raise."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._methods: dict[tuple[str, str], MethodStats] = {}
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

    def start(self, stats: MethodStats) -> float:
        """A request was accepted; returns its start time for ``finish``."""
        shard = stats.shards.get(_thread_id())
        if shard is None:
            return self._start_slowly(stats)
        shard.active += 1
        if _shutdown.STATE.shutting_down:
            shard.started_during_drain += 1
        return _clock()

    def finish(self, stats: MethodStats, started: float, outcome: str) -> None:
        """A request ended with ``outcome`` (one of ``OUTCOMES``)."""
        elapsed = _clock() - started
        shard = stats.shards.get(_thread_id())
        if shard is None:
            self._finish_slowly(stats, elapsed, outcome)
            return
        shard.active -= 1
        shard.outcomes[outcome] += 1
        shard.counts[bisect_left(WAIT_BUCKETS, elapsed)] += 1
        shard.total += elapsed
        if _shutdown.STATE.shutting_down:
            self._check_drained()

    # -- rare paths: a thread's first request of a method, threads over the cap ------------------

    def _shard(self, stats: MethodStats) -> tuple[Shard, bool]:
        """(the calling thread's shard, whether it is the shared one: then hold the lock)."""
        ident = _thread_id()
        with self._lock:
            shard = stats.shards.get(ident)
            if shard is not None:
                return shard, False
            if len(stats.shards) < MAX_SHARDS:
                shard = stats.shards[ident] = Shard()
                return shard, False
            shard = stats.shards.get(_SHARED)
            if shard is None:
                shard = stats.shards[_SHARED] = Shard()
            return shard, True

    def _start_slowly(self, stats: MethodStats) -> float:
        shard, shared = self._shard(stats)
        if shared:
            with self._lock:
                shard.active += 1
                if _shutdown.STATE.shutting_down:
                    shard.started_during_drain += 1
            return _clock()
        return self.start(stats)

    def _finish_slowly(self, stats: MethodStats, elapsed: float, outcome: str) -> None:
        shard, shared = self._shard(stats)
        lock = self._lock if shared else None
        if lock is not None:
            lock.acquire()
        try:
            shard.active -= 1
            shard.outcomes[outcome] += 1
            shard.counts[bisect_left(WAIT_BUCKETS, elapsed)] += 1
            shard.total += elapsed
        finally:
            if lock is not None:
                lock.release()
        if _shutdown.STATE.shutting_down:
            self._check_drained()

    def _check_drained(self) -> None:
        # Each request's finish checks after its own count went down: whichever ends last
        # sees every other count down too.
        if self.active() == 0:
            _shutdown.STATE.inflight_reached_zero()

    def reject(self, stats: MethodStats) -> None:
        """A request refused because the process is draining (never started)."""
        shard, _ = self._shard(stats)
        with self._lock:
            shard.outcomes[REJECTED_DRAINING] += 1
            if _shutdown.STATE.shutting_down:
                shard.started_during_drain += 1

    def reset(self) -> None:
        """Zero every count (tests, and a forked child that starts its own life).

        The stats objects stay: integrations hold on to them per method.
        """
        with self._lock:
            for stats in self._methods.values():
                stats.shards = {}
            self.capped = 0

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread may have held it), zero counts."""
        self._lock = threading.Lock()
        self.reset()

    def _all(self) -> list[MethodStats]:
        with self._lock:
            return list(self._methods.values())

    def active(self) -> int:
        return sum(stats.active() for stats in self._all())

    def active_by_protocol(self) -> dict[str, int]:
        totals = dict.fromkeys(PROTOCOLS, 0)
        for stats in self._all():
            totals[stats.protocol] = totals.get(stats.protocol, 0) + stats.active()
        return totals

    def unfinished_by_protocol(self) -> dict[str, int]:
        """Requests the shutdown cut off: still active now, or aborted at shutdown."""
        totals = dict.fromkeys(PROTOCOLS, 0)
        for stats in self._all():
            record = stats.record()
            cut = record["active"] + record["outcomes"][ABORTED_AT_SHUTDOWN]
            totals[stats.protocol] = totals.get(stats.protocol, 0) + cut
        return totals

    def records(self) -> list[dict[str, Any]]:
        return [stats.record() for stats in self._all()]


def aborted_or_cancelled() -> str:
    """The outcome of a request cut short: by the shutdown once it began, else by the peer."""
    return ABORTED_AT_SHUTDOWN if _shutdown.STATE.shutting_down else CANCELLED


_thread_id = threading.get_ident
_clock = time.perf_counter

REGISTRY = InflightRegistry()
