"""``drainwatch.Channel``: an ``asyncio.Queue`` drop-in that can be closed and says how."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import pytest
from drainwatch import Channel, ChannelClosed

from .conftest import next_line, run, until

# Upper bounds of the wait histogram buckets, from docs/protocol.md (+Inf last).
WAIT_BOUNDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, math.inf,
)  # fmt: skip


def waiters(channel: Channel[Any], side: str) -> int:
    count: int = channel.record()["waiters"][side]
    return count


# -- asyncio.Queue drop-in ---------------------------------------------------------------------


def test_put_nowait_and_get_nowait_keep_fifo_order() -> None:
    """Items leave in the order they were put, and qsize/empty follow the buffer."""
    channel: Channel[int] = Channel("fifo")
    assert channel.empty()
    for item in range(5):
        channel.put_nowait(item)
    assert channel.qsize() == 5
    assert not channel.empty()
    assert [channel.get_nowait() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert channel.empty()
    assert channel.qsize() == 0


def test_awaited_put_and_get_keep_fifo_order() -> None:
    """The ``put``/``get`` coroutines pass items through in FIFO order."""

    async def main() -> list[str]:
        channel: Channel[str] = Channel("fifo-awaited")
        for item in "abc":
            await channel.put(item)
        return [await channel.get() for _ in range(3)]

    assert run(main()) == ["a", "b", "c"]


def test_get_nowait_on_an_empty_channel_raises_queue_empty() -> None:
    """An open, empty channel raises ``asyncio.QueueEmpty``, not ``ChannelClosed``."""
    channel: Channel[int] = Channel("empty")
    with pytest.raises(asyncio.QueueEmpty):
        channel.get_nowait()
    assert channel.record()["read_after_close"] == 0


def test_put_nowait_on_a_full_channel_raises_queue_full() -> None:
    """A bounded channel reports ``full()`` at ``maxsize`` and refuses more with ``QueueFull``."""
    channel: Channel[int] = Channel("full", maxsize=2)
    assert channel.maxsize == 2
    channel.put_nowait(1)
    assert not channel.full()
    channel.put_nowait(2)
    assert channel.full()
    with pytest.raises(asyncio.QueueFull):
        channel.put_nowait(3)
    assert channel.qsize() == 2
    assert channel.record()["sent"] == 2


@pytest.mark.parametrize("maxsize", [0, -1])
def test_maxsize_zero_or_less_means_unbounded(maxsize: int) -> None:
    """As with ``asyncio.Queue``, ``maxsize <= 0`` never fills up."""
    channel: Channel[int] = Channel("unbounded", maxsize=maxsize)
    for item in range(1000):
        channel.put_nowait(item)
    assert not channel.full()
    assert channel.qsize() == 1000
    assert channel.record()["capacity"] == 0


@pytest.mark.parametrize(
    ("name", "maxsize", "message"),
    [
        ("", 0, 'channel "name" must be a non-empty string'),
        (None, 0, 'channel "name" must be a non-empty string'),
        ("bad-size", 1.5, 'channel "maxsize" must be an int'),
        ("bad-size", True, 'channel "maxsize" must be an int'),
    ],
)
def test_bad_name_or_maxsize_raises_type_error(name: Any, maxsize: Any, message: str) -> None:
    """A bad constructor argument raises ``TypeError`` naming the argument."""
    with pytest.raises(TypeError, match=message):
        Channel(name, maxsize)


def test_bounded_put_waits_until_a_get_frees_room() -> None:
    """``await put`` on a full channel blocks until a get takes an item, then completes."""

    async def main() -> None:
        channel: Channel[int] = Channel("bounded", maxsize=1)
        channel.put_nowait(1)
        putter = asyncio.create_task(channel.put(2))
        assert await until(lambda: waiters(channel, "send") == 1)
        assert not putter.done()
        assert channel.get_nowait() == 1
        await asyncio.wait_for(putter, 1)
        assert channel.get_nowait() == 2
        assert waiters(channel, "send") == 0

    run(main())


def test_get_waits_until_an_item_is_put() -> None:
    """``await get`` on an empty channel blocks until a put, then returns that item."""

    async def main() -> None:
        channel: Channel[str] = Channel("waiting-get")
        getter = asyncio.create_task(channel.get())
        assert await until(lambda: waiters(channel, "receive") == 1)
        channel.put_nowait("x")
        assert await asyncio.wait_for(getter, 1) == "x"
        assert waiters(channel, "receive") == 0

    run(main())


def test_task_done_called_too_many_times_raises_value_error() -> None:
    """``task_done`` beyond the number of put items raises ``ValueError`` as asyncio.Queue."""
    channel: Channel[int] = Channel("task-done")
    channel.put_nowait(1)
    channel.get_nowait()
    channel.task_done()
    with pytest.raises(ValueError, match=r"task_done\(\) called too many times"):
        channel.task_done()


def test_join_returns_once_every_item_is_marked_done() -> None:
    """``join`` blocks while an item is not marked done and returns after the last one."""

    async def main() -> None:
        channel: Channel[int] = Channel("join")
        channel.put_nowait(1)
        channel.put_nowait(2)
        joiner = asyncio.create_task(channel.join())
        channel.get_nowait()
        channel.task_done()
        await asyncio.sleep(0.01)
        assert not joiner.done()
        channel.get_nowait()
        channel.task_done()
        await asyncio.wait_for(joiner, 1)

    run(main())


def test_join_without_unfinished_items_returns_at_once() -> None:
    """``join`` on a channel with nothing pending does not wait."""
    channel: Channel[int] = Channel("join-idle")
    run(channel.join(), timeout=1)


def test_channel_can_be_subscripted_like_asyncio_queue() -> None:
    """``Channel[int](...)`` works at runtime as ``asyncio.Queue[int]()`` does."""
    channel = Channel[int]("generic")
    assert type(channel) is Channel
    channel.put_nowait(1)
    assert channel.get_nowait() == 1


# -- closing -----------------------------------------------------------------------------------


def test_close_keeps_buffered_items_readable_then_get_raises_and_is_counted() -> None:
    """After a graceful close the buffer drains in order, then every get raises and counts."""

    async def main() -> None:
        channel: Channel[int] = Channel("graceful")
        for item in (1, 2, 3):
            channel.put_nowait(item)
        states = [channel.closed]
        channel.close()
        states.append(channel.closed)
        assert states == [False, True]
        assert [await channel.get() for _ in range(3)] == [1, 2, 3]
        with pytest.raises(ChannelClosed, match="get on closed channel 'graceful'"):
            await channel.get()
        with pytest.raises(ChannelClosed):
            channel.get_nowait()
        record = channel.record()
        assert record["read_after_close"] == 2
        assert record["received"] == 3

    run(main())


def test_close_from_another_task_wakes_every_blocked_getter_at_once() -> None:
    """Three getters blocked on an empty channel all get ``ChannelClosed`` as soon as it closes."""

    async def main() -> None:
        channel: Channel[int] = Channel("wake-getters")
        getters = [asyncio.create_task(channel.get()) for _ in range(3)]
        assert await until(lambda: waiters(channel, "receive") == 3)

        async def closer() -> None:
            channel.close()

        started = time.monotonic()
        await asyncio.create_task(closer())
        results = await asyncio.wait_for(asyncio.gather(*getters, return_exceptions=True), 1)
        assert time.monotonic() - started < 1
        assert [type(result) for result in results] == [ChannelClosed] * 3
        record = channel.record()
        assert record["read_after_close"] == 3
        assert record["waiters"] == {"send": 0, "receive": 0}

    run(main())


def test_immediate_close_discards_items_wakes_putters_and_releases_join() -> None:
    """``close(immediate=True)`` drops the buffer (counted), fails blocked puts, ends ``join``."""

    async def main() -> None:
        channel: Channel[int] = Channel("immediate", maxsize=3)
        for item in range(3):
            channel.put_nowait(item)
        putter = asyncio.create_task(channel.put(99))
        joiner = asyncio.create_task(channel.join())
        assert await until(lambda: waiters(channel, "send") == 1)
        assert not joiner.done()
        channel.close(immediate=True)
        await asyncio.wait_for(joiner, 1)
        with pytest.raises(ChannelClosed):
            await asyncio.wait_for(putter, 1)
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

    run(main())


def test_immediate_close_wakes_every_blocked_getter() -> None:
    """An immediate close of an empty channel wakes every blocked getter with ChannelClosed."""

    async def main() -> None:
        channel: Channel[int] = Channel("immediate-getters")
        getters = [asyncio.create_task(channel.get()) for _ in range(3)]
        assert await until(lambda: waiters(channel, "receive") == 3)
        channel.close(immediate=True)
        results = await asyncio.wait_for(asyncio.gather(*getters, return_exceptions=True), 1)
        assert [type(result) for result in results] == [ChannelClosed] * 3
        assert channel.record()["discarded"] == 0

    run(main())


def test_join_after_immediate_close_still_waits_for_items_being_processed() -> None:
    """An item got before an immediate close must still be marked done before ``join`` ends."""

    async def main() -> None:
        channel: Channel[int] = Channel("in-flight")
        for item in range(3):
            channel.put_nowait(item)
        assert channel.get_nowait() == 0  # taken, not yet done
        channel.close(immediate=True)
        joiner = asyncio.create_task(channel.join())
        await asyncio.sleep(0.01)
        assert not joiner.done()
        channel.task_done()
        await asyncio.wait_for(joiner, 1)
        assert channel.record()["discarded"] == 2

    run(main())


def test_put_on_a_closed_channel_raises_and_is_counted() -> None:
    """``put``/``put_nowait`` after close raise ``ChannelClosed`` and are counted, never dropped."""

    async def main() -> None:
        channel: Channel[int] = Channel("send-after-close")
        channel.put_nowait(1)
        channel.close()
        with pytest.raises(ChannelClosed, match="put on closed channel 'send-after-close'"):
            channel.put_nowait(2)
        with pytest.raises(ChannelClosed):
            await channel.put(3)
        record = channel.record()
        assert record["send_after_close"] == 2
        assert record["sent"] == 1
        assert channel.get_nowait() == 1
        assert channel.empty()

    run(main())


def test_close_wakes_putters_blocked_on_a_full_channel() -> None:
    """Putters waiting for room get ``ChannelClosed`` at close; the buffered item stays."""

    async def main() -> None:
        channel: Channel[int] = Channel("wake-putters", maxsize=1)
        channel.put_nowait(0)
        putters = [asyncio.create_task(channel.put(item)) for item in (1, 2)]
        assert await until(lambda: waiters(channel, "send") == 2)
        channel.close()
        results = await asyncio.wait_for(asyncio.gather(*putters, return_exceptions=True), 1)
        assert [type(result) for result in results] == [ChannelClosed] * 2
        record = channel.record()
        assert record["send_after_close"] == 2
        assert record["waiters"] == {"send": 0, "receive": 0}
        assert channel.get_nowait() == 0

    run(main())


def test_second_close_is_counted_and_changes_nothing_else() -> None:
    """A repeated close does not raise, is counted, and keeps the first close's facts."""
    channel: Channel[int] = Channel("twice")
    channel.put_nowait(1)
    channel.close()
    first = channel.record()
    channel.close()
    channel.close(immediate=True)
    record = channel.record()
    assert record["double_close"] == 2
    for fact in ("closed", "closed_by", "closed_where", "residual", "immediate", "discarded"):
        assert record[fact] == first[fact], fact
    assert channel.get_nowait() == 1


