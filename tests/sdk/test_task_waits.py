"""What a task waits on, from real asyncio primitives in a real loop, sampled from a thread.

Each scenario parks a task named ``subject`` on one primitive; the tracker samples the loop
from another thread (as the reporter does) and must name the primitive.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import drainwatch
import pytest
from drainwatch import _runtime
from drainwatch._task_tracker import TaskTracker
from drainwatch._task_waits import WAIT_REASONS
from drainwatch._tracking import exact_waits

from .conftest import run

Scenario = Callable[[], contextlib.AbstractAsyncContextManager[str | None]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(reason: str) -> Callable[[Scenario], Scenario]:
    def register(function: Scenario) -> Scenario:
        SCENARIOS[reason] = function
        return function

    return register


async def sample() -> dict[str, Any]:
    """A sample of the running loop's tasks, taken on another thread as the reporter does."""
    tracker = TaskTracker(asyncio.get_running_loop())
    futures, _ = exact_waits(_runtime.current().channel_refs().values())
    return await asyncio.to_thread(tracker.sample, futures, time.time(), time.monotonic())


def entry(found: dict[str, Any], name: str) -> dict[str, Any]:
    """The top entry of task ``name``, with its site's stack."""
    [top] = [item for item in found["top"] if item["task"] == name]
    [site] = [
        site for site in found["sites"] if any(task["name"] == name for task in site["tasks"])
    ]
    return {**top, "stack": site["stack"]}


@contextlib.asynccontextmanager
async def parked(
    coroutine: Awaitable[Any], name: str = "subject"
) -> AsyncIterator[asyncio.Task[Any]]:
    """Run ``coroutine`` as task ``name`` until it blocks; cancel it afterwards."""

    async def subject() -> None:
        await coroutine

    task = asyncio.create_task(subject(), name=name)
    for _ in range(5):
        await asyncio.sleep(0)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@scenario("lock")
@contextlib.asynccontextmanager
async def _lock() -> AsyncIterator[str | None]:
    lock = asyncio.Lock()
    await lock.acquire()

    async def enter() -> None:
        async with lock:
            pass

    async with parked(enter()):
        yield None


@scenario("event")
@contextlib.asynccontextmanager
async def _event() -> AsyncIterator[str | None]:
    async with parked(asyncio.Event().wait()):
        yield None


@scenario("condition")
@contextlib.asynccontextmanager
async def _condition() -> AsyncIterator[str | None]:
    condition = asyncio.Condition()

    async def wait() -> None:
        async with condition:
            await condition.wait()

    async with parked(wait()):
        yield None


@scenario("semaphore")
@contextlib.asynccontextmanager
async def _semaphore() -> AsyncIterator[str | None]:
    async with parked(asyncio.Semaphore(0).acquire()):
        yield None


@scenario("sleep")
@contextlib.asynccontextmanager
async def _sleep() -> AsyncIterator[str | None]:
    async with parked(asyncio.sleep(60)):
        yield None


@scenario("queue_get")
@contextlib.asynccontextmanager
async def _queue_get() -> AsyncIterator[str | None]:
    inbox: asyncio.Queue[int] = drainwatch.watch_queue(asyncio.Queue(), "inbox")
    async with parked(inbox.get()):
        yield "inbox"


@scenario("queue_put")
@contextlib.asynccontextmanager
async def _queue_put() -> AsyncIterator[str | None]:
    full: asyncio.Queue[int] = asyncio.Queue(1)
    full.put_nowait(1)
    async with parked(full.put(2)):
        yield None


@scenario("channel_receive")
@contextlib.asynccontextmanager
async def _channel_receive() -> AsyncIterator[str | None]:
    idle: drainwatch.Channel[int] = drainwatch.Channel("idle")
    async with parked(idle.get()):
        yield "idle"


@scenario("channel_send")
@contextlib.asynccontextmanager
async def _channel_send() -> AsyncIterator[str | None]:
    full: drainwatch.Channel[int] = drainwatch.Channel("full", maxsize=1)
    full.put_nowait(1)
    async with parked(full.put(2)):
        yield "full"


@scenario("socket")
@contextlib.asynccontextmanager
async def _socket() -> AsyncIterator[str | None]:
    left, right = socket.socketpair()
    left.setblocking(False)
    try:
        async with parked(asyncio.get_running_loop().sock_recv(left, 1)):
            yield None
    finally:
        left.close()
        right.close()


@scenario("stream")
@contextlib.asynccontextmanager
async def _stream() -> AsyncIterator[str | None]:
    left, right = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=left)
    try:
        async with parked(reader.read(1)):
            yield None
    finally:
        writer.close()
        right.close()


@scenario("subprocess")
@contextlib.asynccontextmanager
async def _subprocess() -> AsyncIterator[str | None]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)"
    )
    try:
        async with parked(child.wait()):
            yield None
    finally:
        child.kill()
        await child.wait()


@scenario("future")
@contextlib.asynccontextmanager
async def _future() -> AsyncIterator[str | None]:
    async with parked(asyncio.get_running_loop().create_future()):
        yield None


@scenario("task")
@contextlib.asynccontextmanager
async def _task() -> AsyncIterator[str | None]:
    other = asyncio.create_task(asyncio.sleep(60), name="awaited")
    try:
        async with parked(other):
            yield "awaited"
    finally:
        other.cancel()


