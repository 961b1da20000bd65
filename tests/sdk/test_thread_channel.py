"""``drainwatch.ThreadChannel``: a ``queue.Queue`` drop-in that can be closed and says how."""

from __future__ import annotations

import functools
import math
import queue
import threading
import time
from typing import Any

import pytest
from drainwatch import ChannelClosed, ThreadChannel

from .conftest import Worker, next_line, wait_until

# Upper bounds of the wait histogram buckets, from docs/protocol.md (+Inf last).
WAIT_BOUNDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, math.inf,
)  # fmt: skip


def waiters(channel: ThreadChannel[Any], side: str) -> int:
    count: int = channel.record()["waiters"][side]
    return count


def close_channel(channel: ThreadChannel[Any]) -> str:
    """Close ``channel`` and return the ``file:line`` of the close call."""
    where = f"{__file__}:{next_line()}"
    channel.close()
    return where


# -- queue.Queue drop-in -----------------------------------------------------------------------


def test_put_and_get_keep_fifo_order_and_sizes() -> None:
    """Items leave in the order they were put, and qsize/empty follow the buffer."""
    channel: ThreadChannel[int] = ThreadChannel("fifo")
    assert channel.empty()
    for item in range(3):
        channel.put(item)
    channel.put_nowait(3)
    assert channel.qsize() == 4
    assert not channel.empty()
    items = [channel.get(), channel.get(), channel.get_nowait(), channel.get(block=False)]
    assert items == [0, 1, 2, 3]
    assert channel.empty()


def test_get_without_blocking_on_an_empty_channel_raises_empty() -> None:
    """``get_nowait`` and ``get(block=False)`` on an open, empty channel raise ``queue.Empty``."""
    channel: ThreadChannel[int] = ThreadChannel("empty")
    with pytest.raises(queue.Empty):
        channel.get_nowait()
    with pytest.raises(queue.Empty):
        channel.get(block=False)
    assert channel.record()["read_after_close"] == 0


def test_get_with_a_timeout_raises_empty_once_it_expires() -> None:
    """``get(timeout=t)`` waits about ``t`` seconds, then raises ``queue.Empty``."""
    channel: ThreadChannel[int] = ThreadChannel("get-timeout")
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        channel.get(timeout=0.05)
    elapsed = time.monotonic() - started
    assert 0.05 <= elapsed < 1
    record = channel.record()
    assert record["waiters"]["receive"] == 0
    assert record["wait"]["receive"]["count"] == 1


def test_put_without_blocking_on_a_full_channel_raises_full() -> None:
    """A bounded channel reports ``full()`` at ``maxsize`` and refuses more with ``queue.Full``."""
    channel: ThreadChannel[int] = ThreadChannel("full", maxsize=2)
    assert channel.maxsize == 2
    channel.put(1)
    channel.put(2)
    assert channel.full()
    with pytest.raises(queue.Full):
        channel.put_nowait(3)
    with pytest.raises(queue.Full):
        channel.put(3, block=False)
    assert channel.qsize() == 2
    assert channel.record()["sent"] == 2


def test_put_with_a_timeout_raises_full_once_it_expires() -> None:
    """``put(timeout=t)`` on a full channel waits about ``t`` seconds, then raises ``Full``."""
    channel: ThreadChannel[int] = ThreadChannel("put-timeout", maxsize=1)
    channel.put(1)
    started = time.monotonic()
    with pytest.raises(queue.Full):
        channel.put(2, timeout=0.05)
    elapsed = time.monotonic() - started
    assert 0.05 <= elapsed < 1
    assert channel.qsize() == 1
    assert channel.record()["waiters"]["send"] == 0


def test_negative_timeout_raises_value_error() -> None:
    """A negative timeout on a wait is refused with ``ValueError``, as ``queue.Queue`` does."""
    channel: ThreadChannel[int] = ThreadChannel("negative-timeout", maxsize=1)
    with pytest.raises(ValueError, match="'timeout' must be a non-negative number"):
        channel.get(timeout=-1)
    channel.put(1)
    with pytest.raises(ValueError, match="'timeout' must be a non-negative number"):
        channel.put(2, timeout=-1)


@pytest.mark.parametrize("maxsize", [0, -1])
def test_maxsize_zero_or_less_means_unbounded(maxsize: int) -> None:
    """As with ``queue.Queue``, ``maxsize <= 0`` never fills up."""
    channel: ThreadChannel[int] = ThreadChannel("unbounded", maxsize=maxsize)
    for item in range(1000):
        channel.put(item, block=False)
    assert not channel.full()
    assert channel.qsize() == 1000


