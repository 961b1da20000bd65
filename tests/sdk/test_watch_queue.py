"""``drainwatch.watch_queue``: instrument an existing stdlib queue in place."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import drainwatch
import pytest
from drainwatch import _runtime, watch_queue

from .conftest import Worker, needs_queue_shutdown, next_line, run, until, wait_until


def record_of(name: str) -> dict[str, Any]:
    """The snapshot record the reporter would send now for the watched queue ``name``."""
    records = [
        record
        for record in _runtime.current().snapshot_records()
        if record.get("name") == name and record.get("trigger") == "snapshot"
    ]
    assert len(records) == 1, records
    return records[0]


def shut_down(target: asyncio.Queue[Any] | queue.Queue[Any], immediate: bool = False) -> str:
    """Call the queue's native ``shutdown`` and return the ``file:line`` of that call."""
    where = f"{__file__}:{next_line()}"
    target.shutdown(immediate)  # type: ignore[union-attr,unused-ignore]
    return where


@pytest.mark.parametrize(
    "make",
    [asyncio.Queue, asyncio.LifoQueue, queue.Queue, queue.PriorityQueue, queue.LifoQueue],
    ids=lambda make: f"{make.__module__}.{make.__name__}",
)
def test_watch_queue_returns_the_same_queue(make: type[Any]) -> None:
    """The queue is instrumented in place: the very object passed in comes back."""
    target = make()
    assert watch_queue(target, "same") is target
    assert type(target) is make


def test_thread_queue_puts_gets_and_depth_are_counted() -> None:
    """A watched ``queue.Queue`` reports sent, received and depth, and still works as before."""
    target: queue.Queue[int] = watch_queue(queue.Queue(maxsize=5), "thread-counts")
    for item in range(4):
        target.put(item)
    target.put_nowait(4)
    with pytest.raises(queue.Full):
        target.put_nowait(99)
    assert [target.get(), target.get_nowait()] == [0, 1]
    record = record_of("thread-counts")
    assert record["kind"] == "thread_queue"
    assert record["capacity"] == 5
    assert record["sent"] == 5
    assert record["received"] == 2
    assert record["depth"] == 3


def test_asyncio_queue_puts_gets_and_depth_are_counted() -> None:
    """A watched ``asyncio.Queue`` reports sent, received and depth, and still works as before."""

    async def main() -> None:
        target: asyncio.Queue[str] = watch_queue(asyncio.Queue(), "async-counts")
        for item in "abc":
            await target.put(item)
        target.put_nowait("d")
        assert [await target.get(), target.get_nowait()] == ["a", "b"]
        record = record_of("async-counts")
        assert record["kind"] == "asyncio_queue"
        assert record["sent"] == 4
        assert record["received"] == 2
        assert record["depth"] == 2

    run(main())


def test_priority_queue_keeps_priority_order_and_is_counted() -> None:
    """Watching a ``PriorityQueue`` keeps its ordering and counts its traffic."""
    target: queue.PriorityQueue[int] = queue.PriorityQueue()
    watch_queue(target, "priority")
    for item in (5, 1, 3):
        target.put(item)
    assert [target.get() for _ in range(3)] == [1, 3, 5]
    record = record_of("priority")
    assert record["sent"] == 3
    assert record["received"] == 3
    assert record["depth"] == 0


def test_asyncio_queue_blocked_getters_are_reported_as_waiters() -> None:
    """``waiters.receive`` counts the coroutines blocked in a watched asyncio queue's ``get``."""

    async def main() -> None:
        target: asyncio.Queue[int] = watch_queue(asyncio.Queue(), "async-waiters")
        getters = [asyncio.create_task(target.get()) for _ in range(2)]
        assert await until(lambda: record_of("async-waiters")["waiters"]["receive"] == 2)
        target.put_nowait(1)
        target.put_nowait(2)
        assert sorted(await asyncio.wait_for(asyncio.gather(*getters), 1)) == [1, 2]
        assert record_of("async-waiters")["waiters"] == {"send": 0, "receive": 0}

    run(main())


def test_thread_queue_blocked_getters_are_reported_as_waiters() -> None:
    """``waiters.receive`` counts the threads blocked in a watched ``queue.Queue.get``."""
    target: queue.Queue[int] = watch_queue(queue.Queue(), "thread-waiters")
    getters = [Worker(target.get, name=f"getter-{index}") for index in range(2)]
    assert wait_until(lambda: record_of("thread-waiters")["waiters"]["receive"] == 2)
    target.put(1)
    target.put(2)
    assert all(worker.join(1) for worker in getters)
    assert sorted(worker.result for worker in getters) == [1, 2]
    assert record_of("thread-waiters")["waiters"] == {"send": 0, "receive": 0}


