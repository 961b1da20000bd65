"""Python frames as text for dumps and reports: ``Queue.get (queue.py:171)``, as py-spy
prints them, innermost first as Go prints a goroutine.

Frames are read from the reporter thread while their own thread keeps running: every
attribute read here is a plain read under the GIL, so the worst a race can do is describe a
frame one line earlier or later than it is now.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from types import CodeType, FrameType
from typing import Final

from ._protocol import clip

MAX_FRAMES: Final = 16  # per stack in a record; the innermost ones say what waits
MAX_FRAME_CHARS: Final = 200
_MAX_CACHED_FILES: Final = 4096

_short_names: dict[str, str] = {}


def short_filename(path: str) -> str:
    """``path`` relative to the ``sys.path`` entry it was imported from, else as given."""
    known = _short_names.get(path)
    if known is not None:
        return known
    best = ""
    for entry in list(sys.path):
        if entry and path.startswith(entry.rstrip(os.sep) + os.sep) and len(entry) > len(best):
            best = entry.rstrip(os.sep)
    short = path[len(best) + 1 :] if best else path
    if len(_short_names) >= _MAX_CACHED_FILES:
        _short_names.clear()  # code loaded from ever new files (exec): never grow without bound
    _short_names[path] = short
    return short


def describe(code: CodeType, line: int | None) -> str:
    """One frame as ``qualname (file:line)``, cut to ``MAX_FRAME_CHARS``."""
    where = short_filename(code.co_filename)
    text = f"{code.co_qualname} ({where}:{line if line is not None else '?'})"
    return clip(text, MAX_FRAME_CHARS)


def describe_frames(frames: Iterable[FrameType], limit: int = MAX_FRAMES) -> list[str]:
    """Frames given innermost first, as text, at most ``limit`` of them."""
    described: list[str] = []
    for frame in frames:
        if len(described) >= limit:
            break
        described.append(describe(frame.f_code, frame.f_lineno))
    return described


def outward(frame: FrameType | None, limit: int) -> list[FrameType]:
    """``frame`` and its callers (``f_back``), innermost first, at most ``limit``."""
    frames: list[FrameType] = []
    while frame is not None and len(frames) < limit:
        frames.append(frame)
        frame = frame.f_back
    return frames
