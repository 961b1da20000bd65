"""Prometheus families of tasks, threads and event loops (docs/metrics.md, "Tasks, threads,
event loop").

From the SDK: blocked tasks by reason and the longest task waits of the live processes of
each service, their loops' lag (a histogram that adds up every process, forgotten ones
included) and worst recent lag, and waiting threads (``source="sdk"``). From the outside
view: the threads py-spy found waiting (``source="pyspy"``). Both thread sources share one
family, so they are exported together here.

A scrape copies what it needs under the state lock and never raises on odd state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from drainwatch._histogram import WAIT_BUCKETS
from drainwatch._task_waits import WAIT_REASONS
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .state import Instance, State
from .task_state import OTHER, empty_lag, lag_total, reason_label

SOURCE_SDK: Final = "sdk"
SOURCE_PYSPY: Final = "pyspy"
_BUCKET_BOUNDS: Final = [f"{bound:g}" for bound in WAIT_BUCKETS] + ["+Inf"]


@dataclass(frozen=True, slots=True)
class BlockedThread:
    """One waiting thread as a series: its label (unique per service), reason, seconds."""

    thread: str
    reason: str
    seconds: float


# The py-spy view of one service: (service, its waiting threads), or None without a target.
PySpyThreads = Callable[[], tuple[str, Sequence[BlockedThread]] | None]


@dataclass(slots=True)
class _ServiceTasks:
    watched: bool = False  # some process of the service ever had a loop watched
    blocked: dict[str, int] = field(default_factory=dict)
    waits: list[tuple[float, str, str, int]] = field(default_factory=list)  # s, task, reason, pid
    lag: list[float] = field(default_factory=empty_lag)
    lag_max: float = 0.0  # over the live loops; 0 with none
    threads: list[tuple[float, str, str, Any]] = field(default_factory=list)  # s, name, reason, id


def _alive(instance: Instance) -> bool:
    exited = instance.shutdown is not None and instance.shutdown.get("exited") is not None
    return instance.connected and not exited


def _add_instance(view: _ServiceTasks, instance: Instance) -> None:
    tasks = instance.tasks
    for index, value in enumerate(lag_total(tasks)):
        view.lag[index] += value
    if tasks.loops:
        view.watched = True
    if not _alive(instance):
        return
    for loop in tasks.loops.values():
        record = loop.record
        if record["closed"]:
            continue
        for reason, count in record["blocked"].items():
            label = reason_label(reason)
            view.blocked[label] = view.blocked.get(label, 0) + count
        for entry in record["top"]:
            view.waits.append((entry["wait"], entry["task"], entry["reason"], instance.pid))
        view.lag_max = max(view.lag_max, record["lag_max"])
    if tasks.threads is not None:
        for entry in tasks.threads["top"]:
            key = entry.get("native_id") or entry["ident"]
            view.threads.append((entry["wait"], entry["thread"], entry["reason"], key))


def _unique(label: str, reason: str, used: set[tuple[str, str]], suffix: object) -> str:
    """``label``, or ``label [suffix]`` (then ``[suffix:2]``, ...) when a series with the same
    label and reason exists: two tasks or threads of one name must stay two series."""
    candidate, number = label, 0
    while (candidate, reason) in used:
        number += 1
        candidate = f"{label} [{suffix}]" if number == 1 else f"{label} [{suffix}:{number}]"
    used.add((candidate, reason))
    return candidate


class TaskCollector(Collector):
    """Exports the task, thread and loop families; ``pyspy_threads`` adds the outside view."""

    def __init__(self, state: State, pyspy_threads: PySpyThreads | None = None) -> None:
        self._state = state
        self._pyspy = pyspy_threads

    def collect(self) -> Iterator[Metric]:
        state = self._state
        with state.lock:
            limits = state.limits
            services: dict[str, _ServiceTasks] = {}
            for service in state.services.values():
                view = services[service.name] = _ServiceTasks(
                    watched=any(service.retired_lag), lag=list(service.retired_lag)
                )
                for instance in service.instances.values():
                    _add_instance(view, instance)
        blocked = GaugeMetricFamily(
            "drainwatch_tasks_blocked",
            "Tasks waiting now in the watched event loops, by what they wait on.",
            labels=["service", "reason"],
        )
        waits = GaugeMetricFamily(
            "drainwatch_task_blocked_seconds",
            "The longest current task waits (top N per service), in seconds.",
            labels=["service", "task", "reason"],
        )
        lag = HistogramMetricFamily(
            "drainwatch_event_loop_lag_seconds",
            "How late the watched event loops ran a callback that was due (scheduling delay).",
            labels=["service"],
        )
        lag_max = GaugeMetricFamily(
            "drainwatch_event_loop_lag_max_seconds",
            "Worst event-loop lag of the last 60 s over the live loops (0 with none), a block "
            "still going on included.",
            labels=["service"],
        )
        threads = GaugeMetricFamily(
            "drainwatch_thread_blocked_seconds",
            "Threads stuck in the same wait at the same place, and for how long (a lower bound "
            "at the sampling resolution). source: pyspy (outside) or sdk (inside).",
            labels=["service", "thread", "reason", "source"],
        )
        for name in sorted(services):
            view = services[name]
            if view.watched:
                _add_tasks(blocked, waits, name, view, limits.max_blocked_tasks)
                _add_lag(lag, lag_max, name, view)
            _add_threads(threads, name, view, limits.max_blocked_threads)
        self._add_pyspy(threads)
        yield from (blocked, waits, lag, lag_max, threads)

    def _add_pyspy(self, family: GaugeMetricFamily) -> None:
        found = self._pyspy() if self._pyspy is not None else None
        if found is None:
            return
        service, threads = found
        for thread in threads:
            family.add_metric([service, thread.thread, thread.reason, SOURCE_PYSPY], thread.seconds)


def _add_tasks(
    blocked: GaugeMetricFamily,
    waits: GaugeMetricFamily,
    service: str,
    view: _ServiceTasks,
    cap: int,
) -> None:
    # Every reason, 0 included, so that alert rules see a series from the first scrape.
    for reason in (*WAIT_REASONS, OTHER):
        if reason in WAIT_REASONS or reason in view.blocked:
            blocked.add_metric([service, reason], view.blocked.get(reason, 0))
    used: set[tuple[str, str]] = set()
    view.waits.sort(key=lambda item: -item[0])
    for seconds, task, reason, pid in view.waits[:cap]:
        label = reason_label(reason)
        waits.add_metric([service, _unique(task, label, used, pid), label], seconds)


def _add_lag(
    lag: HistogramMetricFamily, lag_max: GaugeMetricFamily, service: str, view: _ServiceTasks
) -> None:
    cumulative = 0.0
    buckets = []
    for bound, count in zip(_BUCKET_BOUNDS, view.lag[:-1], strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    lag.add_metric([service], buckets, view.lag[-1])
    lag_max.add_metric([service], view.lag_max)


def _add_threads(family: GaugeMetricFamily, service: str, view: _ServiceTasks, cap: int) -> None:
    used: set[tuple[str, str]] = set()
    view.threads.sort(key=lambda item: -item[0])
    for seconds, name, reason, key in view.threads[:cap]:
        label = reason_label(reason)
        family.add_metric([service, _unique(name, label, used, key), label, SOURCE_SDK], seconds)