class ForeignFuture:
    """A future from a library asyncio does not know: asyncio waits on it by duck typing.
    It never completes; cancelling it wakes the task with ``CancelledError``."""

    _asyncio_future_blocking = False

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._callbacks: list[Callable[..., object]] = []
        self._cancelled = False

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def add_done_callback(self, callback: Callable[..., object], **_: object) -> None:
        self._callbacks.append(callback)

    def remove_done_callback(self, callback: Callable[..., object]) -> int:
        return 0

    def cancel(self, msg: object = None) -> bool:
        self._cancelled = True
        for callback in self._callbacks:
            self._loop.call_soon(callback, self)
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._cancelled

    def result(self) -> None:
        raise asyncio.CancelledError

    def __await__(self) -> Generator[Any, None, None]:
        self._asyncio_future_blocking = True
        yield self
        self.result()


@scenario("unknown")
@contextlib.asynccontextmanager
async def _unknown() -> AsyncIterator[str | None]:
    async with parked(ForeignFuture(asyncio.get_running_loop())):
        yield None


def test_every_reason_but_grpc_has_a_real_primitive_here() -> None:
    """The scenarios cover each reason a task can wait for (grpc's is in the gRPC tests)."""
    assert set(SCENARIOS) == set(WAIT_REASONS) - {"grpc"}


@pytest.mark.parametrize("reason", sorted(SCENARIOS))
def test_a_task_parked_on_a_real_primitive_is_classified_with_its_target(reason: str) -> None:
    """A task blocked on each primitive is reported with that reason, its target and a stack."""

    async def main() -> dict[str, Any]:
        async with SCENARIOS[reason]() as target:
            found = entry(await sample(), "subject")
            found["expected_target"] = target
            return found

    found = run(main(), timeout=10)
    assert found["reason"] == reason
    assert found["target"] == found["expected_target"]
    assert found["stack"], "no frames"
    assert found["wait"] >= 0 and found["age"] >= 0


def test_a_channel_wait_is_exact_from_the_first_sample() -> None:
    """A channel stamps its waits: the first sample already knows how long the task waited."""

    async def main() -> tuple[dict[str, Any], float]:
        idle: drainwatch.Channel[int] = drainwatch.Channel("idle")
        async with parked(idle.get()):
            started = time.monotonic()
            await asyncio.sleep(0.3)
            return entry(await sample(), "subject"), time.monotonic() - started

    found, parked_for = run(main())
    assert 0.3 <= found["wait"] <= parked_for + 0.05


def test_other_waits_count_from_the_first_sample_that_saw_them() -> None:
    """Without a stamp, a wait is known from the first sample that saw the task there."""

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        tracker = TaskTracker(loop)
        async with parked(asyncio.Event().wait()):
            first = await asyncio.to_thread(tracker.sample, {}, time.time(), time.monotonic())
            await asyncio.sleep(0.25)
            second = await asyncio.to_thread(tracker.sample, {}, time.time(), time.monotonic())
        return entry(first, "subject")["wait"], entry(second, "subject")["wait"]

    first, second = run(main())
    assert first < 0.05
    assert second >= 0.25


def test_tasks_parked_at_one_place_form_one_site_with_their_names() -> None:
    """Three consumers on one channel are one site of three, named, with one stack."""

    async def consume(channel: drainwatch.Channel[int]) -> None:
        async for _ in channel:
            pass

    async def main() -> dict[str, Any]:
        idle: drainwatch.Channel[int] = drainwatch.Channel("idle")
        consumers = [asyncio.create_task(consume(idle), name=f"consumer-{i}") for i in range(3)]
        await asyncio.sleep(0.05)
        found = await sample()
        idle.close()
        await asyncio.gather(*consumers)
        return found

    found = run(main())
    [site] = [site for site in found["sites"] if site["reason"] == "channel_receive"]
    assert site["target"] == "idle" and site["count"] == 3
    assert sorted(task["name"] for task in site["tasks"]) == [f"consumer-{i}" for i in range(3)]
    assert any("consume" in frame for frame in site["stack"])
    assert found["blocked"]["channel_receive"] == 3


def test_the_sampling_task_itself_is_running_and_not_blocked() -> None:
    """The task that runs while the sample is taken counts as a task, never as blocked."""

    async def main() -> dict[str, Any]:
        tracker = TaskTracker(asyncio.get_running_loop())
        return tracker.sample({}, time.time(), time.monotonic())  # from the loop itself

    found = run(main())
    assert found["tasks"] == 1 and found["blocked"] == {} and found["top"] == []
    [site] = found["sites"]
    assert site["reason"] == "running"


@pytest.mark.parametrize("flavour", ["chain", "async generator"])
def test_waits_behind_generators_are_resolved(flavour: str) -> None:
    """A wait reached through a generator-based await or an async generator is still named."""

    @types.coroutine
    def legacy(event: asyncio.Event) -> Generator[Any, None, None]:
        yield from event.wait()

    async def through_chain(event: asyncio.Event) -> None:
        await legacy(event)

    async def agen(channel: drainwatch.Channel[int]) -> AsyncIterator[int]:
        async for item in channel:
            yield item

    async def through_agen(channel: drainwatch.Channel[int]) -> None:
        async for _ in agen(channel):
            pass

    async def main() -> dict[str, Any]:
        if flavour == "chain":
            async with parked(through_chain(asyncio.Event())):
                return entry(await sample(), "subject")
        idle: drainwatch.Channel[int] = drainwatch.Channel("behind-agen")
        async with parked(through_agen(idle)):
            return entry(await sample(), "subject")

    found = run(main())
    if flavour == "chain":
        assert found["reason"] == "event"
    else:
        assert (found["reason"], found["target"]) == ("channel_receive", "behind-agen")


def test_a_closed_loop_samples_as_empty() -> None:
    """Sampling a loop that was closed reports no task and raises nothing."""
    loop = asyncio.new_event_loop()
    tracker = TaskTracker(loop)
    loop.close()
    found = tracker.sample({}, time.time(), time.monotonic())
    assert (found["tasks"], found["sites"], found["top"]) == (0, [], [])
