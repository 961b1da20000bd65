"""The in-flight registry: per-thread shards that add up to exact counts."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from drainwatch import _inflight, _shutdown
from drainwatch._inflight import ABORTED_AT_SHUTDOWN, OK, InflightRegistry


@pytest.fixture(autouse=True)
def shutdown_state(monkeypatch: pytest.MonkeyPatch) -> _shutdown.ShutdownState:
    """A shutdown state of the test's own, which sends nothing."""
    state = _shutdown.ShutdownState()
    monkeypatch.setattr(_shutdown, "STATE", state)
    monkeypatch.setattr(_shutdown, "_emit", lambda: None)  # build records, send nothing
    return state


def _record(registry: InflightRegistry, method: str = "/pay.Payments/Charge") -> dict[str, Any]:
    return registry.stats("grpc", method).record()


def test_requests_from_many_threads_at_once_are_all_counted() -> None:
    """8 threads each start and finish 5,000 requests of one method at the same time:
    nothing is lost, and the durations add up to the requests."""
    registry = InflightRegistry()
    stats = registry.stats("grpc", "/pay.Payments/Charge")
    go = threading.Event()

    def serve() -> None:
        go.wait(5)
        for _ in range(5_000):
            registry.finish(stats, registry.start(stats), OK)

    threads = [threading.Thread(target=serve) for _ in range(8)]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(30)
    record = _record(registry)
    assert record["active"] == 0
    assert record["outcomes"] == {**dict.fromkeys(_inflight.OUTCOMES, 0), OK: 40_000}
    duration = record["duration"]
    assert isinstance(duration, dict) and duration["count"] == 40_000


def test_a_request_that_ends_on_another_thread_still_ends() -> None:
    """Started on one thread and finished on another (a stream consumed elsewhere): the
    method reads 1 in flight between the two and 0 after."""
    registry = InflightRegistry()
    stats = registry.stats("grpc", "/pay.Payments/Watch")
    started: list[float] = []
    starter = threading.Thread(target=lambda: started.append(registry.start(stats)))
    starter.start()
    starter.join(5)
    assert stats.active() == 1
    finisher = threading.Thread(target=lambda: registry.finish(stats, started[0], OK))
    finisher.start()
    finisher.join(5)
    assert stats.active() == 0
    assert registry.active() == 0


def test_threads_beyond_the_shard_cap_share_one_shard_and_nothing_is_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With room for 2 shards, 6 threads still count every request: those over the cap
    share one shard under the lock."""
    monkeypatch.setattr(_inflight, "MAX_SHARDS", 2)
    registry = InflightRegistry()
    stats = registry.stats("http", "GET /orders")
    barrier = threading.Barrier(6)

    def serve() -> None:
        barrier.wait(5)
        for _ in range(2_000):
            registry.finish(stats, registry.start(stats), OK)

    threads = [threading.Thread(target=serve) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(stats.shards) == 3  # two threads' own, and the shared one
    record = stats.record()
    assert record["active"] == 0
    assert record["outcomes"] == {**dict.fromkeys(_inflight.OUTCOMES, 0), OK: 12_000}


def test_the_drain_is_complete_when_the_last_request_ends_on_any_thread(
    shutdown_state: _shutdown.ShutdownState,
) -> None:
    """During a shutdown, in flight reaches zero when the last of several requests ends,
    whichever thread it ends on; not before."""
    state = shutdown_state
    registry = InflightRegistry()
    stats = registry.stats("grpc", "/pay.Payments/Charge")
    started = [registry.start(stats) for _ in range(3)]
    state.note_signal(15)
    drain = state.steps[_shutdown.DRAIN]
    for begun in started[:2]:
        worker = threading.Thread(target=registry.finish, args=(stats, begun, OK))
        worker.start()
        worker.join(5)
        assert drain.finished is None
    registry.finish(stats, started[2], OK)
    assert drain.finished is not None


def test_what_was_cut_at_exit_counts_active_and_aborted_requests() -> None:
    """The exit record's in-flight figure: requests still active plus those the shutdown
    aborted, by protocol, from every thread's shard."""
    registry = InflightRegistry()
    charge = registry.stats("grpc", "/pay.Payments/Charge")
    orders = registry.stats("http", "GET /orders")
    registry.start(charge)
    registry.finish(charge, registry.start(charge), ABORTED_AT_SHUTDOWN)
    other = threading.Thread(target=registry.start, args=(orders,))
    other.start()
    other.join(5)
    assert registry.unfinished_by_protocol() == {"grpc": 2, "http": 1, "websocket": 0}
    assert registry.active_by_protocol() == {"grpc": 1, "http": 1, "websocket": 0}


