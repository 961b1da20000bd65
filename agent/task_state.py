"""What the agent keeps of the SDK's ``loop`` and ``threads`` records, per process.

Both records describe the process *now*: each new one replaces the last (an older one that
arrives late is ignored, by ``sampled_at``). The exception is a loop's lag histogram, which
is cumulative: it is kept when a record carries fewer observations (a reordered datagram),
and the histograms of loops the agent forgets (closed ones beyond the cap, processes that
are retired) are folded into totals, so ``drainwatch_event_loop_lag_seconds`` never goes
backwards.

Caps, each counted in ``drainwatch_agent_series_capped_total``: loops per process
(``limits.max_loops_per_instance``, closed loops are forgotten first), top waits per record
(``limits.max_blocked_tasks``, ``limits.max_blocked_threads``), and task and thread names
cut to ``limits.max_label_length``. Stored records are never changed afterwards: readers
may keep references to them after the state lock is released.

At the drain deadline (the shutdown's start plus the drain budget) the tasks and threads
still there are kept for the drain report: what kept the process from exiting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from drainwatch._histogram import WAIT_BUCKETS
from drainwatch._task_waits import NOT_BLOCKED, WAIT_REASONS
from drainwatch._thread_waits import REASONS as THREAD_REASONS

from .config import Limits

OTHER: Final = "other"
MAX_STALLS_KEPT: Final = 32  # per process, the most recent, for the drain report
# Reasons the agent exports as they are; anything else a newer SDK sends is "other".
KNOWN_REASONS: Final = frozenset(WAIT_REASONS) | frozenset(THREAD_REASONS) | NOT_BLOCKED
DEADLINE: Final = "drain_budget"  # alive when the drain budget ran out
KILLED: Final = "killed"  # gone without an exit record before the deadline was seen


def empty_lag() -> list[float]:
    """Bucket counts (non-cumulative, +Inf last), then the sum, as channel waits are kept."""
    return [0.0] * (len(WAIT_BUCKETS) + 2)


@dataclass(slots=True)
class LoopView:
    record: dict[str, Any]
    lag: list[float] = field(default_factory=empty_lag)
    updated: float = 0.0  # sampled_at of the record


@dataclass(slots=True)
class InstanceTasks:
    """One SDK process's loops and threads."""

    loops: dict[int, LoopView] = field(default_factory=dict)
    threads: dict[str, Any] | None = None
    retired_lag: list[float] = field(default_factory=empty_lag)
    # the views at the last report refresh before the deadline, then the frozen dump
    before_deadline: dict[str, Any] | None = None
    at_deadline: dict[str, Any] | None = None
    # every stall seen (a record carries the last 4), by (loop, start), so that a drain
    # report can list those of the shutdown; the most recent MAX_STALLS_KEPT
    stalls: dict[tuple[int, float], dict[str, Any]] = field(default_factory=dict)


def reason_label(reason: str) -> str:
    return reason if reason in KNOWN_REASONS else OTHER


def _add_lag(target: list[float], lag: list[float]) -> None:
    for index, value in enumerate(lag):
        target[index] += value


def _capped_top(
    entries: list[dict[str, Any]],
    key: str,
    cap: int,
    label: Callable[[str], str],
    capped: Callable[[str], None],
    limit_name: str,
) -> list[dict[str, Any]]:
    if len(entries) > cap:
        capped(limit_name)
        entries = sorted(entries, key=lambda entry: -entry["wait"])[:cap]
    return [{**entry, key: label(entry[key])} for entry in entries]


def apply_loop(
    tasks: InstanceTasks,
    record: dict[str, Any],
    limits: Limits,
    label: Callable[[str], str],
    capped: Callable[[str], None],
) -> None:
    """Merge a validated ``loop`` record (docs/protocol.md)."""
    view = tasks.loops.get(record["id"])
    if view is None:
        if len(tasks.loops) >= limits.max_loops_per_instance:
            capped("loops")
            _forget_one_loop(tasks)
        view = tasks.loops[record["id"]] = LoopView(record)
    elif record["sampled_at"] < view.updated:
        return  # an older view that arrived late
    histogram = record["lag"]
    if histogram["count"] >= sum(view.lag[:-1]):
        view.lag = [*map(float, histogram["counts"]), float(histogram["sum"])]
    top = _capped_top(record["top"], "task", limits.max_blocked_tasks, label, capped, "tasks")
    view.record = {**record, "top": top}
    view.updated = record["sampled_at"]
    _keep_stalls(tasks, record)