def test_second_close_raises_when_strict() -> None:
    """With ``strict=True`` a repeated close raises ``ChannelClosed`` (and is still counted)."""
    channel: Channel[int] = Channel("strict", strict=True)
    channel.close()
    with pytest.raises(ChannelClosed, match="already closed"):
        channel.close()
    assert channel.record()["double_close"] == 1


def test_shutdown_is_close_under_the_asyncio_queue_name() -> None:
    """``shutdown()`` closes gracefully and ``shutdown(immediate=True)`` discards, as close."""
    graceful: Channel[int] = Channel("shutdown-graceful")
    graceful.put_nowait(1)
    graceful.shutdown()
    assert graceful.closed
    assert graceful.get_nowait() == 1
    immediate: Channel[int] = Channel("shutdown-immediate")
    immediate.put_nowait(1)
    immediate.shutdown(immediate=True)
    assert immediate.empty()
    assert immediate.record()["discarded"] == 1


def test_async_for_yields_buffered_items_and_ends_cleanly_when_closed_and_drained() -> None:
    """``async for`` ends without error after close and drain, and that end is not counted."""

    async def main() -> None:
        channel: Channel[int] = Channel("iterate")

        async def produce() -> None:
            for item in range(5):
                await channel.put(item)
                await asyncio.sleep(0)
            channel.close()

        producer = asyncio.create_task(produce())
        seen = [item async for item in channel]
        await producer
        assert seen == [0, 1, 2, 3, 4]
        assert channel.record()["read_after_close"] == 0
        with pytest.raises(ChannelClosed):
            await channel.get()
        assert channel.record()["read_after_close"] == 1

    run(main())


