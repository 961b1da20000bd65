"""Threads seen from inside (``source="sdk"``): real threads parked on real primitives."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import drainwatch
import pytest
from drainwatch import _runtime
from drainwatch._thread_tracker import ThreadTracker
from drainwatch._tracking import exact_waits

from .conftest import wait_until

# Waits inside C code are told apart by the thread's system call, read from /proc (which
# the chroot of the Python 3.13 run does not mount).
needs_proc = pytest.mark.skipif(
    not os.path.isdir(f"/proc/self/task/{threading.get_native_id()}"),
    reason="needs /proc/self/task (Linux, with /proc mounted)",
)


def sample(tracker: ThreadTracker | None = None, settled: bool = False) -> dict[str, Any]:
    tracker = tracker or ThreadTracker()
    _, stamps = exact_waits(_runtime.current().channel_refs().values())
    return tracker.sample(stamps, time.time(), time.monotonic(), settled=settled)


def listed(record: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((entry for entry in record["top"] if entry["thread"] == name), None)


@contextmanager
def parked(target: Callable[[], object], release: Callable[[], object]) -> Iterator[str]:
    """A daemon thread named ``subject`` running ``target`` until ``release`` frees it."""
    thread = threading.Thread(target=target, name="subject", daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: listed(sample(), "subject") is not None, timeout=3)
        yield "subject"
    finally:
        release()
        thread.join(3)
        assert not thread.is_alive()


def test_a_thread_in_a_thread_channel_waits_with_the_channel_name_since_its_stamp() -> None:
    """ThreadChannel.get is channel_receive on that channel, timed from the channel's stamp."""
    jobs: drainwatch.ThreadChannel[int] = drainwatch.ThreadChannel("jobs")
    with parked(jobs.get, lambda: jobs.put(1)):
        time.sleep(0.2)
        entry = listed(sample(), "subject")
    assert entry is not None
    assert (entry["reason"], entry["target"]) == ("channel_receive", "jobs")
    assert entry["wait"] >= 0.2


def test_a_thread_blocked_putting_into_a_full_thread_channel_is_channel_send() -> None:
    """ThreadChannel.put on a full channel is channel_send."""
    full: drainwatch.ThreadChannel[int] = drainwatch.ThreadChannel("full", maxsize=1)
    full.put(0)
    with parked(lambda: full.put(1), full.get):
        entry = listed(sample(), "subject")
    assert entry is not None and (entry["reason"], entry["target"]) == ("channel_send", "full")


def _stdlib_scenarios() -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    jobs: queue.Queue[int] = queue.Queue()
    lock = threading.Lock()
    lock.acquire()
    event = threading.Event()
    return {
        "queue_get": (jobs.get, lambda: jobs.put(1)),
        "lock": (lock.acquire, lock.release),
        "event": (event.wait, event.set),
    }


@pytest.mark.parametrize("reason", ["queue_get", pytest.param("lock", marks=needs_proc), "event"])
def test_a_thread_parked_on_a_stdlib_primitive_is_classified(reason: str) -> None:
    """queue.Queue.get, Lock.acquire and Event.wait are named from the frames and kernel."""
    target, release = _stdlib_scenarios()[reason]
    with parked(target, release):
        entry = listed(sample(), "subject")
    assert entry is not None and entry["reason"] == reason
    assert entry["stack"] and entry["site"]


@needs_proc
def test_a_sleeping_thread_is_told_from_its_system_call() -> None:
    """time.sleep leaves no frame of its own: the thread's system call says sleep."""

    def doze() -> None:
        time.sleep(1.5)

    with parked(doze, lambda: None):
        entry = listed(sample(), "subject")
    assert entry is not None and entry["reason"] == "sleep"


def test_waits_at_one_place_grow_from_sample_to_sample() -> None:
    """Without a stamp, a thread's wait counts from the first sample that saw it there."""
    tracker = ThreadTracker()
    event = threading.Event()
    with parked(event.wait, event.set):
        first = listed(sample(tracker), "subject")
        time.sleep(0.2)
        second = listed(sample(tracker), "subject")
    assert first is not None and second is not None
    assert first["wait"] < 0.05 and second["wait"] >= 0.2


@needs_proc
def test_a_wait_told_by_the_kernel_alone_is_listed_once_seen_twice_at_one_place() -> None:
    """Snapshots list a C-level lock wait only from its second sample at the same place."""
    tracker = ThreadTracker()
    lock = threading.Lock()
    lock.acquire()
    with parked(lock.acquire, lock.release):
        first = listed(sample(tracker, settled=True), "subject")
        second = listed(sample(tracker, settled=True), "subject")
    assert first is None
    assert second is not None and second["reason"] == "lock"


def test_running_and_calling_threads_are_counted_but_not_listed() -> None:
    """The sampling thread and threads that run are not listed as waiting."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    spinner = threading.Thread(target=spin, name="spinner", daemon=True)
    spinner.start()
    try:
        tracker = ThreadTracker()
        record = sample(tracker, settled=True)
        for _ in range(20):  # a spinner waiting for the GIL looks blocked for an instant
            time.sleep(0.01)  # and runs on between two samples
            record = sample(tracker, settled=True)
            assert "spinner" not in {entry["thread"] for entry in record["top"]}
    finally:
        stop.set()
        spinner.join(3)
    names = {entry["thread"] for entry in record["top"]}
    assert threading.current_thread().name not in names
    assert "spinner" not in names
    assert record["threads"] >= 2
