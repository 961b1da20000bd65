"""``ThreadChannel``: a ``queue.Queue`` drop-in with Go / CPython 3.13 close semantics.

One lock and three conditions as in ``queue.Queue``, but a condition is notified only when
someone waits on it (``Condition.notify`` costs more than the whole put otherwise), and the
lock is entered directly rather than through the condition's Python-level ``__enter__``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from ._caller import caller_location, current_actor
from ._channel_base import ChannelBase, Waiter

T = TypeVar("T")

_EXHAUSTED = object()  # sentinel: closed and drained, for iteration


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class ThreadChannel(ChannelBase, Generic[T]):
    """A named thread-safe channel that records its close, drain and waits for drainwatch.

    Same close semantics as ``Channel``: after ``close()`` buffered items stay readable,
    then ``get`` raises ``ChannelClosed`` (every blocked getter is woken at once) and
    ``for item in channel`` ends; ``put`` on a closed channel raises and is counted.
    """

    kind = "thread"

    __slots__ = (
        "_all_done",
        "_get_waits",
        "_mutex",
        "_not_empty",
        "_not_full",
        "_put_waits",
        "_unfinished",
    )

    def __init__(
        self, name: str, maxsize: int = 0, *, owner: str | None = None, strict: bool = False
    ) -> None:
        self._mutex = threading.Lock()
        self._not_empty = threading.Condition(self._mutex)
        self._not_full = threading.Condition(self._mutex)
        self._all_done = threading.Condition(self._mutex)
        # (start time (monotonic), thread ident) of current waits, oldest first: the
        # waiter's own stamp, which the thread tracker reads to say who waits here since when.
        self._get_waits: deque[tuple[float, int]] = deque()
        self._put_waits: deque[tuple[float, int]] = deque()
        self._unfinished = 0
        self._init_state(name, maxsize, owner, strict)

    # -- sending -----------------------------------------------------------------------------

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        """Put an item, as ``queue.Queue.put``; ``ChannelClosed`` if closed (also while
        waiting for room), ``queue.Full`` if still full after ``timeout``."""
        with self._mutex:
            if not self._closed:
                buffer = self._buffer
                if 0 < self._maxsize <= len(buffer):
                    if not block:
                        raise queue.Full
                    self._wait_for_room(timeout)
                if not self._closed:
                    buffer.append(item)
                    self._sent += 1
                    self._unfinished += 1
                    if self._get_waits:
                        self._not_empty.notify()
                    return
            self._send_after_close += 1
        self._after_close_event("send_after_close")
        raise self._closed_error("put")

    def put_nowait(self, item: T) -> None:
        self.put(item, block=False)

    def _wait_for_room(self, timeout: float | None) -> None:
        _check_timeout(timeout)
        started = time.monotonic()
        stamp = (started, threading.get_ident())
        self._put_waits.append(stamp)
        try:
            if timeout is None:
                while 0 < self._maxsize <= len(self._buffer) and not self._closed:
                    self._not_full.wait()
            else:
                deadline = started + timeout
                while 0 < self._maxsize <= len(self._buffer) and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise queue.Full
                    self._not_full.wait(remaining)
        finally:
            self._put_waits.remove(stamp)
            self._wait_send.observe(time.monotonic() - started)

    # -- receiving ---------------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """Get an item, as ``queue.Queue.get``; ``ChannelClosed`` once closed and drained
        (counted as a read after close), ``queue.Empty`` if still empty after ``timeout``."""
        item = self._take(block, timeout)
        if item is _EXHAUSTED:
            self._after_close_event("read_after_close")
            raise self._closed_error("get")
        return item  # type: ignore[return-value]

    def get_nowait(self) -> T:
        return self.get(block=False)

    def _take(self, block: bool, timeout: float | None, counted: bool = True) -> object:
        drained = False
        with self._mutex:
            buffer = self._buffer
            if not buffer:
                if not self._closed:
                    if not block:
                        raise queue.Empty
                    self._wait_for_item(timeout)
                if not buffer:  # closed and drained
                    if counted:
                        self._read_after_close += 1
                    return _EXHAUSTED
            item = buffer.popleft()
            self._received += 1
            if self._put_waits:
                self._not_full.notify()
            drained = self._closed and not buffer
        if drained:
            self._note_drained()
        return item

    def _wait_for_item(self, timeout: float | None) -> None:
        _check_timeout(timeout)
        started = time.monotonic()
        stamp = (started, threading.get_ident())
        self._get_waits.append(stamp)
        try:
            if timeout is None:
                while not self._buffer and not self._closed:
                    self._not_empty.wait()
            else:
                deadline = started + timeout
                while not self._buffer and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise queue.Empty
                    self._not_empty.wait(remaining)
        finally:
            self._get_waits.remove(stamp)
            self._wait_receive.observe(time.monotonic() - started)

    def __iter__(self) -> Iterator[T]:
        """Yield items until the channel is closed and drained; that end is not an error."""
        while True:
            item = self._take(True, None, counted=False)
            if item is _EXHAUSTED:
                return
            yield item  # type: ignore[misc]

    # -- completion --------------------------------------------------------------------------

    def task_done(self) -> None:
        with self._mutex:
            if self._unfinished <= 0:
                raise ValueError("task_done() called too many times")
            self._unfinished -= 1
            if self._unfinished == 0:
                self._all_done.notify_all()

    def join(self) -> None:
        """Block until every put item was marked done (or discarded by an immediate close)."""
        with self._mutex:
            while self._unfinished:
                self._all_done.wait()

    # -- closing -----------------------------------------------------------------------------

    def close(self, immediate: bool = False) -> None:
        """Close the channel; idempotent (a repeat is counted as a double close).

        Wakes every blocked ``get`` and ``put`` at once. ``immediate=True`` discards
        buffered items (counted) and releases ``join()``.
        """
        actor, location = current_actor(), caller_location()
        with self._mutex:
            double = self._closed
            if double:
                self._double_close += 1
            else:
                discarded = self._mark_closed(immediate, actor, location)
                if discarded:
                    self._unfinished = max(0, self._unfinished - discarded)
                    if self._unfinished == 0:
                        self._all_done.notify_all()
                self._not_empty.notify_all()
                self._not_full.notify_all()
        if double:
            self._emit("double_close")
            if self._strict:
                raise self._double_close_error()
            return
        self._emit("closed")

    shutdown = close

    def _waiting(self) -> tuple[int, int, float, float]:
        now = time.monotonic()
        return (
            len(self._put_waits),
            len(self._get_waits),
            _oldest(self._put_waits, now),
            _oldest(self._get_waits, now),
        )

    def waiting_now(self) -> Sequence[Waiter]:
        return [("channel_send", ident, started) for started, ident in list(self._put_waits)] + [
            ("channel_receive", ident, started) for started, ident in list(self._get_waits)
        ]


def _oldest(starts: deque[tuple[float, int]], now: float) -> float:
    try:
        return max(0.0, now - starts[0][0])
    except IndexError:  # the last waiter left while the reporter looked
        return 0.0
