"""Keeping drain reports in the state directory while the agent runs, and reading them back.

``ReportWriter`` takes every report the store builds anew (``DrainReports.observers``) and
writes it from its own thread: a scrape never waits for a disk, and a burst of updates of
one report during a drain becomes one write (the newest) per ``min_interval``. On stop it
writes what is pending, so the final report of a target that just exited is on disk before
the agent goes.

``restore`` reads the kept reports back at start, so a restarted agent serves the last
shutdown at ``/api/v1/report`` and its metrics.
"""

from __future__ import annotations

import logging
import threading
from typing import Final

from .drain_report import DrainReport
from .report_json import report_from_json
from .report_store import DrainReports
from .state_dir import StateDir

logger = logging.getLogger("drainwatch.agent")

_MIN_INTERVAL_SECONDS: Final = 0.5


def restore(state_dir: StateDir, reports: DrainReports) -> int:
    """Load the kept reports into ``reports``; returns how many. Never raises."""
    documents = state_dir.load_reports(validate=report_from_json)
    restored = [report_from_json(document) for document in documents]
    reports.restore(restored)
    if restored:
        logger.info(
            "drainwatch agent: %d drain report(s) read back from %s", len(restored), state_dir.path
        )
    return len(restored)


class ReportWriter:
    """Writes offered reports to a ``StateDir`` from a daemon thread."""

    def __init__(self, state_dir: StateDir, min_interval: float = _MIN_INTERVAL_SECONDS) -> None:
        self.state_dir = state_dir
        self._min_interval = min_interval
        self._cond = threading.Condition()
        self._pending: dict[tuple[str, str], DrainReport] = {}
        self._busy = False
        self._stopping = False
        self._hurry = False
        self._thread: threading.Thread | None = None

    def offer(self, report: DrainReport) -> None:
        """Queue ``report`` for writing (replacing an unwritten older version of it)."""
        if report.source == "restored":
            return  # it is on disk already
        with self._cond:
            self._pending[(report.service, report.instance)] = report
            self._cond.notify_all()

    def start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._run, name="drainwatch-state-dir", daemon=True
                )
                self._thread.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything offered so far is written; False on timeout."""
        with self._cond:
            self._hurry = True
            self._cond.notify_all()
            done = self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)
            self._hurry = False
            return done

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is pending, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stopping)
                if not self._pending and self._stopping:
                    return
                batch, self._pending = list(self._pending.values()), {}
                self._busy = True
            for report in batch:
                self.state_dir.save_report(report.to_json())
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                # coalesce the updates of a running drain into a few writes
                self._cond.wait_for(lambda: self._stopping or self._hurry, self._min_interval)
