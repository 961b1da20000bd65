"""``watch_queue``: instrument an existing ``asyncio.Queue`` or ``queue.Queue`` in place.

For code that cannot swap its queue for a ``Channel``: put/get counts, depth and waiters
are observed by wrapping the queue's own ``_put``/``_get`` hooks on the instance (the class
is untouched). On Python 3.13+ the native ``shutdown`` is recorded as a close, with the
same residual/drained/after-close bookkeeping as a ``Channel``. The age of the oldest
waiter is sampled by the reporter (resolution: the snapshot interval), because the
stdlib queue does not stamp its waits.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence, Sized
from typing import Any, TypeVar

from ._caller import caller_location, current_actor
from ._channel_base import ChannelBase, Waiter
from ._clock import steady_time

Q = TypeVar("Q", bound=asyncio.Queue[Any] | queue.Queue[Any])

_ATTRIBUTE = "_drainwatch_watch"


class QueueWatch(ChannelBase):
    """The drainwatch record of a watched stdlib queue; held by the queue itself."""

    __slots__ = ("_first_seen", "_getters_of", "_putters_of", "_queue_ref")

    def __init__(
        self, target: asyncio.Queue[Any] | queue.Queue[Any], name: str, owner: str | None
    ) -> None:
        self._queue_ref = weakref.ref(target)
        self._first_seen: dict[int, float] = {}
        if isinstance(target, asyncio.Queue):
            self._getters_of: Callable[[], Sized] = lambda: getattr(target, "_getters", ())
            self._putters_of: Callable[[], Sized] = lambda: getattr(target, "_putters", ())
        else:
            self._getters_of = lambda: getattr(target.not_empty, "_waiters", ())
            self._putters_of = lambda: getattr(target.not_full, "_waiters", ())
        self._init_state(name, target.maxsize, owner, strict=False)

    def qsize(self) -> int:
        # Lock-free: the hooks run inside queue.Queue's own (non-reentrant) mutex, and
        # the reporter thread must never wait on the application's queue.
        target = self._queue_ref()
        if target is None:
            return 0
        if isinstance(target, queue.Queue):
            return target._qsize()
        return target.qsize()

    def record(self, trigger: str = "snapshot") -> dict[str, Any]:
        record = super().record(trigger)
        record["kind"] = self._kind_name()
        record["depth"] = self.qsize()
        return record

    def _kind_name(self) -> str:
        target = self._queue_ref()
        return "asyncio_queue" if isinstance(target, asyncio.Queue) else "thread_queue"

    def _waiting(self) -> tuple[int, int, float, float]:
        now = time.monotonic()
        putters = list(self._putters_of())  # type: ignore[call-overload]
        getters = list(self._getters_of())  # type: ignore[call-overload]
        seen = self._first_seen
        present = {id(waiter) for waiter in putters} | {id(waiter) for waiter in getters}
        for key in list(seen):
            if key not in present:
                del seen[key]
        for key in present:
            seen.setdefault(key, now)

        def oldest(waiters: list[Any]) -> float:
            starts = [seen[id(waiter)] for waiter in waiters]
            return now - min(starts) if starts else 0.0

        return len(putters), len(getters), oldest(putters), oldest(getters)

    def waiting_now(self) -> Sequence[Waiter]:
        # Only an asyncio queue's waiters say who waits (futures of the waiting tasks); a
        # thread queue's are anonymous locks. The queue does not stamp its waits.
        if not isinstance(self._queue_ref(), asyncio.Queue):
            return []
        putters = list(self._putters_of())  # type: ignore[call-overload]
        getters = list(self._getters_of())  # type: ignore[call-overload]
        return [("queue_put", future, None) for future in putters] + [
            ("queue_get", future, None) for future in getters
        ]

    # -- hooks installed on the queue instance ----------------------------------------------

    def on_put(self) -> None:
        self._sent += 1

    def on_get(self, discarding: bool) -> None:
        if discarding:
            return  # an immediate shutdown empties the queue: counted as discarded
        self._received += 1
        if self._closed and self.qsize() == 0:
            self._note_drained()

    def on_shutdown(self, immediate: bool, actor: str, location: str) -> None:
        if self._closed:
            self._double_close += 1
            if immediate:
                # A graceful shutdown followed by an immediate one: the queue discards
                # whatever is still buffered right after this.
                remaining = self.qsize()
                self._discarded += remaining
                self._immediate = True
                if self._drained_at is None:
                    self._drained_at = steady_time()
            self._emit("double_close")
            return
        # The queue's own shutdown() discards the items right after this.
        self._mark_closed(immediate, actor, location)
        self._emit("closed")

    def on_shut_down_error(self, op: str, error: BaseException) -> None:
        if getattr(error, "_drainwatch_counted", False):
            return  # raised by an inner call that was already counted
        try:
            error._drainwatch_counted = True  # type: ignore[attr-defined]
        except AttributeError:
            pass
        if op == "put":
            self._send_after_close += 1
            self._after_close_event("send_after_close")
        else:
            self._read_after_close += 1
            self._after_close_event("read_after_close")


def watch_queue(target: Q, name: str, *, owner: str | None = None) -> Q:
    """Instrument ``target`` in place and return it; watching twice is a no-op.

    Raises ``TypeError`` for anything but an ``asyncio.Queue`` or ``queue.Queue`` (or a
    subclass such as ``PriorityQueue``).
    """
    if not isinstance(target, asyncio.Queue | queue.Queue):
        raise TypeError(
            f"watch_queue() takes an asyncio.Queue or queue.Queue, not {type(target).__name__}; "
            "use drainwatch.Channel or drainwatch.ThreadChannel for new code"
        )
    if getattr(target, _ATTRIBUTE, None) is not None:
        return target
    watch = QueueWatch(target, name, owner)
    setattr(target, _ATTRIBUTE, watch)
    _hook_put_get(target, watch)
    if hasattr(target, "shutdown"):
        _hook_shutdown(target, watch)
    return target


def _hook_put_get(target: asyncio.Queue[Any] | queue.Queue[Any], watch: QueueWatch) -> None:
    original_put = target._put
    original_get = target._get
    discarding = threading.local()

    def counted_put(item: Any) -> None:
        original_put(item)
        watch.on_put()

    def counted_get() -> Any:
        item = original_get()
        watch.on_get(getattr(discarding, "active", False))
        return item

    target._put = counted_put  # type: ignore[method-assign]
    target._get = counted_get  # type: ignore[method-assign]
    target._drainwatch_discarding = discarding  # type: ignore[union-attr]


def _hook_shutdown(target: asyncio.Queue[Any] | queue.Queue[Any], watch: QueueWatch) -> None:
    """Python 3.13+: record ``shutdown`` and count the ``ShutDown`` errors it causes."""
    discarding: threading.local = target._drainwatch_discarding  # type: ignore[union-attr]
    original_shutdown = target.shutdown  # type: ignore[union-attr]
    shut_down_errors: tuple[type[BaseException], ...] = tuple(
        error
        for error in (getattr(asyncio, "QueueShutDown", None), getattr(queue, "ShutDown", None))
        if isinstance(error, type)
    )

    @functools.wraps(original_shutdown)
    def shutdown(immediate: bool = False) -> None:
        watch.on_shutdown(immediate, current_actor(), caller_location())
        discarding.active = immediate
        try:
            original_shutdown(immediate)
        finally:
            discarding.active = False

    target.shutdown = shutdown  # type: ignore[union-attr]

    def counting(op: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except shut_down_errors as error:
                watch.on_shut_down_error(op, error)
                raise

        return call

    def counting_async(op: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return await method(*args, **kwargs)
            except shut_down_errors as error:
                watch.on_shut_down_error(op, error)
                raise

        return call

    if isinstance(target, asyncio.Queue):
        target.put_nowait = counting("put", target.put_nowait)  # type: ignore[method-assign]
        target.get_nowait = counting("get", target.get_nowait)  # type: ignore[method-assign]
        target.put = counting_async("put", target.put)  # type: ignore[method-assign]
        target.get = counting_async("get", target.get)  # type: ignore[method-assign]
    else:
        # queue.Queue's put_nowait/get_nowait call self.put/self.get, which are these.
        target.put = counting("put", target.put)  # type: ignore[method-assign]
        target.get = counting("get", target.get)  # type: ignore[method-assign]