def test_bounded_put_blocks_until_a_get_frees_room() -> None:
    """A blocking put on a full channel waits until another thread gets an item."""
    channel: ThreadChannel[int] = ThreadChannel("bounded", maxsize=1)
    channel.put(1)
    putter = Worker(lambda: channel.put(2), name="putter")
    assert wait_until(lambda: waiters(channel, "send") == 1)
    assert channel.get() == 1
    assert putter.join(1)
    assert putter.error is None
    assert channel.get_nowait() == 2


def test_get_blocks_until_an_item_is_put() -> None:
    """A blocking get on an empty channel waits until another thread puts an item."""
    channel: ThreadChannel[str] = ThreadChannel("waiting-get")
    getter = Worker(channel.get, name="getter")
    assert wait_until(lambda: waiters(channel, "receive") == 1)
    channel.put("x")
    assert getter.join(1)
    assert getter.result == "x"
    assert waiters(channel, "receive") == 0


def test_task_done_called_too_many_times_raises_value_error() -> None:
    """``task_done`` beyond the number of put items raises ``ValueError`` as queue.Queue."""
    channel: ThreadChannel[int] = ThreadChannel("task-done")
    channel.put(1)
    channel.get()
    channel.task_done()
    with pytest.raises(ValueError, match=r"task_done\(\) called too many times"):
        channel.task_done()


def test_join_returns_once_every_item_is_marked_done() -> None:
    """``join`` blocks while an item is not marked done and returns after the last one."""
    channel: ThreadChannel[int] = ThreadChannel("join")
    channel.put(1)
    channel.put(2)
    joiner = Worker(channel.join, name="joiner")
    channel.get()
    channel.task_done()
    assert not joiner.join(0.05)
    channel.get()
    channel.task_done()
    assert joiner.join(1)
    assert joiner.error is None


def test_channel_can_be_subscripted_like_queue_queue() -> None:
    """``ThreadChannel[int](...)`` works at runtime as ``queue.Queue[int]()`` does."""
    channel = ThreadChannel[int]("generic")
    assert type(channel) is ThreadChannel
    channel.put(1)
    assert channel.get() == 1


# -- closing -----------------------------------------------------------------------------------


def test_close_keeps_buffered_items_readable_then_get_raises_and_is_counted() -> None:
    """After a graceful close the buffer drains in order, then every get raises and counts."""
    channel: ThreadChannel[int] = ThreadChannel("graceful")
    for item in (1, 2, 3):
        channel.put(item)
    states = [channel.closed]
    channel.close()
    states.append(channel.closed)
    assert states == [False, True]
    assert [channel.get(), channel.get(timeout=1), channel.get_nowait()] == [1, 2, 3]
    with pytest.raises(ChannelClosed, match="get on closed channel 'graceful'"):
        channel.get()
    with pytest.raises(ChannelClosed):
        channel.get_nowait()
    with pytest.raises(ChannelClosed):
        channel.get(timeout=0.5)
    record = channel.record()
    assert record["read_after_close"] == 3
    assert record["received"] == 3


def test_close_from_another_thread_wakes_every_blocked_getter_at_once() -> None:
    """Three threads blocked in ``get`` all get ``ChannelClosed`` as soon as another closes it."""
    channel: ThreadChannel[int] = ThreadChannel("wake-getters")
    getters = [Worker(channel.get, name=f"getter-{index}") for index in range(3)]
    assert wait_until(lambda: waiters(channel, "receive") == 3)
    started = time.monotonic()
    closer = Worker(channel.close, name="closer")
    assert closer.join(1)
    assert all(worker.join(1) for worker in getters)
    assert [type(worker.error) for worker in getters] == [ChannelClosed] * 3
    assert max(worker.finished_at or math.inf for worker in getters) - started < 1
    record = channel.record()
    assert record["read_after_close"] == 3
    assert record["waiters"] == {"send": 0, "receive": 0}
    assert record["closed_by"] == "thread:closer"