def test_async_for_waiting_on_an_empty_channel_ends_when_it_closes() -> None:
    """A consumer blocked in ``async for`` leaves the loop as soon as the channel closes."""

    async def main() -> None:
        channel: Channel[int] = Channel("iterate-blocked")

        async def consume() -> list[int]:
            return [item async for item in channel]

        consumer = asyncio.create_task(consume())
        assert await until(lambda: waiters(channel, "receive") == 1)
        channel.close()
        assert await asyncio.wait_for(consumer, 1) == []
        assert channel.record()["read_after_close"] == 0

    run(main())


# -- what a channel records --------------------------------------------------------------------


def test_record_describes_the_channel_and_counts_traffic() -> None:
    """``record()`` names the channel and carries cumulative sent/received and the depth."""
    channel: Channel[int] = Channel("counts", maxsize=10, owner="producer")
    other: Channel[int] = Channel("counts-other")
    for item in range(4):
        channel.put_nowait(item)
    channel.get_nowait()
    record = channel.record()
    expected = {
        "type": "channel",
        "trigger": "snapshot",
        "name": "counts",
        "kind": "asyncio",
        "owner": "producer",
        "capacity": 10,
        "sent": 4,
        "received": 1,
        "depth": 3,
        "discarded": 0,
        "read_after_close": 0,
        "send_after_close": 0,
        "double_close": 0,
        "closed": None,
        "closed_by": None,
        "closed_where": None,
        "drained": None,
        "residual": None,
        "immediate": False,
        "waiters": {"send": 0, "receive": 0},
        "oldest_wait": {"send": 0.0, "receive": 0.0},
    }
    assert {key: record[key] for key in expected} == expected
    assert record["id"] != other.record()["id"]


