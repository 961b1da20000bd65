"""drainwatch: make graceful shutdown and channel health visible.

The SDK runs inside your service. Importing it does nothing: no thread, no socket, no
environment read. The first channel (or ``configure()``) starts a daemon reporter thread
that sends datagrams to the drainwatch agent (a sidecar), which serves Prometheus metrics.

    import drainwatch
    orders = drainwatch.Channel("orders", maxsize=100)   # asyncio.Queue drop-in
    jobs = drainwatch.ThreadChannel("jobs")              # queue.Queue drop-in
    orders.close()                                       # graceful: items stay readable
    print(drainwatch.dump_tasks())                       # what every task waits on, Go-style
"""

from __future__ import annotations

from ._async_channel import Channel
from ._config import configure, flush
from ._coordinator import CycleError, ShutdownCoordinator, ShutdownResult, StepResult
from ._errors import ChannelClosed
from ._graceful import graceful_stop, set_ready
from ._signals import observe_signals
from ._task_dump import dump_tasks
from ._thread_channel import ThreadChannel
from ._version import __version__
from ._watch import watch_queue

__all__ = [
    "Channel",
    "ChannelClosed",
    "CycleError",
    "ShutdownCoordinator",
    "ShutdownResult",
    "StepResult",
    "ThreadChannel",
    "__version__",
    "configure",
    "dump_tasks",
    "flush",
    "graceful_stop",
    "observe_signals",
    "set_ready",
    "watch_queue",
]