def test_immediate_close_discards_items_wakes_putters_and_releases_join() -> None:
    """``close(immediate=True)`` drops the buffer (counted), fails blocked puts, ends ``join``."""
    channel: ThreadChannel[int] = ThreadChannel("immediate", maxsize=3)
    for item in range(3):
        channel.put(item)
    putter = Worker(lambda: channel.put(99), name="putter")
    joiner = Worker(channel.join, name="joiner")
    assert wait_until(lambda: waiters(channel, "send") == 1)
    assert not joiner.join(0.01)
    channel.close(immediate=True)
    assert joiner.join(1)
    assert putter.join(1)
    assert isinstance(putter.error, ChannelClosed)
    assert channel.empty()
    with pytest.raises(ChannelClosed):
        channel.get_nowait()
    record = channel.record()
    assert record["immediate"] is True
    assert record["discarded"] == 3
    assert record["residual"] == 3
    assert record["depth"] == 0
    assert record["received"] == 0
    assert record["send_after_close"] == 1
    assert record["drained"] == record["closed"]


def test_immediate_close_wakes_every_blocked_getter() -> None:
    """An immediate close of an empty channel wakes every blocked getter with ChannelClosed."""
    channel: ThreadChannel[int] = ThreadChannel("immediate-getters")
    getters = [Worker(channel.get, name=f"getter-{index}") for index in range(3)]
    assert wait_until(lambda: waiters(channel, "receive") == 3)
    channel.close(immediate=True)
    assert all(worker.join(1) for worker in getters)
    assert [type(worker.error) for worker in getters] == [ChannelClosed] * 3


def test_join_after_immediate_close_still_waits_for_items_being_processed() -> None:
    """An item got before an immediate close must still be marked done before ``join`` ends."""
    channel: ThreadChannel[int] = ThreadChannel("in-flight")
    for item in range(3):
        channel.put(item)
    assert channel.get() == 0  # taken, not yet done
    channel.close(immediate=True)
    joiner = Worker(channel.join, name="joiner")
    assert not joiner.join(0.05)
    channel.task_done()
    assert joiner.join(1)
    assert channel.record()["discarded"] == 2


def test_put_on_a_closed_channel_raises_and_is_counted() -> None:
    """Every form of put after close raises ``ChannelClosed`` and is counted, never dropped."""
    channel: ThreadChannel[int] = ThreadChannel("send-after-close", maxsize=1)
    channel.put(1)
    channel.close()
    with pytest.raises(ChannelClosed, match="put on closed channel 'send-after-close'"):
        channel.put(2)
    with pytest.raises(ChannelClosed):
        channel.put_nowait(3)
    with pytest.raises(ChannelClosed):
        channel.put(4, block=False)
    with pytest.raises(ChannelClosed):
        channel.put(5, timeout=0.5)
    record = channel.record()
    assert record["send_after_close"] == 4
    assert record["sent"] == 1
    assert channel.get() == 1
    assert channel.empty()


def test_close_wakes_putters_blocked_on_a_full_channel() -> None:
    """Threads waiting for room get ``ChannelClosed`` at close; the buffered item stays."""
    channel: ThreadChannel[int] = ThreadChannel("wake-putters", maxsize=1)
    channel.put(0)
    putters = [
        Worker(lambda: channel.put(1), name="putter-forever"),
        Worker(lambda: channel.put(2, timeout=30), name="putter-timeout"),
    ]
    assert wait_until(lambda: waiters(channel, "send") == 2)
    started = time.monotonic()
    channel.close()
    assert all(worker.join(1) for worker in putters)
    assert time.monotonic() - started < 1
    assert [type(worker.error) for worker in putters] == [ChannelClosed] * 2
    record = channel.record()
    assert record["send_after_close"] == 2
    assert record["waiters"] == {"send": 0, "receive": 0}
    assert channel.get() == 0


def test_second_close_is_counted_and_changes_nothing_else() -> None:
    """A repeated close does not raise, is counted, and keeps the first close's facts."""
    channel: ThreadChannel[int] = ThreadChannel("twice")
    channel.put(1)
    channel.close()
    first = channel.record()
    closer = Worker(channel.close, name="late-closer")
    assert closer.join(1)
    assert closer.error is None
    channel.close(immediate=True)
    record = channel.record()
    assert record["double_close"] == 2
    for fact in ("closed", "closed_by", "closed_where", "residual", "immediate", "discarded"):
        assert record[fact] == first[fact], fact
    assert channel.get() == 1


