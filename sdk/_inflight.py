"""Requests and RPCs in flight, per protocol and method, and how each one ended.

Framework integrations call ``start`` when a request is accepted and ``finish`` when it
ends. Both run on every request, so they take no lock: each thread counts into a shard of
its own (per method), which no other thread writes, and readers (the reporter thread, the
exit record, the drain check) add the shards up. A request may end on another thread than
the one it started on: its shards then read +1 and -1, and the sum is right. An
integration whose requests start and finish on one thread (an event loop's) takes its
thread's shard once per request (``shard``) and counts into it directly. Everything else
(records, totals at exit) runs on rare paths, under the registry's lock.

This relies on the GIL, as CPython 3.11 to 3.13 (default builds) have it: a shard's
integers are only ever updated by the one thread that owns it, and read whole by others.
"""

from __future__ import annotations

import threading
import time
import weakref
from bisect import bisect_left
from typing import Any, Final, Protocol

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
# The outcomes of requests that ran (all but REJECTED_DRAINING), each with its durations.
_RAN: Final = (OK, ERROR, CANCELLED, ABORTED_AT_SHUTDOWN)
# Where an outcome's duration buckets start in ``Shard.counts``.
OUTCOME_BASE: Final = {outcome: index * _BUCKETS for index, outcome in enumerate(_RAN)}
OK_BASE: Final = OUTCOME_BASE[OK]
ERROR_BASE: Final = OUTCOME_BASE[ERROR]
# Shards per method: one per thread that served it. Threads beyond this many (a pool that
# keeps replacing its threads) share one shard, under the registry's lock.
MAX_SHARDS: Final = 256
_SHARED: Final = -1


class Shard:
    """One thread's counts for one method. Only that thread writes them.

    A request that ends adds one to a single count, that of its outcome and its duration
    bucket: ``counts[OUTCOME_BASE[outcome] + bisect_left(WAIT_BUCKETS, seconds)]``. The
    outcome totals, the duration histogram and the number of requests ended are sums of
    these, and the requests in flight are ``started`` less those ended, so the per-request
    path writes two counts and a sum, and readers do the adding up.
    """

    __slots__ = ("counts", "registry", "rejected", "started", "started_during_drain", "total")

    def __init__(self, registry: InflightRegistry) -> None:
        self.registry = registry
        self.started = 0
        self.started_during_drain = 0
        self.rejected = 0
        self.counts = [0] * (len(_RAN) * _BUCKETS)
        self.total = 0.0  # seconds, all requests ended

    def start(self) -> float:
        """A request was accepted; returns its start time for ``finish``."""
        self.started += 1
        if _shutdown.STATE.shutting_down:
            self.started_during_drain += 1
        return _clock()

    def finish(self, started: float, outcome: str) -> None:
        """A request ended with ``outcome`` (one of ``OUTCOMES`` but ``REJECTED_DRAINING``)."""
        elapsed = _clock() - started
        self.counts[OUTCOME_BASE[outcome] + bisect_left(WAIT_BUCKETS, elapsed)] += 1
        self.total += elapsed
        if _shutdown.STATE.shutting_down:
            self.registry.check_drained()

    def reject(self) -> None:
        """A request refused because the process is draining (never started)."""
        self.rejected += 1
        if _shutdown.STATE.shutting_down:
            self.started_during_drain += 1

    def ended(self) -> int:
        return sum(list(self.counts))

    def active(self) -> int:
        # Ended first: a request that ends meanwhile is then still counted as active, never
        # as ended before it started.
        ended = self.ended()
        return self.started - ended


