"""Find the processes of the target service: by PID, by command line, or from the SDK.

A process is identified by ``(pid, create_time)``, never by its PID alone: PIDs are reused
(``pid_max`` is often 32768) and a process that takes over a target's PID is a different
process. Several processes are one service: a matching process and its descendants (the
workers of gunicorn or ``uvicorn --workers``, whose command lines need not match) are
grouped under their topmost matching ancestor. A target that restarts under a new PID is
picked up again by the next ``discover()``; one that vanished is reported as gone with the
time it was last seen alive.

Every OS dependency is injected (``psutil.pids``, ``psutil.Process``, the clock), so tests
hand in fakes built from recorded psutil output. ``discover()`` never raises.

``TargetSelector`` and the parsers of its settings are in
:mod:`drainwatch.collectors.target_selector`, the data a discovery returns in
:mod:`drainwatch.collectors.target_types`, the psutil protocols in
:mod:`drainwatch.collectors.psutil_types`.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

import psutil
from drainwatch._clock import steady_time

from .psutil_types import ProcessFactory, ProcessHandle
from .target_selector import TargetSelector, parse_target_cmdline, parse_target_pid
from .target_types import GoneProcess, ProcessId, Rejected, SdkProcess, TargetProcess, Targets

# Discovery is configured with the selector and its parsers and hands out the target
# types, so callers get all of them from here.
__all__ = [
    "BY_CMDLINE",
    "BY_PARENT",
    "BY_PID",
    "BY_SDK",
    "EXITED",
    "PID_REUSED",
    "SDK_START_TOLERANCE_SECONDS",
    "UNMATCHED",
    "GoneProcess",
    "ProcessFactory",
    "ProcessHandle",
    "ProcessId",
    "Rejected",
    "SdkProcess",
    "TargetDiscovery",
    "TargetProcess",
    "TargetSelector",
    "Targets",
    "parse_target_cmdline",
    "parse_target_pid",
]

# found_by values
BY_PID: Final = "pid"
BY_CMDLINE: Final = "cmdline"
BY_SDK: Final = "sdk"
BY_PARENT: Final = "child"  # a descendant of a matching process (a worker)

# gone reasons
EXITED: Final = "exited"
PID_REUSED: Final = "pid_reused"
UNMATCHED: Final = "no_longer_matched"

# psutil's create_time() is the kernel's start time in clock ticks plus the boot time,
# which /proc/stat gives in whole seconds (rounded down): it is never later than the true
# start. The SDK's "started" is time.time() when its reporter began, so a process that
# reported "started" at S was created before S; a small allowance covers clock-tick rounding.
SDK_START_TOLERANCE_SECONDS: Final = 0.05
_CMDLINE_SHOWN: Final = 256
_GONE_KEPT: Final = 32


# -- discovery --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Row:
    pid: int
    create_time: float
    ppid: int
    zombie: bool
    handle: ProcessHandle
    cmdline: str | None  # None: not read or unreadable

    @property
    def id(self) -> ProcessId:
        return ProcessId(self.pid, self.create_time)


@dataclass(slots=True)
class _Seen:
    found_by: str
    first_seen: float
    last_seen: float
    is_root: bool


class TargetDiscovery:
    """Finds the target processes on each ``discover()`` call and remembers who was seen.

    Thread safety: ``discover`` may be called from any thread; calls are serialized (no
    other thread reads this object's state, so the scan runs under its lock). Cost: one
    pass over ``/proc`` (about 0.1 ms per process), so call it about every second, and at
    once when a sample finds a target gone.
    """

    def __init__(
        self,
        selector: TargetSelector,
        *,
        pids: Callable[[], Iterable[int]] = psutil.pids,
        process: ProcessFactory = psutil.Process,
        clock: Callable[[], float] = steady_time,
        exclude_own_tree: bool = True,
        own_pid: Callable[[], int] = os.getpid,
    ) -> None:
        self.selector = selector
        self._pids = pids
        self._process = process
        self._clock = clock
        self._exclude_own_tree = exclude_own_tree
        self._own_pid = own_pid
        self._lock = threading.Lock()
        self._alive: dict[ProcessId, _Seen] = {}
        self._gone: deque[GoneProcess] = deque(maxlen=_GONE_KEPT)
        self._pinned_pid: ProcessId | None = None
        self._sdk_bound: dict[str, ProcessId] = {}
        self._root_gone = False
        self._restarts = 0

    def discover(self, sdk: Iterable[SdkProcess] = ()) -> Targets:
        """Scan the processes now. ``sdk``: the processes the SDK reported (copied out of
        the agent's state). Never raises: a failure becomes ``Targets.problem``."""
        sdk_processes = tuple(sdk) if self.selector.from_sdk else ()
        with self._lock:
            try:
                rows, unreadable = self._scan(need_cmdline=self.selector.cmdline is not None)
            except Exception as error:  # the process table itself could not be listed
                return Targets(
                    at=self._clock(),
                    processes=(),
                    gone=tuple(self._gone),
                    restarts=self._restarts,
                    problem=f"the process table could not be read: {error!r}",
                )
            return self._select(rows, unreadable, sdk_processes, self._clock())

    # -- scanning ------------------------------------------------------------------------

    def _scan(self, need_cmdline: bool) -> tuple[dict[int, _Row], int]:
        rows: dict[int, _Row] = {}
        unreadable = 0
        for pid in self._pids():
            try:
                handle = self._process(pid)
                with handle.oneshot():
                    create_time = handle.create_time()
                    ppid = handle.ppid()
                    zombie = handle.status() == psutil.STATUS_ZOMBIE
                cmdline = None
                if need_cmdline and not zombie:
                    cmdline = _joined(handle)
                    unreadable += cmdline is None
            except psutil.NoSuchProcess:
                continue  # exited during the scan (ZombieProcess included)
            except Exception:
                unreadable += 1
                continue
            rows[pid] = _Row(pid, create_time, ppid, zombie, handle, cmdline)
        return rows, unreadable

    # -- selecting ----------------------------------------------------------------------

    def _select(
        self,
        rows: dict[int, _Row],
        unreadable: int,
        sdk: tuple[SdkProcess, ...],
        now: float,
    ) -> Targets:
        children = _children_map(rows)
        excluded = self._own_tree(rows, children)
        rejected: list[Rejected] = []
        problems: list[str] = []
        roots: dict[int, str] = {}
        self._select_pid(rows, roots, rejected, problems)
        self._select_cmdline(rows, excluded, roots, problems)
        self._select_sdk(rows, sdk, roots, rejected)
        roots = {pid: how for pid, how in roots.items() if pid not in excluded}

        found: dict[int, tuple[str, int]] = {}  # pid -> (found_by, root pid)
        for pid in sorted(roots, key=lambda pid: _depth(pid, rows)):
            if pid in found:
                continue  # a worker already grouped under a matching ancestor
            found[pid] = (roots[pid], pid)
            for child in _descendants(pid, children):
                if child in excluded or rows[child].zombie:
                    continue
                if child in roots:
                    found[child] = (roots[child], pid)
                elif self.selector.include_children:
                    found[child] = (BY_PARENT, pid)

        processes = self._remember(rows, found, now)
        if not processes and not problems:
            problems.append(self._nothing_found(sdk))
        return Targets(
            at=now,
            processes=processes,
            gone=tuple(self._gone),
            rejected=tuple(rejected),
            restarts=self._restarts,
            problem="; ".join(problems) if problems else None,
            unreadable=unreadable,
        )

    def _select_pid(
        self,
        rows: dict[int, _Row],
        roots: dict[int, str],
        rejected: list[Rejected],
        problems: list[str],
    ) -> None:
        pid = self.selector.pid
        if pid is None:
            return
        row = rows.get(pid)
        pinned = self._pinned_pid
        if row is None or row.zombie:
            when = "exited" if pinned is not None else "does not exist"
            problems.append(
                f"--target-pid {pid}: the process {when}; if it never existed, the PID "
                "namespace may not be shared (set shareProcessNamespace: true on the pod)"
            )
        elif pinned is not None and pinned != row.id:
            reason = (
                f"the target {pinned} is gone; the process now using PID {pid} started at "
                f"{row.create_time:.2f}, so it is a different process and is not followed"
            )
            rejected.append(Rejected(pid, "--target-pid", reason))
            problems.append(f"--target-pid {pid}: {reason}")
        else:
            self._pinned_pid = row.id
            roots[pid] = BY_PID

    def _select_cmdline(
        self,
        rows: dict[int, _Row],
        excluded: set[int],
        roots: dict[int, str],
        problems: list[str],
    ) -> None:
        pattern = self.selector.cmdline
        if pattern is None:
            return
        matched = False
        for pid, row in rows.items():
            if row.zombie or row.cmdline is None or pid in excluded:
                continue
            if pattern.search(row.cmdline):
                matched = True
                roots.setdefault(pid, BY_CMDLINE)
        if not matched:
            problems.append(
                f"no process matches --target-cmdline {pattern.pattern!r} outside the "
                "agent's own process tree; check the pattern against `ps -eo pid,args` in "
                "the agent's container (the pod needs shareProcessNamespace: true)"
            )

    def _select_sdk(
        self,
        rows: dict[int, _Row],
        sdk: tuple[SdkProcess, ...],
        roots: dict[int, str],
        rejected: list[Rejected],
    ) -> None:
        offered = {process.instance for process in sdk}
        for instance in list(self._sdk_bound):
            if instance not in offered:
                del self._sdk_bound[instance]
        for process in sdk:
            row = rows.get(process.pid)
            if row is None or row.zombie:
                continue  # that SDK process has exited; its facts come from the SDK
            source = f"sdk instance {process.instance}"
            bound = self._sdk_bound.get(process.instance)
            if bound is not None and bound != row.id:
                rejected.append(
                    Rejected(
                        process.pid,
                        source,
                        f"the process it ran in ({bound}) is gone; PID {process.pid} now "
                        f"belongs to a process started at {row.create_time:.2f}",
                    )
                )
                continue
            reference = min(
                value for value in (process.started, process.first_seen) if value is not None
            )
            if bound is None and row.create_time > reference + SDK_START_TOLERANCE_SECONDS:
                rejected.append(
                    Rejected(
                        process.pid,
                        source,
                        f"PID {process.pid} belongs to a process started at "
                        f"{row.create_time:.2f}, after the SDK process reported at "
                        f"{reference:.2f}: the PID was reused, or the PID namespace is not "
                        "shared with the agent (shareProcessNamespace: true)",
                    )
                )
                continue
            self._sdk_bound[process.instance] = row.id
            roots.setdefault(process.pid, BY_SDK)

    def _own_tree(self, rows: dict[int, _Row], children: dict[int, list[int]]) -> set[int]:
        if not self._exclude_own_tree:
            return set()
        own = self._own_pid()
        return {own, *_descendants(own, children)}

    def _remember(
        self, rows: dict[int, _Row], found: dict[int, tuple[str, int]], now: float
    ) -> tuple[TargetProcess, ...]:
        current: dict[ProcessId, TargetProcess] = {}
        for pid, (found_by, root) in sorted(found.items()):
            row = rows[pid]
            seen = self._alive.get(row.id)
            is_root = pid == root
            if seen is None:
                if is_root and self._root_gone:
                    self._restarts += 1
                    self._root_gone = False
                seen = self._alive[row.id] = _Seen(found_by, now, now, is_root)
            seen.last_seen = now
            current[row.id] = TargetProcess(
                id=row.id,
                ppid=row.ppid,
                found_by=found_by,
                root=rows[root].id,
                cmdline=_shown(row, self.selector.cmdline is None),
                first_seen=seen.first_seen,
            )
        for identity in [identity for identity in self._alive if identity not in current]:
            seen = self._alive.pop(identity)
            now_at_pid = rows.get(identity.pid)
            if now_at_pid is None or now_at_pid.zombie:
                reason = EXITED
            elif now_at_pid.create_time != identity.create_time:
                reason = PID_REUSED
            else:
                reason = UNMATCHED
            self._gone.append(
                GoneProcess(identity, seen.found_by, seen.first_seen, seen.last_seen, now, reason)
            )
            if seen.is_root and not any(item.is_root for item in self._alive.values()):
                self._root_gone = True
        return tuple(current.values())

    def _nothing_found(self, sdk: tuple[SdkProcess, ...]) -> str:
        selector = self.selector
        if selector.pid is None and selector.cmdline is None:
            if selector.from_sdk and sdk:
                return "none of the processes the SDK reported is running"
            return (
                "no target configured: set --target-pid or --target-cmdline, or run the "
                "service with the drainwatch SDK so that it reports its PID"
            )
        return "no target process found"


# -- helpers ----------------------------------------------------------------------------------


def _joined(handle: ProcessHandle) -> str | None:
    try:
        return " ".join(handle.cmdline())
    except psutil.NoSuchProcess:
        raise
    except Exception:
        return None


def _shown(row: _Row, need_read: bool) -> str:
    text = row.cmdline
    if text is None and need_read:
        try:
            text = _joined(row.handle)
        except psutil.NoSuchProcess:
            text = None
    text = text or ""
    return text if len(text) <= _CMDLINE_SHOWN else text[: _CMDLINE_SHOWN - 1] + "\u2026"


def _children_map(rows: dict[int, _Row]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, row in rows.items():
        # a row whose parent started after it is not that parent's child (the parent's
        # PID was reused), whatever /proc says about ppid
        parent = rows.get(row.ppid)
        if parent is not None and parent.create_time <= row.create_time and row.ppid != pid:
            children.setdefault(row.ppid, []).append(pid)
    return children


def _descendants(pid: int, children: dict[int, list[int]]) -> Iterator[int]:
    stack = list(children.get(pid, ()))
    seen: set[int] = set()
    while stack:
        child = stack.pop()
        if child in seen:
            continue
        seen.add(child)
        yield child
        stack.extend(children.get(child, ()))


def _depth(pid: int, rows: dict[int, _Row]) -> int:
    depth = 0
    seen = {pid}
    row: _Row | None = rows.get(pid)
    while row is not None and row.ppid not in seen:
        seen.add(row.ppid)
        row = rows.get(row.ppid)
        depth += row is not None
    return depth
