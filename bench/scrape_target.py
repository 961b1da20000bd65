"""A service for the scrape figures: ``python -m bench.scrape_target URL SERVICE CHANNELS METHODS``.

Creates ``CHANNELS`` channels (``queue-0``, ...) and reports ``METHODS`` request methods
(``/bench.Service/Method0``, ...) to the agent at ``URL`` under ``SERVICE``, then keeps
reporting them as a service would (a snapshot about every second) until stdin closes.
Every channel has had items through it and holds one, and has waited for an item (a get
that timed out, a longer one on every 50th), so its wait histogram has counts and a sum;
every tenth is closed; every method has finished requests of two outcomes with spread-out
durations: every family of the page has values, not just zeros. Prints ``ready`` once
everything was sent once.
"""

from __future__ import annotations

import queue
import sys

import drainwatch
from drainwatch import _inflight

_OUTCOMES = (_inflight.OK, _inflight.ERROR)


def _channels(count: int) -> list[drainwatch.ThreadChannel[int]]:
    channels: list[drainwatch.ThreadChannel[int]] = []
    for index in range(count):
        channel: drainwatch.ThreadChannel[int] = drainwatch.ThreadChannel(
            f"queue-{index}", maxsize=100
        )
        try:
            channel.get(timeout=0.003 if index % 50 == 0 else 0.0002)
        except queue.Empty:
            pass
        for item in range(3):
            channel.put_nowait(item)
        channel.get_nowait()
        channel.get_nowait()
        if index % 10 == 0:
            channel.close()
        channels.append(channel)
    return channels


def _methods(count: int) -> None:
    registry = _inflight.REGISTRY
    for index in range(count):
        stats = registry.stats("grpc", f"/bench.Service/Method{index}")
        for call in range(4):
            started = registry.start(stats)
            # A start time moved back: each method's durations fall in several buckets.
            registry.finish(stats, started - 0.001 * (index % 50) * call, _OUTCOMES[call % 2])


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    endpoint, service, channels, methods = argv[0], argv[1], int(argv[2]), int(argv[3])
    drainwatch.configure(service=service, endpoint=endpoint)
    kept = _channels(channels)
    _methods(methods)
    if not drainwatch.flush(timeout=10.0):
        print("could not send everything to the agent", file=sys.stderr)
        return 1
    print("ready", flush=True)
    sys.stdin.read()
    del kept
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