def test_watching_twice_is_a_no_op() -> None:
    """A second ``watch_queue`` returns the queue unchanged: one record, each put counted once."""
    target: queue.Queue[int] = queue.Queue()
    watch_queue(target, "first-name")
    assert watch_queue(target, "second-name") is target
    target.put(1)
    target.get()
    names = [record.get("name") for record in _runtime.current().snapshot_records()]
    assert "second-name" not in names
    record = record_of("first-name")
    assert record["sent"] == 1
    assert record["received"] == 1


@pytest.mark.parametrize(
    ("make", "type_name"),
    [
        (list, "list"),
        (lambda: None, "NoneType"),
        (queue.SimpleQueue, "SimpleQueue"),
        (lambda: drainwatch.ThreadChannel("already-a-channel"), "ThreadChannel"),
    ],
)
def test_watch_queue_refuses_other_objects_with_a_helpful_type_error(
    make: Callable[[], Any], type_name: str
) -> None:
    """Anything but an asyncio/queue ``Queue`` raises ``TypeError`` saying what to use."""
    target = make()
    with pytest.raises(
        TypeError,
        match=rf"takes an asyncio\.Queue or queue\.Queue, not {type_name}; use drainwatch\.Channel",
    ):
        watch_queue(target, "bad")


# -- Python 3.13+: the native shutdown() is recorded as a close --------------------------------


@needs_queue_shutdown
def test_asyncio_queue_shutdown_is_recorded_as_a_graceful_close() -> None:
    """``shutdown()`` on a watched asyncio queue records the close, residual items and drain."""

    async def main() -> None:
        target: asyncio.Queue[int] = watch_queue(asyncio.Queue(), "async-shutdown")
        target.put_nowait(1)
        target.put_nowait(2)

        async def stop() -> str:
            return shut_down(target)

        where = await asyncio.create_task(stop(), name="stopper")
        closed = record_of("async-shutdown")
        assert abs(closed["closed"] - time.time()) < 1
        assert closed["residual"] == 2
        assert closed["immediate"] is False
        assert closed["drained"] is None
        assert closed["closed_by"] == "task:stopper"
        assert closed["closed_where"] == where
        assert [await target.get(), target.get_nowait()] == [1, 2]
        drained = record_of("async-shutdown")
        assert drained["received"] == 2
        assert drained["drained"] is not None
        assert closed["closed"] <= drained["drained"]

    run(main())


@needs_queue_shutdown
def test_thread_queue_shutdown_is_recorded_as_a_graceful_close() -> None:
    """``shutdown()`` on a watched ``queue.Queue`` records the close; the rest stays readable."""
    target: queue.Queue[int] = watch_queue(queue.Queue(), "thread-shutdown")
    target.put(1)
    target.put(2)
    where = shut_down(target)
    closed = record_of("thread-shutdown")
    assert abs(closed["closed"] - time.time()) < 1
    assert closed["residual"] == 2
    assert closed["drained"] is None
    assert closed["closed_by"] == f"thread:{threading.current_thread().name}"
    assert closed["closed_where"] == where
    # In a worker: taking the last item of a shut-down queue must not hang the caller.
    reader = Worker(lambda: [target.get(), target.get()], name="reader")
    assert reader.join(2), "get() on a watched, shut-down queue.Queue deadlocked"
    assert reader.result == [1, 2]
    drained = record_of("thread-shutdown")
    assert drained["received"] == 2
    assert drained["drained"] is not None


@needs_queue_shutdown
@pytest.mark.parametrize("make", [asyncio.Queue, queue.Queue], ids=["asyncio", "thread"])
def test_immediate_shutdown_is_recorded_as_discarding_the_items(make: type[Any]) -> None:
    """``shutdown(immediate=True)`` counts the dropped items as discarded, not received."""

    async def main() -> None:
        target = watch_queue(make(), "immediate-shutdown")
        for item in range(3):
            target.put_nowait(item)
        shut_down(target, immediate=True)
        assert target.qsize() == 0
        record = record_of("immediate-shutdown")
        assert record["immediate"] is True
        assert record["residual"] == 3
        assert record["discarded"] == 3
        assert record["received"] == 0
        assert record["drained"] == record["closed"]
        if isinstance(target, asyncio.Queue):
            await asyncio.wait_for(target.join(), 1)
        else:
            joiner = Worker(target.join, name="joiner")
            assert joiner.join(1)

    run(main())


