"""Which event loops are watched, and the ``loop`` and ``threads`` records they produce.

A loop is watched when ``drainwatch.configure()`` is called inside it (with tracking on), or,
under ``drainwatch run``, as soon as it starts running. Watching a loop means a
:class:`~._task_tracker.TaskTracker` for its tasks and a :class:`~._loop_lag.LagMonitor` for
its lag. The reporter thread calls :func:`check_stalls` between snapshots (every probe
interval, so a blocked loop's stack is read while the block lasts) and :func:`records` with
every snapshot. Threads are sampled with every snapshot while tracking is on.

To tell lag from a loop that merely stopped (``run_until_complete`` returned, to be called
again later), ``asyncio.events._set_running_loop`` (which every asyncio loop calls when it
starts and stops running) is wrapped once the first loop is watched: a stopped loop's probe
is paused. Nothing here runs at import time, and nothing raises into the application.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import _runtime
from ._loop_lag import LagMonitor
from ._protocol import MAX_NAME_CHARS, clip, fit
from ._settings import Settings
from ._task_tracker import TaskTracker
from ._task_waits import ExactWait
from ._thread_tracker import ThreadTracker, ThreadWaitStamp

if TYPE_CHECKING:
    from ._channel_base import ChannelBase

ChannelRefs = Iterable["weakref.ref[ChannelBase]"]


# Task sampling runs on the reporter thread, which holds the GIL while it works: it takes
# at most this share of the time, whatever the number of tasks (a sample of 10,000 tasks
# takes some 50 ms, so such a loop is sampled every 5 s instead of every snapshot).
TASK_SAMPLING_SHARE = 0.01


class LoopWatch:
    """One watched loop: its tasks and its lag, under a number unique in the process."""

    def __init__(self, loop: asyncio.AbstractEventLoop, number: int, threshold: float) -> None:
        self.loop = weakref.ref(loop)
        self.number = number
        self.thread = _thread_name()
        self.tasks = TaskTracker(loop)
        self.lag = LagMonitor(loop, threshold)
        self._last_tasks: dict[str, Any] | None = None
        self._next_sample = 0.0  # time.monotonic()

    def record(
        self, exact: dict[int, ExactWait], now: float, mono: float, fresh: bool = False
    ) -> dict[str, Any]:
        """This loop's ``loop`` record (docs/protocol.md), cut to fit a datagram. Its tasks
        are sampled anew unless that would exceed ``TASK_SAMPLING_SHARE`` of the time since
        the last sample (``fresh`` samples anyway); ``sampled_at`` says when."""
        loop = self.loop()
        record: dict[str, Any] = {
            "type": "loop",
            "id": self.number,
            "thread": self.thread,
            "running": loop is not None and loop.is_running(),
            "closed": loop is None or loop.is_closed(),
        }
        tasks = self._last_tasks
        if tasks is None or fresh or mono >= self._next_sample or record["closed"]:
            # The reporter's CPU time, not wall time: waiting for the GIL costs the loop nothing.
            started = time.thread_time()
            tasks = self._last_tasks = self.tasks.sample(exact, now, mono)
            cost = time.thread_time() - started
            self._next_sample = time.monotonic() + cost / TASK_SAMPLING_SHARE
        # fit() shortens the lists of this record, never the kept sample's
        record.update(
            {key: list(value) if isinstance(value, list) else value for key, value in tasks.items()}
        )
        record.update(self.lag.fields())
        fit(record, ("sites", "stalls", "top"))
        return record


def _thread_name() -> str:
    return clip(threading.current_thread().name, MAX_NAME_CHARS) or "?"


def exact_waits(refs: ChannelRefs) -> tuple[dict[int, ExactWait], dict[int, ThreadWaitStamp]]:
    """Who waits on which channel, from the channels themselves: waiter futures of tasks,
    and idents of threads (with the start each channel stamped)."""
    futures: dict[int, ExactWait] = {}
    threads: dict[int, ThreadWaitStamp] = {}
    for ref in refs:
        channel = ref()
        if channel is None:
            continue
        try:
            waiting = channel.waiting_now()
        except Exception:  # a channel mid-teardown: its waiters are classified by frames
            waiting = []
        for reason, who, started in waiting:
            if isinstance(who, int):
                if started is not None:
                    threads[who] = ThreadWaitStamp(reason, channel.name, started)
            else:
                futures[id(who)] = ExactWait(who, reason, channel.name, started)
    return futures, threads


class Tracking:
    """The process-wide registry of watched loops (``TRACKING``); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[int, LoopWatch] = {}  # id(loop) -> its watch
        self._running_in: dict[int, LoopWatch] = {}  # thread ident -> watched loop running there
        self._numbers = itertools.count(1)
        self._threads = ThreadTracker()
        self._auto = False  # `drainwatch run`: watch every loop as it starts running
        self._hooked = False

    def _watched(self, loop: asyncio.AbstractEventLoop) -> LoopWatch | None:
        watch = self._watches.get(id(loop))
        return watch if watch is not None and watch.loop() is loop else None

    def watch(self, loop: asyncio.AbstractEventLoop, threshold: float) -> None:
        """Watch ``loop``; call on its thread while it runs. A new threshold restarts the
        probe; watching twice is a no-op."""
        self._hook_running_loop()
        with self._lock:
            watch = self._watched(loop)
            if watch is not None and watch.lag.threshold == threshold:
                return
            if watch is not None:
                watch.lag.stop()
                watch.lag = LagMonitor(loop, threshold)
            else:
                watch = self._watches[id(loop)] = LoopWatch(loop, next(self._numbers), threshold)
            self._running_in[threading.get_ident()] = watch
        watch.lag.start()
        _runtime.retick()

    def apply(self, settings: Settings) -> None:
        """New settings from ``configure()``: watch the loop running in this thread, if any
        and if tracking is on; stop watching everything if tracking or reporting is off."""
        if not (settings.enabled and settings.tracking):
            self.unwatch_all()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self.watch(loop, settings.lag_threshold)

    def watch_loops_as_they_start(self) -> None:
        """``drainwatch run``: every loop is watched once it starts running (and the loop
        running now in this thread, if any)."""
        self._auto = True
        self._hook_running_loop()
        settings = _runtime.current().settings
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if settings.enabled and settings.tracking:
            self.watch(loop, settings.lag_threshold)

    def unwatch_all(self) -> None:
        with self._lock:
            watches = list(self._watches.values())
            self._watches.clear()
            self._running_in.clear()
        for watch in watches:
            watch.lag.stop()

    def _hook_running_loop(self) -> None:
        with self._lock:
            if self._hooked:
                return
            self._hooked = True
        events = asyncio.events
        original = events._set_running_loop

        def _set_running_loop(loop: asyncio.AbstractEventLoop | None) -> None:
            original(loop)
            try:
                self._running_loop_changed(loop)
            except Exception:  # tracking must never stop a loop from starting or stopping
                _runtime.note_internal_error()

        events._set_running_loop = _set_running_loop

    def _running_loop_changed(self, loop: asyncio.AbstractEventLoop | None) -> None:
        ident = threading.get_ident()
        if loop is None:
            with self._lock:
                stopped = self._running_in.pop(ident, None)
            if stopped is not None:
                stopped.lag.pause()
            return
        with self._lock:
            watch = self._watched(loop)
            if watch is not None:
                self._running_in[ident] = watch
                watch.thread = _thread_name()
                watch.lag.thread_id = ident
        if watch is not None:
            watch.lag.resume()
            _runtime.retick()
            return
        if self._auto:
            settings = _runtime.current().settings
            if settings.enabled and settings.tracking:
                self.watch(loop, settings.lag_threshold)

    def next_check(self) -> float | None:
        """When (``time.monotonic()``) the reporter should next call :meth:`check_stalls`;
        ``None`` with no loop watched."""
        with self._lock:
            watches = list(self._watches.values())
        return min((watch.lag.next_check() for watch in watches), default=None)

    def check_stalls(self) -> None:
        """Capture the stack of every watched loop blocked past its threshold right now."""
        with self._lock:
            watches = list(self._watches.values())
        for watch in watches:
            try:
                watch.lag.check()
            except Exception:
                _runtime.note_internal_error()

    def records(self, settings: Settings, refs: ChannelRefs) -> list[dict[str, Any]]:
        """A ``loop`` record per watched loop and one ``threads`` record; nothing with
        tracking off. A closed (or collected) loop is reported once more, closed, then
        forgotten."""
        if not settings.tracking:
            return []
        now, mono = time.time(), time.monotonic()
        futures, threads = exact_waits(refs)
        with self._lock:
            watches = list(self._watches.items())
        found = []
        for key, watch in watches:
            record = watch.record(futures, now, mono)
            found.append(record)
            if record["closed"]:
                watch.lag.stop()
                with self._lock:
                    if self._watches.get(key) is watch:
                        del self._watches[key]
        thread_record = self._threads.sample(threads, now, mono)
        fit(thread_record, ("top",))
        found.append(thread_record)
        return found

    def sample_now(self, refs: ChannelRefs, skip: Iterable[int] = ()) -> list[dict[str, Any]]:
        """For ``dump_tasks()``: every watched loop, the loop running in the calling thread
        even when it is not watched, and the threads but those in ``skip`` (drainwatch's
        own). Forgets nothing."""
        now, mono = time.time(), time.monotonic()
        futures, threads = exact_waits(refs)
        with self._lock:
            watches = list(self._watches.values())
        found = [watch.record(futures, now, mono, fresh=True) for watch in watches]
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and all(watch.loop() is not loop for watch in watches):
            record: dict[str, Any] = {
                "type": "loop",
                "id": 0,
                "thread": _thread_name(),
                "running": True,
                "closed": False,
            }
            record.update(TaskTracker(loop).sample(futures, now, mono))
            found.append(record)
        found.append(self._threads.sample(threads, now, mono, skip, settled=False))
        return found

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's loops and threads are not this process's."""
        self._lock = threading.Lock()
        self._threads = ThreadTracker()
        self._watches.clear()
        self._running_in.clear()


TRACKING = Tracking()
