"""Small pieces the status page is built from: escaping, reading API documents safely,
and formatting times and numbers.

Everything the page shows comes from the agent's JSON documents, and much of that comes
from datagrams any process in the pod may send (service, channel, method, task and thread
names, stack frames, explanations). Every such value reaches HTML only through ``esc``;
the page modules never format a document value into markup any other way.
"""

from __future__ import annotations

import datetime
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

# Longest text shown for one name before it is cut (the full value stays in a tooltip).
NAME_CHARS: Final = 60


def esc(value: object) -> str:
    """``value`` as text safe inside an element or a quoted attribute. Control characters
    and invisible format characters (bidi overrides) are shown as escapes such as ``\x1b``:
    a name sent by a target must read as what it is, in the page and in a terminal."""
    text = html.escape(str(value), quote=True)
    if text.isprintable():
        return text
    return "".join(
        char
        if char.isprintable() or char in "\n\t"
        else char.encode("unicode_escape", "backslashreplace").decode("ascii")
        for char in text
    )


def clip(value: object, limit: int = NAME_CHARS) -> str:
    """``value`` as text of at most ``limit`` characters (an ellipsis marks a cut); not
    escaped: pass the result to ``esc``."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def number(value: object) -> float | None:
    """A finite number from a document, or None for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def whole(value: object) -> int | None:
    """A whole number from a document, or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def mapping(value: object) -> Mapping[str, Any]:
    """``value`` when it is an object, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def items(value: object) -> list[Mapping[str, Any]]:
    """The objects of a list (anything else in it is skipped); empty for a non-list."""
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def text(value: object, default: str = "") -> str:
    """A string field as it is, or ``default`` when it is missing or not a string."""
    return value if isinstance(value, str) else default


def seconds(value: float | None) -> str:
    """A duration for people: ``-``, ``850 ms``, ``2.35 s``, ``3 min 5 s``."""
    if value is None:
        return "-"
    if abs(value) < 1.0:
        return f"{value * 1000:.0f} ms"
    if abs(value) < 120.0:
        return f"{value:.2f} s"
    minutes, rest = divmod(int(value), 60)
    return f"{minutes} min {rest} s"


def offset(value: float | None) -> str:
    """An offset from the shutdown's start: ``+1.25 s``."""
    if value is None:
        return "-"
    return ("+" if value >= 0 else "\u2212") + seconds(abs(value))


def clock(at: float | None) -> str:
    """Unix seconds as ``2026-01-02 03:04:05 UTC``."""
    if at is None:
        return "-"
    try:
        moment = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def fixed(value: float, digits: int = 2) -> str:
    """A coordinate for SVG: a plain decimal, never an exponent or NaN."""
    if not math.isfinite(value):
        return "0"
    return f"{value:.{digits}f}"
