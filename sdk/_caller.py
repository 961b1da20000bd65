"""Who is running this code, and where: used to record who closed a channel."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from types import FrameType

_SDK_DIR = os.path.dirname(os.path.abspath(__file__))


def current_actor() -> str:
    """The current asyncio task's name inside a running loop, else the thread's name.

    Never raises: it is called from instrumentation.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop in this thread
        task = None
    if task is not None:
        return f"task:{task.get_name()}"
    return f"thread:{threading.current_thread().name}"


def caller_location() -> str:
    """``file:line`` of the first frame outside the drainwatch SDK, or ``"?"``."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == _SDK_DIR:
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"
