"""One event loop's tasks, sampled from the reporter thread: what each waits on, since when.

Each sample lists the loop's pending tasks (``asyncio.all_tasks(loop)``, which tolerates the
task set changing under it, and retries), classifies each one (:mod:`._task_waits`) and
remembers where it was seen waiting. A wait's start is exact for drainwatch channels (they
stamp it); for everything else it is the first sample that saw the task waiting at the same
place (same blocking future, same innermost line), so its resolution is the sampling
interval. A task's age is likewise counted from the first sample that saw it.

Tasks that wait at the same place (same reason, target and stack) form a *site*: a thousand
consumers parked on one channel are one site with a count, as in a grouped goroutine dump.
Everything is bounded: at most ``MAX_TASKS_SAMPLED`` tasks are classified per sample (about
3 ms per thousand tasks, taken on the reporter thread), and a record carries the
``MAX_TOP`` longest waits and ``MAX_SITES`` sites.
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import weakref
from collections import Counter
from operator import attrgetter, itemgetter
from types import CodeType
from typing import Any, Final

from ._frames import describe_frames
from ._gc_pause import collections_paused
from ._protocol import MAX_NAME_CHARS, clip
from ._task_waits import NOT_BLOCKED, ExactWait, TaskWait, classify

MAX_TASKS_SAMPLED: Final = 10_000
MAX_TOP: Final = 20
MAX_SITES: Final = 20
MAX_NAMES_PER_SITE: Final = 8

_code = attrgetter("f_code")
_lasti = attrgetter("f_lasti")
_position = attrgetter("f_code", "f_lasti")
_by_wait = itemgetter(0)

# What a sample remembers of a task: [weak reference, first seen, place, seen there since]
# (wall clock). A list, updated in place: one per pending task per sample.
_Seen = list[Any]
# One sampled task: (seconds waited, name, wait, since (wall clock), age in seconds).
_Sampled = tuple[float, str, TaskWait, float, float]
_SiteKey = tuple[str, str | None, tuple[CodeType, ...], tuple[int, ...]]


class TaskTracker:
    """Samples the tasks of one loop; thread-safe (the reporter and ``flush()`` may race)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)
        self._seen: dict[int, _Seen] = {}
        self._lock = threading.Lock()

    def sample(self, exact: dict[int, ExactWait], now: float, mono: float) -> dict[str, Any]:
        """The task part of a ``loop`` record (docs/protocol.md). ``now`` is the wall clock,
        ``mono`` the monotonic one, read together. Never raises on a changing task set."""
        loop = self._loop()
        tasks: list[asyncio.Task[Any]] = []
        if loop is not None and not loop.is_closed():
            try:
                tasks = list(asyncio.all_tasks(loop))
            except RuntimeError:  # the set kept changing for 1000 tries: skip this sample
                tasks = []
        # Classifying reads each coroutine's frame (docs of _gc_pause: why no collection).
        with self._lock, collections_paused():
            sampled = self._classify(tasks[:MAX_TASKS_SAMPLED], exact, now, mono)
        return _summary(len(tasks), sampled, now)

    def _classify(
        self, tasks: list[asyncio.Task[Any]], exact: dict[int, ExactWait], now: float, mono: float
    ) -> list[_Sampled]:
        previous = self._seen
        seen: dict[int, _Seen] = {}
        sampled: list[_Sampled] = []
        for task in tasks:
            wait = classify(task, exact)
            frames = wait.frames
            # f_lasti, not f_lineno: the same instruction is the same line, and reading
            # it costs nothing while a line number is looked up in the code's table.
            place = (wait.reason, id(wait.blocker), *map(_position, frames[:1]))
            known = previous.get(id(task))
            if known is None or known[0]() is not task:
                known = [weakref.ref(task), now, place, now]
            elif known[2] != place:
                known[2], known[3] = place, now
            seen[id(task)] = known
            if wait.started is not None:
                waited = max(0.0, mono - wait.started)
                since = now - waited
            else:
                since = known[3]
                waited = now - since
            try:
                name = task.get_name()
            except Exception:  # a task subclass with its own get_name
                name = "?"
            if not name or len(name) > MAX_NAME_CHARS:
                name = clip(name, MAX_NAME_CHARS) if name else "?"
            sampled.append((waited, name, wait, since, now - known[1]))
        self._seen = seen  # tasks that are gone are forgotten: nothing outlives a sample
        return sampled


def _summary(total: int, sampled: list[_Sampled], now: float) -> dict[str, Any]:
    blocked = [item for item in sampled if item[2].reason not in NOT_BLOCKED]
    return {
        "sampled_at": now,
        "tasks": total,
        "sampled": len(sampled),
        "blocked": dict(Counter(item[2].reason for item in blocked)),
        "top": [
            {
                "task": name,
                "reason": wait.reason,
                "target": wait.target,
                "since": since,
                "wait": round(waited, 6),
                "age": round(age, 6),
            }
            for waited, name, wait, since, age in heapq.nlargest(MAX_TOP, blocked, key=_by_wait)
        ],
        "sites": _sites(sampled),
    }


def _sites(sampled: list[_Sampled]) -> list[dict[str, Any]]:
    groups: dict[_SiteKey, list[_Sampled]] = {}
    for item in sampled:
        wait = item[2]
        key = (
            wait.reason,
            wait.target,
            tuple(map(_code, wait.frames)),
            tuple(map(_lasti, wait.frames)),
        )
        members = groups.get(key)
        if members is None:
            groups[key] = [item]
        else:
            members.append(item)

    def rank(members: list[_Sampled]) -> tuple[bool, float, int]:
        oldest = max(member[0] for member in members)
        return (members[0][2].reason in NOT_BLOCKED, -oldest, -len(members))

    sites = []
    for members in sorted(groups.values(), key=rank)[:MAX_SITES]:
        members.sort(key=_by_wait, reverse=True)
        wait = members[0][2]
        sites.append(
            {
                "reason": wait.reason,
                "target": wait.target,
                "count": len(members),
                "oldest": round(members[0][0], 6),
                "newest": round(members[-1][0], 6),
                "tasks": [
                    {"name": name, "wait": round(waited, 6), "age": round(age, 6)}
                    for waited, name, _, _, age in members[:MAX_NAMES_PER_SITE]
                ],
                "stack": describe_frames(wait.frames),
            }
        )
    return sites