@needs_queue_shutdown
def test_asyncio_queue_use_after_shutdown_is_counted_once_per_call() -> None:
    """Each put/get refused after shutdown counts once, though ``put`` calls ``put_nowait``."""

    async def main() -> None:
        target: asyncio.Queue[int] = watch_queue(asyncio.Queue(), "async-after-close")
        target.shutdown()  # type: ignore[attr-defined,unused-ignore]
        shut_down_error: type[Exception] = asyncio.QueueShutDown  # type: ignore[attr-defined,unused-ignore]
        with pytest.raises(shut_down_error):
            await target.put(1)
        with pytest.raises(shut_down_error):
            target.put_nowait(2)
        with pytest.raises(shut_down_error):
            await target.get()
        with pytest.raises(shut_down_error):
            target.get_nowait()
        record = record_of("async-after-close")
        assert record["send_after_close"] == 2
        assert record["read_after_close"] == 2
        assert record["sent"] == 0

    run(main())


@needs_queue_shutdown
def test_thread_queue_use_after_shutdown_is_counted_once_per_call() -> None:
    """Each put/get refused after shutdown counts once, though ``put_nowait`` calls ``put``."""
    target: queue.Queue[int] = watch_queue(queue.Queue(), "thread-after-close")
    target.shutdown()  # type: ignore[attr-defined,unused-ignore]
    shut_down_error: type[Exception] = queue.ShutDown  # type: ignore[attr-defined,unused-ignore]
    with pytest.raises(shut_down_error):
        target.put(1)
    with pytest.raises(shut_down_error):
        target.put_nowait(2)
    with pytest.raises(shut_down_error):
        target.get()
    with pytest.raises(shut_down_error):
        target.get_nowait()
    record = record_of("thread-after-close")
    assert record["send_after_close"] == 2
    assert record["read_after_close"] == 2


@needs_queue_shutdown
def test_blocked_getters_woken_by_shutdown_are_counted_once_each() -> None:
    """Getters blocked when the queue shuts down raise ``ShutDown`` and count one read each."""

    async def main() -> None:
        target: asyncio.Queue[int] = watch_queue(asyncio.Queue(), "async-woken")
        getters = [asyncio.create_task(target.get()) for _ in range(3)]
        assert await until(lambda: record_of("async-woken")["waiters"]["receive"] == 3)
        target.shutdown()  # type: ignore[attr-defined,unused-ignore]
        results = await asyncio.wait_for(asyncio.gather(*getters, return_exceptions=True), 1)
        assert [type(result).__name__ for result in results] == ["QueueShutDown"] * 3
        assert record_of("async-woken")["read_after_close"] == 3

    run(main())


@needs_queue_shutdown
@pytest.mark.parametrize("make", [asyncio.Queue, queue.Queue], ids=["asyncio", "thread"])
def test_second_shutdown_is_counted_as_a_double_close(make: type[Any]) -> None:
    """Shutting a watched queue down again is counted and keeps the first close's facts."""
    target = watch_queue(make(), "double-shutdown")
    target.put_nowait(1)
    shut_down(target)
    first = record_of("double-shutdown")
    shut_down(target)
    record = record_of("double-shutdown")
    assert record["double_close"] == 1
    for fact in ("closed", "closed_by", "closed_where", "residual", "immediate"):
        assert record[fact] == first[fact], fact


@needs_queue_shutdown
@pytest.mark.parametrize("make", [asyncio.Queue, queue.Queue], ids=["asyncio", "thread"])
def test_immediate_shutdown_after_a_graceful_one_counts_the_items_it_drops(
    make: type[Any],
) -> None:
    """The stdlib drops what is left on a later ``shutdown(immediate=True)``: count it."""
    target = watch_queue(make(), "late-immediate")
    target.put_nowait(1)
    target.put_nowait(2)
    shut_down(target)
    shut_down(target, immediate=True)
    assert target.qsize() == 0  # the stdlib queue emptied itself
    record = record_of("late-immediate")
    assert record["double_close"] == 1
    assert record["received"] + record["discarded"] == 2
    assert record["drained"] is not None
