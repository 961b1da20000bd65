"""An order pipeline instrumented with drainwatch channels, shutting down with mistakes.

Producers feed an asyncio channel, consumers drain it, and payment workers (threads) read
a ThreadChannel. At shutdown it does what the post-mortem warns about, so the agent has
something to show:
  * "audit" is closed while items are still buffered (residual items at close),
  * a late retry puts into the closed "orders" channel (send after close),
  * a stray poller keeps calling get() on the closed "orders" channel (read after close),
  * "payments" is closed twice (double close).

Run it under an agent: `drainwatch demo`, or DRAINWATCH_ENDPOINT=... python orders_pipeline.py
"""

from __future__ import annotations

import asyncio
import os
import random
import threading

import drainwatch

RUN_SECONDS = float(os.environ.get("DEMO_SECONDS", "2.0"))


def payment_worker(payments: drainwatch.ThreadChannel[int], done: list[int]) -> None:
    for order in payments:  # ends cleanly once "payments" is closed and drained
        done.append(order)


async def producer(
    orders: drainwatch.Channel[int], audit: drainwatch.Channel[str], stop: asyncio.Event
) -> None:
    order = 0
    while not stop.is_set():
        order += 1
        await orders.put(order)
        audit.put_nowait(f"order {order} accepted")
        await asyncio.sleep(random.uniform(0.001, 0.01))  # noqa: S311 - demo pacing


async def consumer(
    orders: drainwatch.Channel[int], payments: drainwatch.ThreadChannel[int]
) -> None:
    async for order in orders:  # ends cleanly once "orders" is closed and drained
        await asyncio.sleep(0.005)
        payments.put(order)


async def main() -> None:
    orders: drainwatch.Channel[int] = drainwatch.Channel("orders", maxsize=20, owner="producer")
    audit: drainwatch.Channel[str] = drainwatch.Channel("audit")
    payments: drainwatch.ThreadChannel[int] = drainwatch.ThreadChannel("payments", maxsize=100)
    done: list[int] = []
    workers = [
        threading.Thread(target=payment_worker, args=(payments, done), name=f"pay-{i}")
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    stop = asyncio.Event()
    produce = asyncio.create_task(producer(orders, audit, stop), name="producer")
    consumers = [
        asyncio.create_task(consumer(orders, payments), name=f"consumer-{i}") for i in range(3)
    ]
    await asyncio.sleep(RUN_SECONDS)

    # Shutdown, in the right order for "orders" and "payments"...
    stop.set()
    await produce
    orders.close()
    await asyncio.gather(*consumers)
    payments.close()
    for worker in workers:
        await asyncio.to_thread(worker.join)
    # ...and the mistakes.
    audit.close()  # nobody drained the audit log: residual items at close
    for attempt in range(2):
        try:
            await orders.put(-attempt)  # a late retry after close
        except drainwatch.ChannelClosed:
            pass
    for _ in range(3):
        try:
            orders.get_nowait()  # a poller that never learned about the close
        except drainwatch.ChannelClosed:
            pass
    payments.close()  # closed twice
    print(f"orders_pipeline: paid {len(done)} orders, audit left {audit.qsize()} entries")
    drainwatch.flush(timeout=1.0)


if __name__ == "__main__":
    asyncio.run(main())