class _SharedShard(Shard):
    """The shard of the threads over ``MAX_SHARDS``: they take turns, under a lock."""

    __slots__ = ("lock",)

    def __init__(self, registry: InflightRegistry) -> None:
        super().__init__(registry)
        self.lock = threading.Lock()

    def start(self) -> float:
        with self.lock:
            return super().start()

    def finish(self, started: float, outcome: str) -> None:
        with self.lock:
            super().finish(started, outcome)

    def reject(self) -> None:
        with self.lock:
            super().reject()


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
        """In flight as its shards count it; the registry adds what ``PendingSource``s hold."""
        return sum(shard.active() for shard in list(self.shards.values()))

    def record(self, pending: int = 0) -> dict[str, Any]:
        """The counts as a record; ``pending``: its requests in flight that a
        ``PendingSource`` holds, not yet in the shards."""
        started = started_during_drain = rejected = 0
        by_outcome_bucket = [0] * (len(_RAN) * _BUCKETS)
        total = 0.0
        for shard in list(self.shards.values()):
            # Ends read before starts (see ``Shard.active``).
            for index, count in enumerate(list(shard.counts)):
                by_outcome_bucket[index] += count
            total += shard.total
            rejected += shard.rejected
            started += shard.started
            started_during_drain += shard.started_during_drain
        outcomes = dict.fromkeys(OUTCOMES, 0)
        for outcome, base in OUTCOME_BASE.items():
            outcomes[outcome] = sum(by_outcome_bucket[base : base + _BUCKETS])
        outcomes[REJECTED_DRAINING] = rejected
        counts = [
            sum(by_outcome_bucket[base + bucket] for base in OUTCOME_BASE.values())
            for bucket in range(_BUCKETS)
        ]
        ended = sum(counts)
        return {
            "type": "inflight",
            "protocol": self.protocol,
            "method": self.method,
            "active": started - ended + pending,
            "started_during_drain": started_during_drain,
            "outcomes": outcomes,
            # A sum read a request ahead of its bucket is corrected by the next record.
            "duration": {"counts": counts, "sum": total, "count": ended},
        }


class PendingSource(Protocol):
    """Requests in flight that an integration labels when they end: it counts each one's
    start and end into its shard together, when it ends, and readers ask the source for
    those still running. Its methods run on the readers' threads."""

    def pending_count(self) -> int:
        """How many requests are in flight."""

    def pending_by_stats(self, registry: InflightRegistry) -> dict[MethodStats, int]:
        """The requests in flight by the stats (of ``registry``) each will count into."""

    def clear_pending(self) -> None:
        """Forget the requests in flight (a reset); each still counts when it ends."""


