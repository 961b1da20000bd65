"""What every drainwatch channel records, and how it reports it.

The hot paths (``put_nowait``/``get_nowait`` and friends) live in the concrete classes and
touch only plain attributes; everything here runs on rare paths: close, after-close use,
snapshots taken by the reporter thread, and garbage collection.
"""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

from . import _runtime
from ._clock import steady_time
from ._errors import ChannelClosed
from ._histogram import WaitHistogram
from ._protocol import MAX_LOCATION_CHARS, MAX_NAME_CHARS, clip

_channel_ids = itertools.count(1)

# (reason, the waiting future or thread ident, start of the wait (time.monotonic()) when the
# channel stamps it); reasons as in drainwatch._task_waits.
Waiter = tuple[str, object, float | None]

# An after-close event is sent at once unless the same channel sent one this recently;
# a consumer spinning on a closed channel must not turn into a datagram flood. The
# cumulative counter still reaches the agent with the next (hastened) snapshot.
_AFTER_CLOSE_EVENT_GAP_SECONDS = 0.01


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f'channel "name" must be a non-empty string: {name!r}')
    return clip(name, MAX_NAME_CHARS)


def check_maxsize(maxsize: object) -> int:
    if isinstance(maxsize, bool) or not isinstance(maxsize, int):
        raise TypeError(f'channel "maxsize" must be an int (0 or less = unbounded): {maxsize!r}')
    return maxsize


class ChannelBase(ABC):
    """State shared by ``Channel`` and ``ThreadChannel``; not used directly."""

    kind: ClassVar[str] = "channel"

    __slots__ = (
        "__weakref__",
        "_buffer",
        "_closed",
        "_closed_at",
        "_closed_by",
        "_closed_where",
        "_created_at",
        "_discarded",
        "_double_close",
        "_drained_at",
        "_id",
        "_immediate",
        "_last_event_at",
        "_maxsize",
        "_name",
        "_owner",
        "_read_after_close",
        "_received",
        "_residual",
        "_send_after_close",
        "_sent",
        "_strict",
        "_wait_receive",
        "_wait_send",
    )

    def _init_state(self, name: object, maxsize: object, owner: str | None, strict: bool) -> None:
        self._name = check_name(name)
        self._maxsize = check_maxsize(maxsize)
        self._owner = clip(owner, MAX_NAME_CHARS) if owner else None
        self._strict = bool(strict)
        self._id = next(_channel_ids)
        self._buffer: deque[Any] = deque()
        self._closed = False
        self._immediate = False
        self._created_at = steady_time()
        self._closed_at: float | None = None
        self._drained_at: float | None = None
        self._closed_by: str | None = None
        self._closed_where: str | None = None
        self._residual: int | None = None
        self._sent = 0
        self._received = 0
        self._discarded = 0
        self._read_after_close = 0
        self._send_after_close = 0
        self._double_close = 0
        self._last_event_at = 0.0
        self._wait_send = WaitHistogram()
        self._wait_receive = WaitHistogram()
        _runtime.register(self)

    # -- public, read-only ---------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def maxsize(self) -> int:
        """Number of items allowed in the channel; 0 or less means unbounded."""
        return self._maxsize

    @property
    def closed(self) -> bool:
        """True once ``close()`` (or ``shutdown()``) has been called."""
        return self._closed

    def qsize(self) -> int:
        return len(self._buffer)

    def empty(self) -> bool:
        return not self._buffer

    def full(self) -> bool:
        return 0 < self._maxsize <= len(self._buffer)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<{type(self).__name__} {self._name!r} {state} depth={len(self._buffer)} "
            f"maxsize={self._maxsize}>"
        )

    # -- rare paths, called by the concrete classes -------------------------------------

    def _mark_closed(self, immediate: bool, actor: str, location: str) -> int:
        """Record the close; return how many buffered items an immediate close discards."""
        self._closed = True
        self._immediate = immediate
        self._closed_at = steady_time()
        self._closed_by = clip(actor, MAX_NAME_CHARS)
        self._closed_where = clip(location, MAX_LOCATION_CHARS)
        residual = self.qsize()
        self._residual = residual
        discarded = residual if immediate else 0
        if discarded:
            self._discarded += discarded
            self._buffer.clear()
        if discarded or not residual:
            self._drained_at = self._closed_at
        return discarded

    def _double_close_error(self) -> ChannelClosed:
        return ChannelClosed(
            f"channel {self._name!r} is already closed (strict=True makes a second close raise); "
            "close a channel once, from its owner"
        )

    def _closed_error(self, op: str) -> ChannelClosed:
        return ChannelClosed(f"{op} on closed channel {self._name!r}")

    def _after_close_event(self, trigger: str) -> None:
        now = time.monotonic()
        if now - self._last_event_at >= _AFTER_CLOSE_EVENT_GAP_SECONDS:
            self._last_event_at = now
            self._emit(trigger)
        else:
            _runtime.hasten()

    def _emit(self, trigger: str) -> None:
        """Send this channel's state now, from the calling thread. Never raises."""
        try:
            _runtime.emit(self.record(trigger))
        except Exception:  # instrumentation must never break the application
            _runtime.note_internal_error()

    def _note_drained(self) -> None:
        if self._drained_at is None:
            self._drained_at = steady_time()
            self._emit("drained")

    # -- reporting ---------------------------------------------------------------------------

    @abstractmethod
    def _waiting(self) -> tuple[int, int, float, float]:
        """(send waiters, receive waiters, oldest send wait s, oldest receive wait s)."""

    def waiting_now(self) -> Sequence[Waiter]:
        """Who is blocked on this channel now, for the task and thread trackers.

        Read from the reporter thread without the channel's lock: each waiter list is
        copied in one step (``list(deque)`` runs without releasing the GIL).
        """
        return []

    def record(self, trigger: str = "snapshot") -> dict[str, Any]:
        """This channel's state as a protocol v1 ``channel`` record (cumulative values)."""
        send_waiters, receive_waiters, oldest_send, oldest_receive = self._waiting()
        return {
            "type": "channel",
            "trigger": trigger,
            "id": self._id,
            "name": self._name,
            "kind": self.kind,
            "owner": self._owner,
            "capacity": max(self._maxsize, 0),
            "created": self._created_at,
            "closed": self._closed_at,
            "immediate": self._immediate,
            "closed_by": self._closed_by,
            "closed_where": self._closed_where,
            "drained": self._drained_at,
            "residual": self._residual,
            "depth": len(self._buffer),
            "sent": self._sent,
            "received": self._received,
            "discarded": self._discarded,
            "read_after_close": self._read_after_close,
            "send_after_close": self._send_after_close,
            "double_close": self._double_close,
            "waiters": {"send": send_waiters, "receive": receive_waiters},
            "oldest_wait": {"send": oldest_send, "receive": oldest_receive},
            "wait": {
                "send": self._wait_send.as_record(),
                "receive": self._wait_receive.as_record(),
            },
        }

    def __del__(self) -> None:
        # The final state of a collected channel still reaches the agent, so counters of
        # short-lived channels are never lost. At interpreter shutdown modules may already
        # be torn down; then there is nothing useful left to do.
        try:
            _runtime.retire(self._id, self.record("gone"))
        except Exception:  # noqa: S110 - a destructor must never raise
            pass
