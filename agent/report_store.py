"""Drain reports the agent keeps, and the violation counters they feed.

One report per process whose shutdown is in progress or over, rebuilt from the state
on demand (each scrape, each API call) and one last time just before the state forgets
the process; the last ``keep`` finished reports of each service stay after that.
``drainwatch_shutdown_violations_total`` counts each rule once per process, when the
process is judged, so it never goes backwards when processes are forgotten.

Locks: the state's lock is always taken before this store's lock, never the other way.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from .config import DEFAULT_DRAIN_BUDGET_SECONDS
from .drain_report import DrainReport, build_report, snapshot, wants_report
from .state import Instance, Service, State
from .verdicts import RULES

DEFAULT_KEEP: Final = 20


@dataclass(slots=True)
class _Entry:
    report: DrainReport
    # (last datagram seq, connected, forgotten): a complete report is rebuilt only when
    # one of these moved
    version: tuple[int, bool, bool]
    counted: set[str] = field(default_factory=set)
    finished: bool = False


@dataclass(frozen=True, slots=True)
class ServiceShutdown:
    """What /metrics shows of one service's shutdowns."""

    latest: DrainReport | None  # the most recent shutdown, in progress or over
    latest_complete: DrainReport | None
    violations: dict[str, int]  # rule -> processes that broke it (monotonic)
    last_exit: float | None  # when the latest process that went away went away


class DrainReports:
    """Thread-safe. ``refresh`` reads the state; the other readers only read the store."""

    def __init__(
        self,
        state: State,
        budget_seconds: float = DEFAULT_DRAIN_BUDGET_SECONDS,
        keep: int = DEFAULT_KEEP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.budget_seconds = budget_seconds
        self._state = state
        self._keep = keep
        self._clock = clock
        self._lock = threading.Lock()
        self._current: dict[tuple[str, str], _Entry] = {}
        self._finished: dict[str, deque[_Entry]] = {}
        self._violations: dict[str, dict[str, int]] = {}
        self._last_exit: dict[str, float] = {}
        state.retire_observers.append(self._forget)

    # -- updating ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Build or update the report of every process with a shutdown in progress or over."""
        now = self._clock()
        with self._state.lock:
            for service, instance in self._state.instances():
                self._observe(service.name, instance, now, forgotten=False)

    def _forget(self, service: Service, instance: Instance) -> None:
        # called by the state, with its lock held, just before it forgets the process
        self._observe(service.name, instance, self._clock(), forgotten=True)
        with self._lock:
            self._current.pop((service.name, instance.instance), None)

    def _observe(self, service: str, instance: Instance, now: float, forgotten: bool) -> None:
        if not wants_report(instance, forgotten):
            return
        key = (service, instance.instance)
        version = (instance.last_seq, instance.connected, forgotten)
        with self._lock:
            entry = self._current.get(key)
            if entry is not None and entry.report.complete and entry.version == version:
                return
        report = build_report(snapshot(service, instance, forgotten), self.budget_seconds, now)
        with self._lock:
            entry = self._current.get(key)
            if entry is None:
                entry = self._current[key] = _Entry(report, version)
            else:
                entry.report, entry.version = report, version
            counts = self._violations.setdefault(service, dict.fromkeys(RULES, 0))
            for rule in report.rules - entry.counted:
                entry.counted.add(rule)
                counts[rule] = counts.get(rule, 0) + 1
            if report.complete and not entry.finished:
                entry.finished = True
                history = self._finished.get(service)
                if history is None:
                    history = self._finished[service] = deque(maxlen=self._keep)
                history.append(entry)
            if report.ended is not None:
                self._last_exit[service] = max(self._last_exit.get(service, 0.0), report.ended)

    # -- reading -------------------------------------------------------------------------------

    def _by_service(self) -> dict[str, list[DrainReport]]:
        """Every kept report per service, newest shutdown first. Call with the lock held."""
        entries: dict[int, tuple[str, _Entry]] = {}
        for (service, _), entry in self._current.items():
            entries[id(entry)] = (service, entry)
        for service, history in self._finished.items():
            for entry in history:
                entries[id(entry)] = (service, entry)
        grouped: dict[str, list[DrainReport]] = {}
        for service, entry in entries.values():
            grouped.setdefault(service, []).append(entry.report)
        for reports in grouped.values():
            reports.sort(key=_newest_first)
        return grouped

    def reports(self, service: str | None = None, everything: bool = False) -> list[DrainReport]:
        """The latest report of each service (or of ``service``); with ``everything``,
        every kept report. Services in name order, newest shutdown first."""
        with self._lock:
            grouped = self._by_service()
        found: list[DrainReport] = []
        for name in sorted(grouped):
            if service is not None and name != service:
                continue
            found.extend(grouped[name] if everything else grouped[name][:1])
        return found

    def document(self, service: str | None = None, everything: bool = False) -> dict[str, Any]:
        """The ``/api/v1/report`` document, fresh from the state."""
        self.refresh()
        return {
            "budget_seconds": self.budget_seconds,
            "reports": [report.to_json() for report in self.reports(service, everything)],
        }

    def by_service(self) -> dict[str, ServiceShutdown]:
        """Per service: the latest reports, violation counters and last exit (for /metrics)."""
        with self._lock:
            grouped = self._by_service()
            services = set(grouped) | set(self._violations) | set(self._last_exit)
            return {
                name: ServiceShutdown(
                    latest=grouped[name][0] if grouped.get(name) else None,
                    latest_complete=next(
                        (report for report in grouped.get(name, []) if report.complete), None
                    ),
                    violations=dict(self._violations.get(name, {})),
                    last_exit=self._last_exit.get(name),
                )
                for name in services
            }


def _newest_first(report: DrainReport) -> tuple[float, str]:
    started = report.origin if report.origin is not None else report.updated
    return (-started, report.instance)
