"""The target process for the close-latency figure: ``python -m bench.close_target URL K``.

Creates channels ``c0`` .. ``c<K-1>``, reports them once, prints ``ready``, then for each
index read from stdin closes that channel and prints ``<index> <wall-clock close time>``.
The time is taken just before ``close()``, so the figure includes the whole close path.
"""

from __future__ import annotations

import asyncio
import sys
import time

import drainwatch


async def _serve(channels: list[drainwatch.Channel[int]]) -> None:
    # Closes run inside a task, as in a service; stdin is read in a thread so the loop
    # stays free while the bench decides when to close the next channel.
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        index = int(line)
        closed_at = time.time()
        channels[index].close()
        sys.stdout.write(f"{index} {closed_at!r}\n")
        sys.stdout.flush()


def main(argv: list[str]) -> int:
    endpoint, count = argv[0], int(argv[1])
    drainwatch.configure(service="bench", endpoint=endpoint)
    channels: list[drainwatch.Channel[int]] = [drainwatch.Channel(f"c{i}") for i in range(count)]
    drainwatch.flush(timeout=2.0)
    print("ready", flush=True)
    asyncio.run(_serve(channels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