class HeldRequests:
    """A ``PendingSource`` as an integration that labels requests when they end keeps one:
    requests in flight by label, counted into the registry's shard when they end."""

    def __init__(self) -> None:
        self.labels: list[str] = []

    def pending_count(self) -> int:
        return len(self.labels)

    def pending_by_stats(self, registry: InflightRegistry) -> dict[_inflight.MethodStats, int]:
        by_stats: dict[_inflight.MethodStats, int] = {}
        for label in self.labels:
            stats = registry.stats("http", label)
            by_stats[stats] = by_stats.get(stats, 0) + 1
        return by_stats

    def clear_pending(self) -> None:
        self.labels.clear()

    def end(self, registry: InflightRegistry, label: str, outcome: str) -> None:
        self.labels.remove(label)
        shard = registry.loop_shard(registry.stats("http", label))
        shard.started += 1
        shard.finish(_inflight.clock(), outcome)


def test_requests_a_source_holds_are_in_flight_everywhere_until_they_end(
    shutdown_state: _shutdown.ShutdownState,
) -> None:
    """Requests labelled when they end are in flight, under their labels, in the records,
    the totals, the exit figure and the drain check; a label not seen before gets its
    record; ending moves a request from the source to the counts, never lost or doubled."""
    registry = InflightRegistry()
    source = HeldRequests()
    registry.add_pending_source(source)
    registry.finish(
        registry.stats("http", "GET /orders/{id}"),
        registry.start(registry.stats("http", "GET /orders/{id}")),
        OK,
    )
    source.labels += ["GET /orders/{id}", "GET /orders/{id}", "POST /carts"]
    records = {record["method"]: record for record in registry.records()}
    assert {method: record["active"] for method, record in records.items()} == {
        "GET /orders/{id}": 2,
        "POST /carts": 1,
    }
    assert records["GET /orders/{id}"]["outcomes"][OK] == 1
    assert registry.active() == 3
    assert registry.active_by_protocol() == {"grpc": 0, "http": 3, "websocket": 0}
    assert registry.unfinished_by_protocol() == {"grpc": 0, "http": 3, "websocket": 0}

    shutdown_state.note_signal(15)
    drain = shutdown_state.steps[_shutdown.DRAIN]
    source.end(registry, "GET /orders/{id}", OK)
    source.end(registry, "POST /carts", ABORTED_AT_SHUTDOWN)
    finished_with_one_left = drain.finished
    source.end(registry, "GET /orders/{id}", OK)
    assert finished_with_one_left is None
    assert drain.finished is not None
    records = {record["method"]: record for record in registry.records()}
    assert {method: record["active"] for method, record in records.items()} == {
        "GET /orders/{id}": 0,
        "POST /carts": 0,
    }
    assert records["GET /orders/{id}"]["outcomes"][OK] == 3
    assert registry.unfinished_by_protocol() == {"grpc": 0, "http": 1, "websocket": 0}


def test_a_reset_forgets_held_requests_and_a_dead_source_counts_nothing() -> None:
    """A reset zeroes what sources hold (a request that ends later counts its start and
    end together); a source is held weakly, so one no longer alive adds nothing."""
    registry = InflightRegistry()
    source = HeldRequests()
    registry.add_pending_source(source)
    source.labels.append("GET /slow")
    assert registry.active() == 1
    registry.reset()
    assert registry.active() == 0
    source.labels.append("GET /slow")  # the request, still running, ends after the reset
    source.end(registry, "GET /slow", OK)
    (record,) = registry.records()
    assert (record["active"], record["outcomes"][OK]) == (0, 1)

    dropped = HeldRequests()
    dropped.labels.append("GET /gone")
    registry.add_pending_source(dropped)
    assert registry.active() == 1
    del dropped
    assert registry.active() == 0
