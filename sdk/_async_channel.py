"""``Channel``: an ``asyncio.Queue`` drop-in with Go / CPython 3.13 close semantics.

Implemented directly rather than as an ``asyncio.Queue`` subclass: calling ``super()`` on
the hot path costs about twice the queue itself, while a direct implementation with plain
attributes is cheaper than the stdlib queue (see ``docs/performance.md``). Like
``asyncio.Queue`` it is not thread-safe: use it from its event loop's thread, and use
``ThreadChannel`` between threads.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from typing import Generic, TypeVar

from ._caller import caller_location, current_actor
from ._channel_base import ChannelBase, Waiter

T = TypeVar("T")

_Waiters = deque[tuple["asyncio.Future[None]", float]]


def _wake_next(waiters: _Waiters) -> None:
    while waiters:
        waiter = waiters.popleft()[0]
        if not waiter.done():
            waiter.set_result(None)
            return


def _wake_all(waiters: _Waiters) -> None:
    while waiters:
        waiter = waiters.popleft()[0]
        if not waiter.done():
            waiter.set_result(None)


class Channel(ChannelBase, Generic[T]):
    """A named asyncio channel that records its close, drain and waits for drainwatch.

    ``close()`` is graceful: buffered items stay readable, then ``get`` raises
    ``ChannelClosed`` and ``async for`` ends. ``put`` on a closed channel raises
    ``ChannelClosed`` and is counted, never silently dropped. A second ``close`` is
    counted (and raises with ``strict=True``). ``owner`` names the task or component that
    is meant to close it.
    """

    kind = "asyncio"

    __slots__ = ("_finished", "_getters", "_putters", "_unfinished")

    def __init__(
        self, name: str, maxsize: int = 0, *, owner: str | None = None, strict: bool = False
    ) -> None:
        self._getters: _Waiters = deque()
        self._putters: _Waiters = deque()
        self._unfinished = 0
        self._finished: asyncio.Event | None = None
        self._init_state(name, maxsize, owner, strict)

    # -- sending -----------------------------------------------------------------------------

    def put_nowait(self, item: T) -> None:
        """Put without waiting; ``asyncio.QueueFull`` when full, ``ChannelClosed`` when closed."""
        if self._closed:
            self._send_after_close += 1
            self._after_close_event("send_after_close")
            raise self._closed_error("put")
        buffer = self._buffer
        if 0 < self._maxsize <= len(buffer):
            raise asyncio.QueueFull
        buffer.append(item)
        self._sent += 1
        self._unfinished += 1
        if self._getters:
            _wake_next(self._getters)

    async def put(self, item: T) -> None:
        """Put, waiting for room; a close while waiting raises ``ChannelClosed``."""
        buffer = self._buffer
        while 0 < self._maxsize <= len(buffer) and not self._closed:
            putter = asyncio.get_running_loop().create_future()
            entry = (putter, time.monotonic())
            self._putters.append(entry)
            try:
                await putter
            except BaseException:
                putter.cancel()
                try:
                    self._putters.remove(entry)
                except ValueError:
                    pass
                # Woken for a free slot but cancelled before taking it: pass the turn on.
                if not self.full() and not putter.cancelled():
                    _wake_next(self._putters)
                raise
            finally:
                self._wait_send.observe(time.monotonic() - entry[1])
        self.put_nowait(item)

    # -- receiving ---------------------------------------------------------------------------

    def get_nowait(self) -> T:
        """Get without waiting; ``asyncio.QueueEmpty`` when empty, ``ChannelClosed`` when
        closed and empty (counted as a read after close)."""
        buffer = self._buffer
        if not buffer:
            if self._closed:
                self._read_after_close += 1
                self._after_close_event("read_after_close")
                raise self._closed_error("get")
            raise asyncio.QueueEmpty
        item: T = buffer.popleft()
        self._received += 1
        if self._putters:
            _wake_next(self._putters)
        if not buffer and self._closed:
            self._note_drained()
        return item

    async def _wait_for_item(self) -> None:
        getter = asyncio.get_running_loop().create_future()
        entry = (getter, time.monotonic())
        self._getters.append(entry)
        try:
            await getter
        except BaseException:
            getter.cancel()
            try:
                self._getters.remove(entry)
            except ValueError:
                pass
            # Woken for an item but cancelled before taking it: pass the turn on.
            if self._buffer and not getter.cancelled():
                _wake_next(self._getters)
            raise
        finally:
            self._wait_receive.observe(time.monotonic() - entry[1])

    async def get(self) -> T:
        """Get, waiting for an item; ``ChannelClosed`` once closed and drained."""
        while not self._buffer and not self._closed:
            await self._wait_for_item()
        return self.get_nowait()

    def __aiter__(self) -> Channel[T]:
        return self

    async def __anext__(self) -> T:
        """Iteration ends when the channel is closed and drained; that end is not an error."""
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            await self._wait_for_item()
        return self.get_nowait()

    # -- completion --------------------------------------------------------------------------

    def task_done(self) -> None:
        """Mark one got item as processed, as ``asyncio.Queue.task_done``."""
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._finished is not None:
            self._finished.set()

    async def join(self) -> None:
        """Wait until every put item was marked done (or discarded by an immediate close)."""
        if self._unfinished > 0:
            finished = self._finished
            if finished is None or finished.is_set():
                finished = self._finished = asyncio.Event()
            await finished.wait()

    # -- closing -----------------------------------------------------------------------------

    def close(self, immediate: bool = False) -> None:
        """Close the channel; idempotent (a repeat is counted as a double close).

        Graceful by default: buffered items stay readable. ``immediate=True`` discards
        them (counted), releases ``join()``, and wakes every waiter, like
        ``asyncio.Queue.shutdown(immediate=True)`` on 3.13.
        """
        if self._closed:
            self._double_close += 1
            self._emit("double_close")
            if self._strict:
                raise self._double_close_error()
            return
        discarded = self._mark_closed(immediate, current_actor(), caller_location())
        if discarded:
            self._unfinished = max(0, self._unfinished - discarded)
            if self._unfinished == 0 and self._finished is not None:
                self._finished.set()
        _wake_all(self._getters)
        _wake_all(self._putters)
        self._emit("closed")

    shutdown = close

    def _waiting(self) -> tuple[int, int, float, float]:
        now = time.monotonic()
        return (
            len(self._putters),
            len(self._getters),
            _oldest(self._putters, now),
            _oldest(self._getters, now),
        )

    def waiting_now(self) -> Sequence[Waiter]:
        return [("channel_send", future, started) for future, started in list(self._putters)] + [
            ("channel_receive", future, started) for future, started in list(self._getters)
        ]


def _oldest(waiters: _Waiters, now: float) -> float:
    try:
        return max(0.0, now - waiters[0][1])
    except IndexError:  # emptied by the loop thread while the reporter looked
        return 0.0
