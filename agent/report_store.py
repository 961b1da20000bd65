"""Drain reports the agent keeps, and the violation counters they feed.

One report per process whose shutdown is in progress or over, rebuilt from the state
on demand (each scrape, each API call) and one last time just before the state forgets
the process; the last ``keep`` finished reports of each service stay after that.
``drainwatch_shutdown_violations_total`` counts each rule once per process, when the
process is judged, so it never goes backwards when processes are forgotten.

Locks: the state's lock is always taken before this store's lock, never the other way.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from drainwatch._clock import steady_time

from .config import DEFAULT_DRAIN_BUDGET_SECONDS
from .drain_report import DrainReport, build_report, snapshot, wants_report
from .state import Instance, Service, State
from .task_state import note_deadline, stalls_since
from .verdicts import RULES

logger = logging.getLogger("drainwatch.agent")

DEFAULT_KEEP: Final = 20
SOURCE_OUTSIDE: Final = "outside"
SOURCE_RESTORED: Final = "restored"
_FINISHED_KEPT_CURRENT: Final = 32


class OutsideSource(Protocol):
    """The outside view's reports (``outside_report.OutsideReports``)."""

    def version(self) -> tuple[int, int, int]: ...
    def reports(self, now: float) -> list[tuple[str, DrainReport]]: ...
    def augment(self, report: DrainReport) -> DrainReport: ...


@dataclass(slots=True)
class _Entry:
    report: DrainReport
    # (last datagram seq, connected, forgotten, outside version): a complete report is
    # rebuilt only when one of these moved
    version: tuple[object, ...]
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
        clock: Callable[[], float] = steady_time,
        outside: OutsideSource | None = None,
        max_services: int | None = None,
    ) -> None:
        self.budget_seconds = budget_seconds
        self.outside = outside
        # Called (outside every lock) with each report that was built anew: persistence.
        self.observers: list[Callable[[DrainReport], None]] = []
        self._state = state
        self._keep = keep
        self._clock = clock
        self._lock = threading.Lock()
        self._current: dict[tuple[str, str], _Entry] = {}
        self._finished: dict[str, deque[_Entry]] = {}
        self._violations: dict[str, dict[str, int]] = {}
        self._last_exit: dict[str, float] = {}
        # Reports outlive the services the state forgets; beyond this many services, the one
        # whose reports were stored longest ago is dropped, so a churn of names stays bounded.
        self._max_services = max_services if max_services is not None else state.limits.max_services
        self._recency: dict[str, int] = {}
        self._stores = 0
        state.retire_observers.append(self._forget)

    # -- updating ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Build or update the report of every process with a shutdown in progress or over."""
        now = self._clock()
        outside_version = self.outside.version() if self.outside is not None else None
        changed: list[DrainReport] = []
        with self._state.lock:
            for service, instance in self._state.instances():
                self._observe(service.name, instance, now, False, outside_version, changed)
        if self.outside is not None:
            for key, report in self.outside.reports(now):
                entry_key = (report.service, f"{SOURCE_OUTSIDE}:{key}")
                if self._store(report.service, entry_key, (outside_version,), report):
                    changed.append(report)
        self._notify(changed)

    def _forget(self, service: Service, instance: Instance) -> None:
        # called by the state, with its lock held, just before it forgets the process
        changed: list[DrainReport] = []
        version = self.outside.version() if self.outside is not None else None
        self._observe(service.name, instance, self._clock(), True, version, changed)
        with self._lock:
            self._current.pop((service.name, instance.instance), None)
        self._notify(changed)

    def restore(self, reports: list[DrainReport]) -> None:
        """Reports read back from the state directory: served and counted like finished ones
        until newer shutdowns push them out of the history."""
        for report in sorted(reports, key=lambda item: item.updated):
            key = (report.service, f"{SOURCE_RESTORED}:{report.instance}:{report.updated}")
            self._store(report.service, key, (), report)

    def _prune_finished_locked(self) -> None:
        # Outside and restored reports have no process for the state to retire: once
        # finished they live on in the history only, beyond a few recent ones.
        done = [
            key
            for key, entry in self._current.items()
            if entry.finished and key[1].startswith((SOURCE_OUTSIDE, SOURCE_RESTORED))
        ]
        for key in done[: max(0, len(done) - _FINISHED_KEPT_CURRENT)]:
            del self._current[key]

    def _notify(self, changed: list[DrainReport]) -> None:
        for report in changed:
            for observer in self.observers:
                try:
                    observer(report)
                except Exception:  # an observer must not break a scrape
                    logger.exception("drainwatch agent: a drain report observer failed")

    def _observe(
        self,
        service: str,
        instance: Instance,
        now: float,
        forgotten: bool,
        outside_version: object,
        changed: list[DrainReport],
    ) -> None:
        if not wants_report(instance, forgotten):
            return
        key = (service, instance.instance)
        version = (instance.last_seq, instance.connected, forgotten, outside_version)
        with self._lock:
            entry = self._current.get(key)
            if entry is not None and entry.report.complete and entry.version == version:
                return
        report = build_report(snapshot(service, instance, forgotten), self.budget_seconds, now)
        deadline = note_deadline(
            instance.tasks, report.origin, report.ended, report.killed, self.budget_seconds, now
        )
        stalls = stalls_since(instance.tasks, report.origin)
        if deadline is not None or stalls:
            report = replace(report, tasks_at_deadline=deadline, loop_stalls=stalls)
        if self.outside is not None:
            try:
                report = self.outside.augment(report)
            except Exception:  # the SDK's report stands without the outside part
                logger.exception("drainwatch agent: the outside part of a report failed")
        if self._store(service, key, version, report):
            changed.append(report)

    def _store(
        self, service: str, key: tuple[str, str], version: tuple[object, ...], report: DrainReport
    ) -> bool:
        """Keep ``report`` under ``key``; True when it was new or changed."""
        with self._lock:
            entry = self._current.get(key)
            if entry is not None and entry.version == version and entry.report.complete:
                return False
            if entry is None:
                entry = self._current[key] = _Entry(report, version)
            else:
                before = entry.report
                entry.report, entry.version = report, version
                if _same(before, report):
                    return False
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
                self._prune_finished_locked()
            if report.ended is not None:
                self._last_exit[service] = max(self._last_exit.get(service, 0.0), report.ended)
            self._stores += 1
            self._recency[service] = self._stores
            self._bound_services_locked(service)
            return True

    def _bound_services_locked(self, keep: str) -> None:
        while len(self._recency) > self._max_services:
            oldest = min(
                (name for name in self._recency if name != keep), key=self._recency.__getitem__
            )
            del self._recency[oldest]
            self._finished.pop(oldest, None)
            self._violations.pop(oldest, None)
            self._last_exit.pop(oldest, None)
            for key in [
                key for key, entry in self._current.items() if key[0] == oldest and entry.finished
            ]:
                del self._current[key]

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


def _same(before: DrainReport, after: DrainReport) -> bool:
    """Nothing a reader sees has changed but the time it was built."""
    return before == replace(after, updated=before.updated)
