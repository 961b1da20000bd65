"""The exception raised by channels that are closed.

``ChannelClosed`` subclasses ``asyncio.QueueShutDown`` and ``queue.ShutDown`` where the
running Python has them (3.13+), so code written for CPython 3.13 queues, which catches
those, keeps working when a queue is swapped for a drainwatch channel.
"""

from __future__ import annotations

import asyncio
import queue


def _shutdown_bases() -> tuple[type[BaseException], ...]:
    bases: list[type[BaseException]] = []
    for module, name in ((asyncio, "QueueShutDown"), (queue, "ShutDown")):
        base = getattr(module, name, None)
        if isinstance(base, type) and issubclass(base, Exception):
            bases.append(base)
    return tuple(bases) or (Exception,)


class ChannelClosed(*_shutdown_bases()):  # type: ignore[misc]
    """Raised by ``put`` on a closed channel and by ``get`` on a closed, empty one.

    On Python 3.13+ it is also an ``asyncio.QueueShutDown`` and a ``queue.ShutDown``.
    """
