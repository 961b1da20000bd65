"""Watched loops as the agent hears of them: lag, stalls with the blocking stack, tasks, and
what happens when tasks, loops and threads come and go while they are sampled."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import textwrap
import threading
import time
import weakref
from typing import Any

import drainwatch
from drainwatch import _runtime
from drainwatch._loop_lag import LagMonitor, probe_interval
from drainwatch._protocol import RECORD_BUDGET_BYTES
from drainwatch._task_tracker import MAX_SITES, MAX_TASKS_SAMPLED, MAX_TOP, TaskTracker
from drainwatch._tracking import TRACKING

from .conftest import Receiver, run, run_python, subprocess_env

Record = dict[str, Any]


def loop_records(receiver: Receiver, duration: float) -> list[Record]:
    """Every ``loop`` record that arrives within ``duration`` seconds."""
    return [
        record
        for datagram in receiver.collect(duration)
        for record in datagram.records
        if record["type"] == "loop"
    ]


def blocking_handler(seconds: float) -> None:
    time.sleep(seconds)  # the loop is blocked here: the stall's stack must name this function


def test_a_blocked_loop_shows_its_lag_and_the_blocking_stack(receiver: Receiver) -> None:
    """time.sleep(0.5) in the loop: lag of at least 0.4 s, and a stall naming the code."""

    async def main() -> None:
        drainwatch.configure(service="sdk-tests", endpoint=receiver.endpoint, interval=60)
        await asyncio.sleep(0.1)
        blocking_handler(0.5)
        await asyncio.sleep(0.1)
        drainwatch.flush()

    run(main())
    [record] = [r for r in loop_records(receiver, 0.5) if r["stalls"]]
    assert record["lag_max"] >= 0.4
    [stall] = record["stalls"]
    assert stall["seconds"] >= 0.4 and not stall["ongoing"]
    assert any(frame.startswith("blocking_handler (") for frame in stall["stack"])
    assert record["stalls_total"] == 1
    lag = record["lag"]
    assert lag["count"] >= 3 and lag["sum"] >= 0.4
    assert sum(lag["counts"][9:]) >= 1  # one probe at least 0.25 s late (bucket 0.5 s and up)


def test_the_stack_is_read_while_the_loop_is_still_blocked(receiver: Receiver) -> None:
    """Snapshots keep coming during a block, and carry the stall, ongoing, with its stack."""

    async def main() -> None:
        drainwatch.configure(service="sdk-tests", endpoint=receiver.endpoint, interval=0.2)
        await asyncio.sleep(0.1)
        blocking_handler(1.2)

    run(main())
    ongoing = [
        stall
        for record in loop_records(receiver, 0.5)
        for stall in record["stalls"]
        if stall["ongoing"]
    ]
    assert ongoing, "no snapshot was sent while the loop was blocked"
    assert any(frame.startswith("blocking_handler (") for frame in ongoing[0]["stack"])


def test_a_loop_that_stops_and_runs_again_is_not_lagging() -> None:
    """Time a loop spends stopped between run_until_complete calls is not lag."""
    loop = asyncio.new_event_loop()
    try:

        async def watch() -> None:
            drainwatch.configure(service="sdk-tests", endpoint="udp://127.0.0.1:9", interval=60)
            await asyncio.sleep(0.05)

        loop.run_until_complete(asyncio.wait_for(watch(), 5))
        time.sleep(0.6)  # stopped, not blocked
        loop.run_until_complete(asyncio.wait_for(asyncio.sleep(0.2), 5))
        [record] = [
            r for r in TRACKING.records(_runtime.current().settings, []) if r["type"] == "loop"
        ]
    finally:
        loop.close()
    assert record["stalls_total"] == 0 and record["lag_max"] < 0.3


def test_a_closed_loop_is_reported_closed_once_then_forgotten(receiver: Receiver) -> None:
    """After asyncio.run() returns, one last record says closed, and no more follow."""

    async def main() -> None:
        drainwatch.configure(service="sdk-tests", endpoint=receiver.endpoint, interval=60)
        await asyncio.sleep(0.05)

    run(main())
    drainwatch.flush()
    drainwatch.flush()
    records = loop_records(receiver, 0.5)
    assert [record["closed"] for record in records] == [True]
    assert records[0]["tasks"] == 0


def test_ten_thousand_tasks_fit_one_bounded_record_and_are_not_kept_alive() -> None:
    """10,000 parked tasks: counted, the record stays within its byte budget, and once they
    finish the tracker holds none of them."""

    async def main() -> tuple[Record, int, weakref.ref[asyncio.Task[Any]]]:
        drainwatch.configure(service="sdk-tests", endpoint="udp://127.0.0.1:9", interval=60)
        event = asyncio.Event()
        tasks = [asyncio.create_task(event.wait(), name=f"t{i}") for i in range(10_000)]
        await asyncio.sleep(0.05)
        settings = _runtime.current().settings
        [record] = [r for r in TRACKING.records(settings, []) if r["type"] == "loop"]
        event.set()
        await asyncio.gather(*tasks)
        probe: weakref.ref[asyncio.Task[Any]] = weakref.ref(tasks[0])
        del tasks
        tracker = TaskTracker(asyncio.get_running_loop())
        tracker.sample({}, time.time(), time.monotonic())
        return record, len(tracker._seen), probe

    record, remembered, probe = run(main(), timeout=30)
    gc.collect()
    assert record["tasks"] == 10_001
    assert record["sampled"] == min(10_001, MAX_TASKS_SAMPLED)
    assert record["blocked"]["event"] >= record["sampled"] - 1  # all but the sampling task
    assert len(record["top"]) == MAX_TOP and len(record["sites"]) <= MAX_SITES
    assert len(json.dumps(record).encode()) <= RECORD_BUDGET_BYTES
    assert remembered == 1  # only the task that sampled
    assert probe() is None


SAMPLES_UNDER_CHURN = 200


def test_tasks_coming_and_going_while_sampled_never_break_a_sample() -> None:
    """A thread samples over and over while the loop creates and finishes tasks."""
    errors: list[BaseException] = []
    counts: list[int] = []

    async def churn(stop: threading.Event, started: threading.Event) -> None:
        async def tiny(number: int) -> int:
            await asyncio.sleep(0)
            return number

        while not stop.is_set():
            started.set()
            await asyncio.gather(*(tiny(i) for i in range(200)))

    def sampler(tracker: TaskTracker, stop: threading.Event, started: threading.Event) -> None:
        try:
            started.wait(5)
            for _ in range(SAMPLES_UNDER_CHURN):
                counts.append(tracker.sample({}, time.time(), time.monotonic())["tasks"])
                time.sleep(0.0005)  # let the loop move on between samples
        except BaseException as error:
            errors.append(error)
        finally:
            stop.set()

    async def main() -> None:
        stop, started = threading.Event(), threading.Event()
        tracker = TaskTracker(asyncio.get_running_loop())
        thread = threading.Thread(target=sampler, args=(tracker, stop, started))
        thread.start()
        await churn(stop, started)
        await asyncio.to_thread(thread.join, 10)

    # A busy loop hands the GIL back to a thread waking from sleep only now and then
    # (from 0.1 s to over 1 s a sample here); a switch every 10 us makes the two
    # threads take turns, and the loop changes the task set in the middle of samples.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        run(main(), timeout=30)
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert len(counts) == SAMPLES_UNDER_CHURN and max(counts) > 1


def test_threads_ending_while_sampled_never_break_a_sample() -> None:
    """Threads that start and end during sampling are reported or not, never an error."""
    stop = threading.Event()

    def spawn() -> None:
        while not stop.is_set():
            workers = [threading.Thread(target=time.sleep, args=(0.001,)) for _ in range(20)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()

    spawner = threading.Thread(target=spawn)
    spawner.start()
    try:
        settings = _runtime.current().settings
        records = [TRACKING.records(settings, []) for _ in range(200)]
    finally:
        stop.set()
        spawner.join(5)
    assert not spawner.is_alive()
    assert all(batch[-1]["type"] == "threads" for batch in records)


def test_a_stall_the_reporter_could_not_see_is_still_counted() -> None:
    """A probe that runs late with nobody having looked records a stall without a stack."""

    async def main() -> dict[str, Any]:
        monitor = LagMonitor(asyncio.get_running_loop(), threshold=0.05)
        monitor.start()
        await asyncio.sleep(monitor.interval * 2)
        time.sleep(0.2)  # no check() call: as if the GIL was held throughout
        await asyncio.sleep(monitor.interval * 2)
        monitor.stop()
        return monitor.fields()

    fields = run(main())
    [stall] = fields["stalls"]
    assert stall["stack"] == [] and stall["seconds"] >= 0.15
    assert fields["stalls_total"] == 1


def test_the_probe_runs_at_the_threshold_within_bounds() -> None:
    """The probe interval is the stall threshold, kept between 10 ms and 250 ms."""
    assert probe_interval(0.1) == 0.1
    assert probe_interval(0.001) == 0.01
    assert probe_interval(60) == 0.25


def test_a_forked_child_watches_none_of_its_parents_loops() -> None:
    """After os.fork() in a watched loop, the child reports no loop of its parent's."""
    code = textwrap.dedent("""
        import asyncio, json, os, warnings, drainwatch
        from drainwatch import _runtime
        from drainwatch._tracking import TRACKING
        async def main():
            drainwatch.configure(service="fork-test", endpoint="udp://127.0.0.1:9", interval=60)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
                pid = os.fork()
            records = TRACKING.records(_runtime.current().settings, [])
            kinds = sorted(record["type"] for record in records)
            if pid == 0:
                print("child", json.dumps(kinds), flush=True)
                os._exit(0)
            os.waitpid(pid, 0)
            print("parent", json.dumps(kinds), flush=True)
        asyncio.run(main())
    """)
    result = run_python(code, env=subprocess_env())
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert json.loads(lines["parent"]) == ["loop", "threads"]
    assert json.loads(lines["child"]) == ["threads"]