def test_record_timestamps_follow_create_close_and_drain() -> None:
    """``created``, ``closed`` and ``drained`` are wall-clock times of those moments."""
    channel: Channel[int] = Channel("timestamps")
    assert abs(channel.record()["created"] - time.time()) < 1
    channel.put_nowait(1)
    channel.close()
    closed = channel.record()
    assert abs(closed["closed"] - time.time()) < 1
    assert closed["residual"] == 1
    assert closed["drained"] is None  # an item is still buffered
    channel.get_nowait()
    drained = channel.record()["drained"]
    assert drained is not None
    assert closed["closed"] <= drained
    assert abs(drained - time.time()) < 1


def test_closing_an_empty_channel_marks_it_drained_at_once() -> None:
    """A channel that is empty when closed is drained at the moment of the close."""
    channel: Channel[int] = Channel("empty-close")
    channel.put_nowait(1)
    channel.get_nowait()
    channel.close()
    record = channel.record()
    assert record["residual"] == 0
    assert record["drained"] == record["closed"]


def test_record_reports_blocked_getters_and_the_age_of_the_oldest() -> None:
    """``waiters.receive`` counts blocked getters; ``oldest_wait.receive`` is at least their age."""

    async def main() -> None:
        channel: Channel[int] = Channel("oldest-receive")
        getters = [asyncio.create_task(channel.get()) for _ in range(2)]
        assert await until(lambda: waiters(channel, "receive") == 2)
        blocked_since = time.monotonic()
        await asyncio.sleep(0.05)
        slept = time.monotonic() - blocked_since
        record = channel.record()
        assert record["waiters"] == {"send": 0, "receive": 2}
        assert record["oldest_wait"]["receive"] >= slept
        assert record["oldest_wait"]["send"] == 0
        channel.put_nowait(1)
        channel.put_nowait(2)
        await asyncio.wait_for(asyncio.gather(*getters), 1)
        after = channel.record()
        assert after["waiters"] == {"send": 0, "receive": 0}
        assert after["oldest_wait"]["receive"] == 0

    run(main())


def test_record_reports_blocked_putters_and_the_age_of_the_oldest() -> None:
    """``waiters.send`` counts blocked putters; ``oldest_wait.send`` is at least their age."""

    async def main() -> None:
        channel: Channel[int] = Channel("oldest-send", maxsize=1)
        channel.put_nowait(0)
        putter = asyncio.create_task(channel.put(1))
        assert await until(lambda: waiters(channel, "send") == 1)
        blocked_since = time.monotonic()
        await asyncio.sleep(0.05)
        slept = time.monotonic() - blocked_since
        record = channel.record()
        assert record["waiters"] == {"send": 1, "receive": 0}
        assert record["oldest_wait"]["send"] >= slept
        channel.get_nowait()
        await asyncio.wait_for(putter, 1)
        after = channel.record()
        assert after["waiters"]["send"] == 0
        assert after["oldest_wait"]["send"] == 0

    run(main())


