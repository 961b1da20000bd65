"""The SDK's own caps, counted: what was folded into ``other`` or cut before it was sent.

The SDK bounds what it keeps (500 methods, 64 steps or listeners, 8 signals, names of 200
characters); each time a bound bites it is counted here by limit, and the reporter sends
the counts in every ``process`` record (``capped``), so the agent can export them in
``drainwatch_agent_series_capped_total{limit="sdk_<limit>"}`` next to its own.

Counting is a rare path (a bound was hit); it takes a lock so counts are exact across
threads. Nothing here raises.
"""

from __future__ import annotations

import threading


class CapCounts:
    """Counts by limit; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def note(self, limit: str, amount: int = 1) -> None:
        """Count ``amount`` values folded or cut because of the SDK limit ``limit``."""
        with self._lock:
            self._counts[limit] = self._counts.get(limit, 0) + amount

    def counts(self) -> dict[str, int]:
        """A copy of the counts, by limit."""
        with self._lock:
            return dict(self._counts)

    def reset_after_fork(self) -> None:
        """A forked child is a new process: its counts start at zero, with a fresh lock."""
        self._lock = threading.Lock()
        self._counts = {}


CAPPED = CapCounts()