class InflightRegistry:
    """All methods of this process. Thread-safe; ``start``/``finish`` never raise."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._methods: dict[tuple[str, str], MethodStats] = {}
        # Held weakly: a source lives as long as its integration, or a request it holds.
        self._pending_sources: weakref.WeakSet[PendingSource] = weakref.WeakSet()
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

    def shard(self, stats: MethodStats) -> Shard:
        """The calling thread's shard of ``stats``. An integration whose requests start and
        finish on one thread (an event loop's) counts into it directly: ``shard.start()``,
        then ``shard.finish(started, outcome)`` on the same thread. It may keep the shard
        for that thread's next requests as long as ``shard.registry is REGISTRY``: a reset
        retires it (its registry becomes ``RETIRED``)."""
        shard = stats.shards.get(_thread_id())
        if shard is None:
            shard = self._new_shard(stats)
        return shard

    def loop_shard(self, stats: MethodStats) -> Shard:
        """The calling thread's own shard of ``stats``, never the shared one: for an
        integration that writes the counts itself, unlocked (``shard.started += 1``, ...),
        as only an event loop's thread may. There are few such threads, so they get a
        shard of their own even past ``MAX_SHARDS``. Kept as ``shard`` says."""
        ident = _thread_id()
        shard = stats.shards.get(ident)
        if shard is None:
            with self._lock:
                shard = stats.shards.get(ident)
                if shard is None:
                    shard = stats.shards[ident] = Shard(self)
        return shard

    def start(self, stats: MethodStats) -> float:
        """A request was accepted; returns its start time for ``finish``."""
        shard = stats.shards.get(_thread_id())
        if shard is None:
            shard = self._new_shard(stats)
        return shard.start()

    def finish(self, stats: MethodStats, started: float, outcome: str) -> None:
        """A request ended with ``outcome`` (one of ``OUTCOMES``), on any thread: the
        count goes into that thread's shard."""
        shard = stats.shards.get(_thread_id())
        if shard is None:
            shard = self._new_shard(stats)
        shard.finish(started, outcome)

    def _new_shard(self, stats: MethodStats) -> Shard:
        """The calling thread's first request of a method: a shard of its own, or the
        shared one once the method has ``MAX_SHARDS``."""
        ident = _thread_id()
        with self._lock:
            shard = stats.shards.get(ident)
            if shard is not None:
                return shard
            if len(stats.shards) < MAX_SHARDS:
                shard = stats.shards[ident] = Shard(self)
                return shard
            shard = stats.shards.get(_SHARED)
            if shard is None:
                shard = stats.shards[_SHARED] = _SharedShard(self)
            return shard

    def add_pending_source(self, source: PendingSource) -> None:
        """Count the requests ``source`` holds as in flight, while it lives."""
        with self._lock:
            self._pending_sources.add(source)

    def _sources(self) -> list[PendingSource]:
        with self._lock:
            return list(self._pending_sources)

    def _pending(self) -> dict[MethodStats, int]:
        """The requests in flight that sources hold, by stats (made here for new labels)."""
        totals: dict[MethodStats, int] = {}
        for source in self._sources():
            for stats, count in source.pending_by_stats(self).items():
                totals[stats] = totals.get(stats, 0) + count
        return totals

    def check_drained(self) -> None:
        """Called by each request's finish while shutting down, after its own count went
        down: whichever ends last sees every other count down too."""
        if self.active() == 0:
            _shutdown.STATE.inflight_reached_zero()

    def reject(self, stats: MethodStats) -> None:
        """A request refused because the process is draining (never started)."""
        self.shard(stats).reject()

    def reset(self) -> None:
        """Zero every count (tests, and a forked child that starts its own life).

        The stats objects stay: integrations hold on to them per method.
        """
        with self._lock:
            for source in list(self._pending_sources):
                source.clear_pending()
            for stats in self._methods.values():
                for shard in stats.shards.values():
                    # Whoever kept this shard (see ``shard``) sees it is no longer this
                    # registry's and takes a new one.
                    shard.registry = RETIRED
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
        # Sources first, shards second: a request that ends in between is still counted by
        # this one read, never missed, so the drain is never declared early.
        pending = sum(source.pending_count() for source in self._sources())
        return pending + sum(stats.active() for stats in self._all())

    def active_by_protocol(self) -> dict[str, int]:
        totals = dict.fromkeys(PROTOCOLS, 0)
        pending = self._pending()
        for stats in self._all():
            active = stats.active() + pending.get(stats, 0)
            totals[stats.protocol] = totals.get(stats.protocol, 0) + active
        return totals

    def unfinished_by_protocol(self) -> dict[str, int]:
        """Requests the shutdown cut off: still active now, or aborted at shutdown."""
        totals = dict.fromkeys(PROTOCOLS, 0)
        pending = self._pending()
        for stats in self._all():
            record = stats.record(pending.get(stats, 0))
            cut = record["active"] + record["outcomes"][ABORTED_AT_SHUTDOWN]
            totals[stats.protocol] = totals.get(stats.protocol, 0) + cut
        return totals

    def records(self) -> list[dict[str, Any]]:
        pending = self._pending()
        return [stats.record(pending.get(stats, 0)) for stats in self._all()]


def aborted_or_cancelled() -> str:
    """The outcome of a request cut short: by the shutdown once it began, else by the peer."""
    return ABORTED_AT_SHUTDOWN if _shutdown.STATE.shutting_down else CANCELLED


_thread_id = threading.get_ident
_clock = time.perf_counter
# The clock of ``Shard.start``/``finish``, for integrations that count into a shard inline.
clock: Final = _clock

REGISTRY = InflightRegistry()
# The registry of shards a reset dropped, and of the shard an integration holds before its
# first request: never ``REGISTRY``, so a holder takes a new shard.
RETIRED: Final = InflightRegistry()
UNSET_SHARD: Final = Shard(RETIRED)
