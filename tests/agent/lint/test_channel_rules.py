"""DW103 (a consumer closing what it reads), DW106 (put after close) and DW107 (double
close): what each must find, and the look-alikes it must leave alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.lint.helpers import codes, findings

CONSUMER_CLOSES = {
    "annotated parameter": """
        import drainwatch
        async def consume(orders: drainwatch.Channel[str]) -> None:
            async for order in orders:
                print(order)
            orders.close()
        """,
    "queue-only API": """
        def drain(jobs):
            while True:
                job = jobs.get_nowait()
                jobs.task_done()
                if job is None:
                    jobs.shutdown()
                    return
        """,
    "get() without argument": """
        async def consume(queue):
            item = await queue.get()
            queue.close()
        """,
    "an attribute the class only received": """
        import asyncio
        class Worker:
            def __init__(self, jobs: asyncio.Queue[int]) -> None:
                self.jobs = jobs
            async def run(self) -> None:
                job = await self.jobs.get()
                self.jobs.shutdown()
        """,
}

CONSUMER_LOOK_ALIKES = {
    "the producer closes": """
        async def produce(orders):
            await orders.put(1)
            orders.close()
        """,
    "created here, so owned here": """
        import asyncio
        async def main():
            queue = asyncio.Queue()
            item = queue.get_nowait()
            queue.shutdown()
        """,
    "a session read with get(url)": """
        def fetch(session):
            page = session.get("https://example.invalid/")
            session.close()
        """,
    "a websocket read and closed": """
        async def chat(ws):
            async for message in ws:
                print(message)
            await ws.close()
        """,
    "the class builds its own queue": """
        import asyncio
        class Worker:
            def __init__(self) -> None:
                self.jobs = asyncio.Queue()
            async def run(self) -> None:
                job = await self.jobs.get()
                self.jobs.shutdown()
        """,
}


@pytest.mark.parametrize("name", list(CONSUMER_CLOSES))
def test_a_consumer_closing_what_it_reads_is_found(tmp_path: Path, name: str) -> None:
    """A function that only reads a channel it was given, and closes it: DW103."""
    assert codes(tmp_path, CONSUMER_CLOSES[name]).count("DW103") == 1


@pytest.mark.parametrize("name", list(CONSUMER_LOOK_ALIKES))
def test_owners_and_non_channels_are_left_alone(tmp_path: Path, name: str) -> None:
    """The producer, the creator, and things that are not channels are not DW103."""
    assert "DW103" not in codes(tmp_path, CONSUMER_LOOK_ALIKES[name])


PUT_AFTER_CLOSE = {
    "straight line": """
        def finish(queue):
            queue.close()
            queue.put("late")
        """,
    "awaited put_nowait after shutdown": """
        async def finish(channel):
            channel.shutdown()
            channel.put_nowait(1)
        """,
    "on one branch": """
        def finish(queue, failed):
            if failed:
                queue.close()
            queue.put("x")
        """,
    "the next loop iteration": """
        def pump(queue, items):
            for item in items:
                queue.put(item)
                queue.close()
        """,
}

PUT_LOOK_ALIKES = {
    "a new queue each iteration": """
        def pump(queues):
            for queue in queues:
                queue.put(1)
                queue.close()
        """,
    "a new queue from with": """
        def pump(open_queue, other):
            other.close()
            with open_queue() as other:
                other.put(1)
        """,
    "put then close": """
        def finish(queue, items):
            for item in items:
                queue.put(item)
            queue.close()
        """,
    "close on one branch, put on the other": """
        def finish(queue, done):
            if done:
                queue.close()
            else:
                queue.put(1)
        """,
    "rebound in between": """
        import queue as q
        def restart(jobs):
            jobs.close()
            jobs = q.Queue()
            jobs.put(1)
        """,
    "close then return": """
        def finish(queue, items):
            for item in items:
                if item is None:
                    queue.close()
                    return
                queue.put(item)
        """,
    "close then break": """
        def finish(queue, items):
            for item in items:
                if item is None:
                    queue.close()
                    break
                queue.put(item)
        """,
}


@pytest.mark.parametrize("name", list(PUT_AFTER_CLOSE))
def test_a_put_after_close_is_found(tmp_path: Path, name: str) -> None:
    """A put that can run after the close on some path: DW106."""
    assert codes(tmp_path, PUT_AFTER_CLOSE[name]).count("DW106") == 1


@pytest.mark.parametrize("name", list(PUT_LOOK_ALIKES))
def test_puts_that_cannot_follow_the_close_are_left_alone(tmp_path: Path, name: str) -> None:
    """Other branch, rebinding, return or break before the put: not DW106."""
    assert "DW106" not in codes(tmp_path, PUT_LOOK_ALIKES[name])


DOUBLE_CLOSE = {
    "twice in a row": """
        import drainwatch
        def finish():
            orders = drainwatch.Channel("orders")
            orders.close()
            orders.close()
        """,
    "in a finally after the body": """
        def finish(jobs: "queue.Queue[int]"):
            try:
                jobs.shutdown()
            finally:
                jobs.shutdown()
        """,
}

DOUBLE_LOOK_ALIKES = {
    "one close per loop iteration, each on its own channel": """
        import drainwatch
        channel = drainwatch.Channel("module-level")
        def finish(channels):
            for channel in channels:
                channel.close()
        """,
    "a file closed twice": """
        def finish(handle):
            handle.close()
            handle.close()
        """,
    "one close per branch": """
        import asyncio
        def finish(failed):
            queue = asyncio.Queue()
            if failed:
                queue.shutdown()
            else:
                queue.shutdown()
        """,
}


@pytest.mark.parametrize("name", list(DOUBLE_CLOSE))
def test_a_double_close_is_found(tmp_path: Path, name: str) -> None:
    """A channel closed twice on one path: DW107."""
    assert codes(tmp_path, DOUBLE_CLOSE[name]).count("DW107") == 1


@pytest.mark.parametrize("name", list(DOUBLE_LOOK_ALIKES))
def test_single_closes_and_non_channels_are_left_alone(tmp_path: Path, name: str) -> None:
    """One close per path, or a file closed twice (harmless): not DW107."""
    assert "DW107" not in codes(tmp_path, DOUBLE_LOOK_ALIKES[name])


def test_findings_point_at_the_late_put_and_name_the_close(tmp_path: Path) -> None:
    """The put's position, and the line of the close it follows."""
    [found] = findings(tmp_path, PUT_AFTER_CLOSE["straight line"])
    assert (found.line, found.column) == (4, 5)
    assert "after `queue` was closed on line 3" in found.message


def test_a_very_branchy_function_stays_bounded(tmp_path: Path) -> None:
    """60 independent ifs (2**60 paths) are linted quickly with the path cap."""
    branches = "".join(f"    if flag{index}:\n        log({index})\n" for index in range(60))
    source = f"def f(queue):\n{branches}    queue.close()\n    queue.put(1)\n"
    assert codes(tmp_path, source).count("DW106") == 1
