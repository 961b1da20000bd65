"""Figures 10 and 11: what task tracking costs a busy asyncio service, and what the lag
monitor costs an idle one.

**Throughput.** A small asyncio service handles requests as tasks: each one suspends once
(as a handler awaiting I/O would), encodes and decodes a JSON document of 150 items (about
0.1 ms of work, so the service does some 10,000 tasks per second), and hands its result to a
consumer task through a drainwatch ``Channel``. 50 requests are in flight at a time, and
20 long-lived tasks sit parked on a channel, an event and a lock, as a service's idle
workers and connections would: every task sample has some 70 tasks to classify. The
service reports to a real agent subprocess. Tracking off is the baseline; tracking on
watches the loop (tasks sampled with each 1 s snapshot, lag probed every 100 ms, the
reporter checking for a stall as often) and samples the threads. Each sample is a fresh loop
(``asyncio.run``), configured inside it, warmed up, then timed over a window of whole
seconds; the figure is time per task, on over off (``measure.alternate``).

**Lag monitor.** The same loop, idle (a service waiting for requests), with snapshots every
300 s so that none falls in a window: what remains is the lag probe on the loop and the
reporter's stall checks. The figure is the process's CPU time per second of wall time with
the monitor on, minus the same without it, in alternating windows.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import drainwatch

from .agent_process import running_agent
from .figure import Figure, ratio_figure
from .measure import Sample, alternate, quartiles

THROUGHPUT_BUDGET = 1.02  # time per task, tracking on / off: at most 2 % less throughput
LAG_MONITOR_BUDGET = 0.005  # added CPU, as a share of one core
IN_FLIGHT = 50
PARKED_TASKS = 20
ITEMS = 150
SETTLE_SECONDS = 0.3
IDLE_INTERVAL_SECONDS = 300.0
_PAYLOAD = {"items": [{"sku": f"sku-{index}", "qty": index} for index in range(ITEMS)]}


@dataclass
class _Observed:
    rates: dict[bool, list[float]] = field(default_factory=lambda: {False: [], True: []})


async def _handle(number: int, results: drainwatch.Channel[int]) -> None:
    await asyncio.sleep(0)
    body = json.dumps({**_PAYLOAD, "request": number})
    await results.put(len(json.loads(body)["items"]))


async def _consume(results: drainwatch.Channel[int]) -> None:
    async for _ in results:
        pass


async def _parked() -> tuple[list[asyncio.Task[object]], drainwatch.Channel[int], asyncio.Event]:
    idle: drainwatch.Channel[int] = drainwatch.Channel("idle-workers")
    event = asyncio.Event()
    lock = asyncio.Lock()
    await lock.acquire()
    waits = [idle.get, event.wait, lock.acquire]
    tasks: list[asyncio.Task[object]] = [
        asyncio.create_task(waits[index % len(waits)](), name=f"parked-{index}")
        for index in range(PARKED_TASKS)
    ]
    return tasks, idle, event


async def _serve(endpoint: str, tracking: bool, window: float) -> tuple[int, int]:
    """Handle requests for ``window`` seconds; (tasks done, nanoseconds taken)."""
    drainwatch.configure(service="bench", endpoint=endpoint, tracking=tracking)
    results: drainwatch.Channel[int] = drainwatch.Channel("results", maxsize=IN_FLIGHT)
    consumer = asyncio.create_task(_consume(results), name="consumer")
    parked, idle, event = await _parked()
    number = 0
    settled = time.perf_counter() + SETTLE_SECONDS
    while time.perf_counter() < settled:
        await asyncio.gather(*(_handle(number + index, results) for index in range(IN_FLIGHT)))
        number += IN_FLIGHT
    done = 0
    started = time.perf_counter_ns()
    deadline = started + int(window * 1e9)
    while time.perf_counter_ns() < deadline:
        batch = [
            asyncio.create_task(_handle(number + index, results)) for index in range(IN_FLIGHT)
        ]
        await asyncio.gather(*batch)
        number += IN_FLIGHT
        done += IN_FLIGHT
    elapsed = time.perf_counter_ns() - started
    results.close()
    idle.close()
    event.set()
    for task in parked:
        task.cancel()
    await asyncio.gather(consumer, *parked, return_exceptions=True)
    return done, elapsed


def _service(endpoint: str, tracking: bool, window: float, observed: _Observed) -> Sample:
    def sample() -> float:
        done, elapsed = asyncio.run(_serve(endpoint, tracking, window))
        observed.rates[tracking].append(done / elapsed * 1e9)
        return elapsed / done

    return sample


def task_tracking_throughput(window: float, rounds: int) -> Figure:
    """Time per task of a busy service, task and lag tracking on / off."""
    observed = _Observed()
    with running_agent() as agent:
        try:
            comparison = alternate(
                _service(agent.ingest, False, window, observed),
                _service(agent.ingest, True, window, observed),
                rounds,
                warmup=1,
            )
        finally:
            drainwatch.configure(enabled=False)
    off, on = (statistics.median(observed.rates[flag]) for flag in (False, True))
    note = (
        f"{rounds} rounds of a {window:g} s window each way, each a fresh loop configured "
        f"inside it; a service handling requests as tasks ({IN_FLIGHT} in flight, each "
        f"suspending once, then encoding and decoding {ITEMS} JSON items and putting the "
        f"result on a Channel read by a consumer task) with {PARKED_TASKS} long-lived tasks "
        "parked on a channel, an event and a lock, reporting to a real agent; it handled "
        f"{off:,.0f} tasks/s with tracking off and {on:,.0f} with it on (tasks sampled with "
        "every 1 s snapshot, lag probed every 100 ms, stalls checked as often, threads "
        "sampled); the ratio is time per task on over off, so the budget is a throughput of "
        "at least 98 % of tracking off"
    )
    return ratio_figure(
        "asyncio service, 10,000 small tasks/s: task and lag tracking",
        comparison,
        baseline="tracking off",
        candidate="tracking on",
        unit="task",
        budget=THROUGHPUT_BUDGET,
        note=note,
    )


async def _idle(endpoint: str, tracking: bool, window: float) -> float:
    """CPU seconds per wall second of an idle loop over ``window`` seconds."""
    drainwatch.configure(
        service="bench", endpoint=endpoint, tracking=tracking, interval=IDLE_INTERVAL_SECONDS
    )
    await asyncio.sleep(SETTLE_SECONDS)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(window)
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


def lag_monitor_cpu(window: float, rounds: int) -> Figure:
    """CPU the lag monitor adds to an idle service, as a share of one core."""
    shares: dict[bool, list[float]] = {False: [], True: []}
    added: list[float] = []
    with running_agent() as agent:
        try:
            for index in range(rounds):
                order = (False, True) if index % 2 == 0 else (True, False)
                for tracking in order:
                    shares[tracking].append(asyncio.run(_idle(agent.ingest, tracking, window)))
                added.append(shares[True][-1] - shares[False][-1])
        finally:
            drainwatch.configure(enabled=False)
    q1, median, q3 = quartiles(added)
    probes_per_second = 2 / 0.1  # the loop's probe and the reporter's check
    note = (
        f"{rounds} rounds of a {window:g} s window each way on an idle loop, snapshots every "
        f"{IDLE_INTERVAL_SECONDS:g} s so that none falls in a window: the lag probe runs on "
        "the loop every 100 ms (the 0.1 s stall threshold) and the reporter thread checks "
        "for a stall as often; CPU is the process's (time.process_time), all threads; "
        f"{median / probes_per_second * 1e6:.1f} µs of CPU per probe or check"
    )
    return Figure(
        name="Event-loop lag monitor, CPU on an idle loop",
        baseline=f"tracking off: {statistics.median(shares[False]) * 100:.3f} % of a core",
        candidate=f"lag monitor: {statistics.median(shares[True]) * 100:.3f} % of a core",
        ratio=f"+{median * 100:.3f} %",
        spread=f"+{q1 * 100:.3f} to +{q3 * 100:.3f} % (n={rounds})",
        budget=f"≤ +{LAG_MONITOR_BUDGET * 100:.1f} % of a core",
        meets=median <= LAG_MONITOR_BUDGET,
        note=note,
    )
