"""No cyclic garbage collection while frame objects of other threads are made.

Reading a coroutine's ``cr_frame`` (or ``gi_frame``), a frame's ``f_back``, or calling
``sys._current_frames()`` makes a frame object for a frame that has none yet. Making it
allocates, an allocation may start a collection, and a collection runs finalizers
(``__del__``, weakref callbacks): Python code, at which the interpreter may hand the GIL to
another thread. If that thread is the one the frame belongs to, it can finish the frame
(its coroutine returns, its function pops) before the frame object is tied to it, and the
new frame object then points at memory that is gone. Reading it later crashes the process:
on CPython 3.11 a loop that makes garbage with finalizers while its tasks are sampled
crashes in under a second, most runs (tests/sdk/test_frames_under_collection.py). The same
script did not fail under 3.13 in ten runs; the pause stays on every version, as it costs
two calls per sample. With the collector paused, making a frame object runs no Python
code, so no other thread runs in the middle; once tied to its frame, CPython keeps the
frame object valid when the frame ends.

The pause covers a sample's frame reads only (about 3 ms per thousand tasks). Allocations
go on counting meanwhile: the collection that was due runs at the first allocation after.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collections_paused() -> Iterator[None]:
    """Pause automatic collections for the block, unless the app has them off already.

    The collector switch is process-wide: an app thread that turns collections off while
    a sample holds them paused has them turned back on at the block's end. Apps that turn
    the collector off do it once at startup (before any sample), where this leaves it off.
    """
    enabled = gc.isenabled()
    if enabled:
        gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