def test_second_close_raises_when_strict() -> None:
    """With ``strict=True`` a repeated close raises ``ChannelClosed`` (and is still counted)."""
    channel: ThreadChannel[int] = ThreadChannel("strict", strict=True)
    channel.close()
    with pytest.raises(ChannelClosed, match="already closed"):
        channel.close()
    assert channel.record()["double_close"] == 1


def test_shutdown_is_close_under_the_queue_queue_name() -> None:
    """``shutdown()`` closes gracefully and ``shutdown(immediate=True)`` discards, as close."""
    graceful: ThreadChannel[int] = ThreadChannel("shutdown-graceful")
    graceful.put(1)
    graceful.shutdown()
    assert graceful.closed
    assert graceful.get() == 1
    immediate: ThreadChannel[int] = ThreadChannel("shutdown-immediate")
    immediate.put(1)
    immediate.shutdown(immediate=True)
    assert immediate.empty()
    assert immediate.record()["discarded"] == 1


def test_iteration_yields_buffered_items_and_ends_cleanly_when_closed_and_drained() -> None:
    """``for item in channel`` ends without error after close and drain, and is not counted."""
    channel: ThreadChannel[int] = ThreadChannel("iterate")
    for item in range(3):
        channel.put(item)
    channel.close()
    assert list(channel) == [0, 1, 2]
    assert channel.record()["read_after_close"] == 0
    with pytest.raises(ChannelClosed):
        channel.get()
    assert channel.record()["read_after_close"] == 1


def test_iteration_blocked_in_another_thread_ends_when_the_channel_closes() -> None:
    """A consumer thread blocked in ``for item in channel`` gets the items, then leaves at close."""
    channel: ThreadChannel[int] = ThreadChannel("iterate-blocked")
    consumer = Worker(lambda: list(channel), name="consumer")
    assert wait_until(lambda: waiters(channel, "receive") == 1)
    channel.put(1)
    channel.put(2)
    assert wait_until(lambda: channel.record()["received"] == 2)
    assert wait_until(lambda: waiters(channel, "receive") == 1)
    channel.close()
    assert consumer.join(1)
    assert consumer.result == [1, 2]
    assert channel.record()["read_after_close"] == 0


def test_many_producers_and_consumers_hand_over_every_item_exactly_once() -> None:
    """Under contention every item put is received once and the counters agree."""
    channel: ThreadChannel[int] = ThreadChannel("contended", maxsize=8)
    consumers = [Worker(lambda: list(channel), name=f"consumer-{index}") for index in range(3)]

    def produce(first: int) -> None:
        for item in range(first, first + 500):
            channel.put(item)

    producers = [
        Worker(functools.partial(produce, first), name=f"producer-{first}")
        for first in range(0, 2000, 500)
    ]
    assert all(worker.join(10) for worker in producers)
    assert all(worker.error is None for worker in producers)
    channel.close()
    assert all(worker.join(5) for worker in consumers)
    received = sorted(item for worker in consumers for item in worker.result)
    assert received == list(range(2000))
    record = channel.record()
    assert record["sent"] == record["received"] == 2000
    assert record["read_after_close"] == 0
    assert record["waiters"] == {"send": 0, "receive": 0}


# -- what a channel records --------------------------------------------------------------------


def test_record_describes_the_channel_and_counts_traffic() -> None:
    """``record()`` names the channel and carries cumulative sent/received and the depth."""
    channel: ThreadChannel[int] = ThreadChannel("counts", maxsize=10, owner="feeder")
    for item in range(4):
        channel.put(item)
    channel.get()
    record = channel.record()
    expected = {
        "type": "channel",
        "trigger": "snapshot",
        "name": "counts",
        "kind": "thread",
        "owner": "feeder",
        "capacity": 10,
        "sent": 4,
        "received": 1,
        "depth": 3,
        "closed": None,
        "residual": None,
        "waiters": {"send": 0, "receive": 0},
    }
    assert {key: record[key] for key in expected} == expected


def test_record_timestamps_follow_create_close_and_drain() -> None:
    """``created``, ``closed`` and ``drained`` are wall-clock times of those moments."""
    channel: ThreadChannel[int] = ThreadChannel("timestamps")
    assert abs(channel.record()["created"] - time.time()) < 1
    channel.put(1)
    channel.put(2)
    channel.close()
    closed = channel.record()
    assert abs(closed["closed"] - time.time()) < 1
    assert closed["residual"] == 2
    assert closed["drained"] is None
    channel.get()
    assert channel.record()["drained"] is None  # one item left
    channel.get()
    drained = channel.record()["drained"]
    assert drained is not None
    assert closed["closed"] <= drained
    assert abs(drained - time.time()) < 1


