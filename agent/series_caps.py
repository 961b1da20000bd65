"""Cardinality caps: how every label value the agent exports stays bounded, and is counted.

Anything a target sends can become a label value: service, channel and method names, step
names, thread names. ``SeriesCaps`` is the one place that decides whether a new value gets
a series of its own or folds into ``other``, cuts values longer than ``max_label_length``,
and counts every fold and cut by the limit that caused it. The counts are exported as
``drainwatch_agent_series_capped_total{limit}``; SDK processes report their own folds in
their ``process`` record and those are exported there too as ``sdk_<limit>``.

A new kind of series (task or thread records, say) caps itself with ``admit`` against a
``NameCap`` of its own and names its limit in ``LIMITS`` (or passes any other limit name:
it is exported from its first count on).

Thread safety: every method may be called from any thread; counts are kept under a lock of
their own, so a collector can count without holding the state lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Final

OTHER: Final = "other"
ELLIPSIS: Final = "\u2026"

# Limits exported even when nothing was capped yet (a 0 series is something to alert on).
LIMITS: Final = (
    "services",
    "channels",
    "channels_total",
    "instances",
    "channel_objects",
    "methods",
    "methods_total",
    "label_length",
    "loops",
    "tasks",
    "threads",
)
SDK_PREFIX: Final = "sdk_"
# SDK limit names are short identifiers; a process that sends others has them folded.
MAX_SDK_LIMITS: Final = 32


def cut(value: str, limit: int) -> str:
    """``value`` shortened to ``limit`` characters, the last one an ellipsis."""
    return value if len(value) <= limit else value[: limit - 1] + ELLIPSIS


@dataclass(slots=True)
class TotalCap:
    """A cap shared by several scopes (every service's channel names): ``used`` of
    ``maximum`` slots are taken."""

    maximum: int
    limit: str
    used: int = 0


@dataclass(slots=True)
class NameCap:
    """The names admitted in one scope (one service's channels, say), at most ``maximum``,
    and, with ``total``, only while the shared cap has room too."""

    maximum: int
    limit: str
    total: TotalCap | None = None
    names: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def release(self) -> None:
        """Give this scope's slots in ``total`` back (the scope itself is being dropped)."""
        if self.total is not None:
            self.total.used -= len(self.names)
        self.names.clear()


class SeriesCaps:
    """Counts of folded and cut label values, and the rules that fold and cut them."""

    def __init__(self, max_label_length: int) -> None:
        self.max_label_length = max_label_length
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(LIMITS, 0)

    def count(self, limit: str, amount: int = 1) -> None:
        """Count ``amount`` values folded or cut because of ``limit``."""
        if amount <= 0:
            return
        with self._lock:
            self._counts[limit] = self._counts.get(limit, 0) + amount

    def label(self, value: str) -> str:
        """``value`` as a label value: cut to ``max_label_length`` (counted) when longer."""
        if len(value) <= self.max_label_length:
            return value
        self.count("label_length")
        return cut(value, self.max_label_length)

    def admit(self, scope: NameCap, name: str) -> str:
        """``name`` if it already has a series or there is room for one, else ``OTHER``
        (counted under the limit that was full). ``name`` should already be a label."""
        if name in scope.names:
            return name
        total = scope.total
        if len(scope.names) >= scope.maximum:
            self.count(scope.limit)
            return OTHER
        if total is not None:
            if total.used >= total.maximum:
                self.count(total.limit)
                return OTHER
            total.used += 1
        scope.names.add(name)
        return name

    def counts(self) -> dict[str, int]:
        """A copy of every count, by limit."""
        with self._lock:
            return dict(self._counts)


def sdk_limit(name: str, known: set[str]) -> str:
    """The exported limit name for a limit an SDK process reported, bounded in number:
    ``sdk_<name>``; beyond ``MAX_SDK_LIMITS`` distinct names, ``sdk_other``."""
    limit = SDK_PREFIX + name
    if limit in known or len(known) < MAX_SDK_LIMITS:
        known.add(limit)
        return limit
    return SDK_PREFIX + OTHER