def _keep_stalls(tasks: InstanceTasks, record: dict[str, Any]) -> None:
    for stall in record["stalls"]:
        key = (record["id"], round(stall["at"], 3))
        known = tasks.stalls.get(key)
        if known is None or known["ongoing"]:  # an ongoing stall is replaced by its end
            tasks.stalls[key] = {"loop": record["id"], "thread": record["thread"], **stall}
    if len(tasks.stalls) > MAX_STALLS_KEPT:
        for key in sorted(tasks.stalls, key=lambda key: tasks.stalls[key]["at"])[
            : len(tasks.stalls) - MAX_STALLS_KEPT
        ]:
            del tasks.stalls[key]


def stalls_since(tasks: InstanceTasks, began: float | None) -> tuple[dict[str, Any], ...]:
    """The stalls (blocks of the loop longer than the threshold) that ended after
    ``began``: the ones a drain report shows, oldest first."""
    if began is None:
        return ()
    return tuple(
        stall
        for stall in sorted(tasks.stalls.values(), key=lambda stall: stall["at"])
        if stall["at"] + stall["seconds"] >= began
    )


def _forget_one_loop(tasks: InstanceTasks) -> None:
    # A closed loop first, then the one not heard of for longest; its lag stays counted.
    victim = min(
        tasks.loops,
        key=lambda key: (not tasks.loops[key].record["closed"], tasks.loops[key].updated),
    )
    _add_lag(tasks.retired_lag, tasks.loops.pop(victim).lag)


def apply_threads(
    tasks: InstanceTasks,
    record: dict[str, Any],
    limits: Limits,
    label: Callable[[str], str],
    capped: Callable[[str], None],
) -> None:
    """Merge a validated ``threads`` record (docs/protocol.md)."""
    if tasks.threads is not None and record["sampled_at"] < tasks.threads["sampled_at"]:
        return
    top = _capped_top(record["top"], "thread", limits.max_blocked_threads, label, capped, "threads")
    tasks.threads = {**record, "top": top}


def lag_total(tasks: InstanceTasks) -> list[float]:
    """Every lag observation of the process: its loops, and those it forgot."""
    total = list(tasks.retired_lag)
    for view in tasks.loops.values():
        _add_lag(total, view.lag)
    return total


def fold_lag(target: list[float], tasks: InstanceTasks) -> None:
    """Add a forgotten process's lag histogram to its service's totals."""
    _add_lag(target, lag_total(tasks))


def views(tasks: InstanceTasks) -> dict[str, Any]:
    """The current loop and thread records (shared, never changed: do not mutate)."""
    return {
        "loops": [tasks.loops[key].record for key in sorted(tasks.loops)],
        "threads": tasks.threads,
    }


def note_deadline(
    tasks: InstanceTasks,
    began: float | None,
    ended: float | None,
    killed: bool,
    budget: float,
    now: float,
) -> Mapping[str, Any] | None:
    """Keep, once, what was alive at the drain deadline; return it (or ``None`` yet).

    Called at every report refresh. Until the deadline the current views are remembered;
    once it has passed with the process still alive, the views then are kept
    (``drain_budget``); a process killed before is kept with its last views (``killed``);
    one that exited after the deadline between two refreshes keeps the views of the last
    refresh before it. A process that exited in time kept nothing from exiting.
    """
    if tasks.at_deadline is not None or began is None:
        return tasks.at_deadline
    if not tasks.loops and tasks.threads is None:
        return None
    deadline = began + budget
    current = {**views(tasks), "deadline": deadline}
    if ended is None:
        if now < deadline:
            tasks.before_deadline = current
            return None
        tasks.at_deadline = {"reason": DEADLINE, **current}
    elif killed:
        tasks.at_deadline = {"reason": KILLED, **current}
    elif ended >= deadline and tasks.before_deadline is not None:
        tasks.at_deadline = {"reason": DEADLINE, **tasks.before_deadline}
    return tasks.at_deadline
