"""The target process for the py-spy overhead figure: ``python -m bench.pyspy_target [CPU]``.

A small service in one process: producer threads build requests and hand them through a
bounded ``queue.Queue`` to handler threads, which pass each one down a stack of middleware
calls and do pure-Python work on it; a few more threads sit idle, as an executor's spare
workers would, so a dump has as many stacks to read as a modest service's.

With ``CPU``, every thread runs on that CPU only. Prints ``ready`` once every thread runs,
then answers each ``mark`` line on stdin with ``<requests handled> <perf_counter_ns>
<process_time_ns>``, read back to back, so the bench measures throughput on the target's own
clock. Stops when stdin closes.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable

PRODUCERS = 2
HANDLERS = 2
IDLE_THREADS = 4
QUEUE_MAXSIZE = 64
MIDDLEWARE_DEPTH = 12  # frames between a handler's loop and its work, as in a web framework
ITEMS_PER_REQUEST = 48
_JOIN_TIMEOUT_SECONDS = 5.0

Request = dict[str, object]


def _build(number: int) -> Request:
    return {
        "id": number,
        "user": f"user-{number % 97}",
        "items": [(number * 7919 + index * 104_729) % 1009 for index in range(ITEMS_PER_REQUEST)],
    }


def _respond(request: Request) -> str:
    items = request["items"]
    if not isinstance(items, list):
        raise TypeError(f"request {request['id']} has no item list")
    ordered = sorted(items)
    return f"{request['id']}:{request['user']}:{sum(ordered)}:{','.join(map(str, ordered[:8]))}"


def _through_middleware(request: Request, depth: int) -> str:
    if depth == 0:
        return _respond(request)
    return _through_middleware(request, depth - 1)


class _Service:
    """The worker threads, and how many requests each handler has finished."""

    def __init__(self) -> None:
        self.handled = [0] * HANDLERS  # one slot per handler: no lock, no lost update
        self._requests: queue.Queue[Request | None] = queue.Queue(QUEUE_MAXSIZE)
        self._stopping = threading.Event()
        self._producers = self._threads("producer", PRODUCERS, self._produce)
        self._handlers = self._threads("handler", HANDLERS, self._handle)
        self._idle = self._threads("idle", IDLE_THREADS, self._wait)

    @staticmethod
    def _threads(role: str, count: int, run: Callable[[int], None]) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=run, args=(index,), name=f"{role}-{index}", daemon=True)
            for index in range(count)
        ]
        for thread in threads:
            thread.start()
        return threads

    def _wait(self, index: int) -> None:
        self._stopping.wait()

    def _produce(self, index: int) -> None:
        number = index
        while not self._stopping.is_set():
            self._requests.put(_build(number))
            number += PRODUCERS

    def _handle(self, index: int) -> None:
        while (request := self._requests.get()) is not None:
            _through_middleware(request, MIDDLEWARE_DEPTH)
            self.handled[index] += 1

    def stop(self) -> None:
        self._stopping.set()
        # Producers blocked on a full queue finish their put once handlers take more.
        for thread in self._producers:
            thread.join(_JOIN_TIMEOUT_SECONDS)
        for _ in self._handlers:
            self._requests.put(None)
        for thread in [*self._handlers, *self._idle]:
            thread.join(_JOIN_TIMEOUT_SECONDS)


def main(argv: list[str]) -> int:
    if argv:
        # Threads inherit the mask of the thread that starts them: set it before any start.
        os.sched_setaffinity(0, {int(argv[0])})
    service = _Service()
    print("ready", flush=True)
    while line := sys.stdin.readline():
        if line.strip() != "mark":
            print(f"unknown command {line.strip()!r}", file=sys.stderr, flush=True)
            continue
        # Count and clocks read back to back, so one window's three deltas cover one span.
        handled = sum(service.handled)
        print(handled, time.perf_counter_ns(), time.process_time_ns(), flush=True)
    service.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