def test_completed_waits_are_recorded_in_the_wait_histogram() -> None:
    """Each finished wait lands in the bucket holding its duration; sum and count follow."""

    async def main() -> None:
        channel: Channel[int] = Channel("histogram", maxsize=1)
        getter = asyncio.create_task(channel.get())
        assert await until(lambda: waiters(channel, "receive") == 1)
        await asyncio.sleep(0.03)
        channel.put_nowait(1)
        await asyncio.wait_for(getter, 1)
        channel.put_nowait(2)
        putter = asyncio.create_task(channel.put(3))
        assert await until(lambda: waiters(channel, "send") == 1)
        await asyncio.sleep(0.03)
        channel.get_nowait()
        await asyncio.wait_for(putter, 1)

        for side in ("receive", "send"):
            histogram = channel.record()["wait"][side]
            assert len(histogram["counts"]) == len(WAIT_BOUNDS)
            assert histogram["count"] == sum(histogram["counts"]) == 1
            assert histogram["sum"] >= 0.03
            bucket = histogram["counts"].index(1)
            lower = WAIT_BOUNDS[bucket - 1] if bucket else 0.0
            assert lower < histogram["sum"] <= WAIT_BOUNDS[bucket], (side, histogram)

    run(main())


def test_close_records_the_closing_task_and_the_line_of_the_call() -> None:
    """``closed_by`` is ``task:<name>`` and ``closed_where`` the file:line of ``close()``."""

    async def main() -> tuple[dict[str, Any], str]:
        channel: Channel[int] = Channel("closed-by-task")

        async def shut() -> str:
            where = f"{__file__}:{next_line()}"
            channel.close()
            return where

        where = await asyncio.create_task(shut(), name="shutdown-hook")
        return channel.record(), where

    record, where = run(main())
    assert record["closed_by"] == "task:shutdown-hook"
    assert record["closed_where"] == where


def test_shutdown_outside_a_loop_records_the_thread_and_the_line_of_the_call() -> None:
    """Closed outside any task (here via ``shutdown``), ``closed_by`` names the thread."""
    channel: Channel[int] = Channel("closed-by-thread")
    where = f"{__file__}:{next_line()}"
    channel.shutdown()
    record = channel.record()
    assert record["closed_by"] == f"thread:{threading.current_thread().name}"
    assert record["closed_where"] == where


# -- cancellation ------------------------------------------------------------------------------


def test_cancelled_getter_leaves_the_waiters_and_takes_no_item() -> None:
    """A cancelled ``get`` is no longer a waiter, and the next item is not lost to it."""

    async def main() -> None:
        channel: Channel[int] = Channel("cancel-get")
        getter = asyncio.create_task(channel.get())
        assert await until(lambda: waiters(channel, "receive") == 1)
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        assert waiters(channel, "receive") == 0
        channel.put_nowait(7)
        assert channel.get_nowait() == 7

    run(main())


def test_getter_cancelled_after_being_woken_passes_the_item_to_the_next_getter() -> None:
    """A getter woken for an item but cancelled before taking it hands the item on."""

    async def main() -> None:
        channel: Channel[str] = Channel("cancel-woken-get")
        first = asyncio.create_task(channel.get())
        assert await until(lambda: waiters(channel, "receive") == 1)
        second = asyncio.create_task(channel.get())
        assert await until(lambda: waiters(channel, "receive") == 2)
        channel.put_nowait("item")  # wakes the first getter...
        first.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await asyncio.wait_for(second, 1) == "item"
        assert channel.empty()
        assert channel.record()["received"] == 1

    run(main())


def test_cancelled_putter_leaves_the_waiters_and_puts_nothing() -> None:
    """A cancelled ``put`` is no longer a waiter and its item never enters the channel."""

    async def main() -> None:
        channel: Channel[int] = Channel("cancel-put", maxsize=1)
        channel.put_nowait(1)
        putter = asyncio.create_task(channel.put(2))
        assert await until(lambda: waiters(channel, "send") == 1)
        putter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await putter
        assert waiters(channel, "send") == 0
        assert channel.get_nowait() == 1
        assert channel.empty()
        assert channel.record()["sent"] == 1

    run(main())


def test_putter_cancelled_after_being_woken_passes_the_room_to_the_next_putter() -> None:
    """A putter woken for room but cancelled before using it lets the next putter in."""

    async def main() -> None:
        channel: Channel[str] = Channel("cancel-woken-put", maxsize=1)
        channel.put_nowait("a")
        first = asyncio.create_task(channel.put("b"))
        assert await until(lambda: waiters(channel, "send") == 1)
        second = asyncio.create_task(channel.put("c"))
        assert await until(lambda: waiters(channel, "send") == 2)
        assert channel.get_nowait() == "a"  # wakes the first putter...
        first.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 1)
        assert channel.get_nowait() == "c"
        assert channel.empty()

    run(main())