def test_closing_an_empty_channel_marks_it_drained_at_once() -> None:
    """A channel that is empty when closed is drained at the moment of the close."""
    channel: ThreadChannel[int] = ThreadChannel("empty-close")
    channel.close()
    record = channel.record()
    assert record["residual"] == 0
    assert record["drained"] == record["closed"]


def test_record_reports_blocked_getters_and_the_age_of_the_oldest() -> None:
    """``waiters.receive`` counts blocked getters; ``oldest_wait.receive`` is at least their age."""
    channel: ThreadChannel[int] = ThreadChannel("oldest-receive")
    getters = [Worker(channel.get, name=f"getter-{index}") for index in range(2)]
    assert wait_until(lambda: waiters(channel, "receive") == 2)
    blocked_since = time.monotonic()
    time.sleep(0.05)
    slept = time.monotonic() - blocked_since
    record = channel.record()
    assert record["waiters"] == {"send": 0, "receive": 2}
    assert record["oldest_wait"]["receive"] >= slept
    assert record["oldest_wait"]["send"] == 0
    channel.put(1)
    channel.put(2)
    assert all(worker.join(1) for worker in getters)
    after = channel.record()
    assert after["waiters"] == {"send": 0, "receive": 0}
    assert after["oldest_wait"]["receive"] == 0


def test_record_reports_blocked_putters_and_the_age_of_the_oldest() -> None:
    """``waiters.send`` counts blocked putters; ``oldest_wait.send`` is at least their age."""
    channel: ThreadChannel[int] = ThreadChannel("oldest-send", maxsize=1)
    channel.put(0)
    putter = Worker(lambda: channel.put(1), name="putter")
    assert wait_until(lambda: waiters(channel, "send") == 1)
    blocked_since = time.monotonic()
    time.sleep(0.05)
    slept = time.monotonic() - blocked_since
    record = channel.record()
    assert record["waiters"] == {"send": 1, "receive": 0}
    assert record["oldest_wait"]["send"] >= slept
    channel.get()
    assert putter.join(1)
    after = channel.record()
    assert after["waiters"]["send"] == 0
    assert after["oldest_wait"]["send"] == 0


def test_completed_waits_are_recorded_in_the_wait_histogram() -> None:
    """Each finished wait lands in the bucket holding its duration; sum and count follow."""
    channel: ThreadChannel[int] = ThreadChannel("histogram", maxsize=1)
    getter = Worker(channel.get, name="getter")
    assert wait_until(lambda: waiters(channel, "receive") == 1)
    time.sleep(0.03)
    channel.put(1)
    assert getter.join(1)
    channel.put(2)
    putter = Worker(lambda: channel.put(3), name="putter")
    assert wait_until(lambda: waiters(channel, "send") == 1)
    time.sleep(0.03)
    channel.get()
    assert putter.join(1)

    for side in ("receive", "send"):
        histogram = channel.record()["wait"][side]
        assert len(histogram["counts"]) == len(WAIT_BOUNDS)
        assert histogram["count"] == sum(histogram["counts"]) == 1
        assert histogram["sum"] >= 0.03
        bucket = histogram["counts"].index(1)
        lower = WAIT_BOUNDS[bucket - 1] if bucket else 0.0
        assert lower < histogram["sum"] <= WAIT_BOUNDS[bucket], (side, histogram)


def test_close_records_the_closing_thread_and_the_line_of_the_call() -> None:
    """``closed_by`` is ``thread:<name>`` and ``closed_where`` the file:line of ``close()``."""
    channel: ThreadChannel[int] = ThreadChannel("closed-by-thread")
    closer = Worker(lambda: close_channel(channel), name="shutdown-thread")
    assert closer.join(1)
    record = channel.record()
    assert record["closed_by"] == "thread:shutdown-thread"
    assert record["closed_where"] == closer.result


def test_shutdown_records_the_line_of_the_shutdown_call() -> None:
    """Through the ``shutdown`` alias, ``closed_where`` still names the caller's line."""
    channel: ThreadChannel[int] = ThreadChannel("closed-by-alias")
    where = f"{__file__}:{next_line()}"
    channel.shutdown()
    record = channel.record()
    assert record["closed_by"] == f"thread:{threading.current_thread().name}"
    assert record["closed_where"] == where
