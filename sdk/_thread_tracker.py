"""The process's threads, sampled from the reporter thread: what each waits on, since when.

``sys._current_frames()`` gives every thread's innermost frame; the rules of
:mod:`._thread_waits` (the same ones the agent applies to py-spy's dumps) turn the frames,
and when they say nothing the system call the thread sits in
(``/proc/self/task/TID/syscall``, Linux), into a reason. A thread blocked in a drainwatch
``ThreadChannel`` is ``channel_receive`` / ``channel_send`` with the channel's name and the
exact start of the wait, which the channel stamps; for every other wait the start is the
first sample that saw the thread waiting at the same place (resolution: the interval).

A wait told by the kernel alone is listed only once it is *settled*: seen at the same place
in two consecutive samples, with (almost) no CPU time used by the thread in between
(``/proc/self/task/TID/schedstat``). A thread that runs Python code but waits for the GIL
at the moment of a sample sits in the same ``futex`` call as one blocked on a lock; only its
CPU time tells them apart. ``dump_tasks()`` lists what it sees at once.

Threads may start and end during a sample: a thread gone by the time its name is looked up
is reported by its id, and one gone before its kernel state is read is classified from its
frames alone. Running threads and threads whose wait is unknown are counted but not listed.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any, Final, NamedTuple

from ._frames import MAX_FRAMES, describe, describe_frames, outward
from ._gc_pause import collections_paused
from ._protocol import MAX_NAME_CHARS, clip
from ._thread_waits import (
    BY_KERNEL,
    FD_CALLS,
    NOT_WAITING,
    KernelWait,
    classify,
    classify_frames,
    fd_kind,
    parse_syscall,
)

MAX_THREADS_LISTED: Final = 50
# Frames looked at per thread: enough for the classification's outward walk and a stack.
_DEPTH: Final = 24
_MACHINE: Final = platform.machine()


class _FrameView(NamedTuple):
    """A frame as the classification rules read it (py-spy's names on 3.11+)."""

    name: str
    filename: str


@dataclass(slots=True)
class _Seen:
    place: tuple[str, tuple[tuple[CodeType, int], ...]]
    since: float  # wall clock
    samples: int = 1  # consecutive samples at this place
    cpu: int | None = None  # the thread's CPU time (ns) at the last sample
    idle: bool = False  # it used (almost) no CPU between the last two samples
    at: float = 0.0  # wall clock of the last sample


class ThreadWaitStamp(NamedTuple):
    """A thread blocked in a ThreadChannel, as the channel stamped it."""

    reason: str
    channel: str
    started: float  # time.monotonic()


def kernel_wait(native_id: int | None, proc: str = "/proc/self") -> KernelWait | None:
    """The system call thread ``native_id`` of this process sits in, or ``None``."""
    if native_id is None:
        return None
    try:
        with open(f"{proc}/task/{native_id}/syscall", encoding="ascii") as handle:
            text = handle.read(512)
    except (OSError, ValueError):  # not Linux, or the thread just ended
        return None
    call, argument = parse_syscall(text, _MACHINE)
    kind = None
    if call in FD_CALLS and argument is not None and 0 <= argument < 1 << 24:
        try:
            kind = fd_kind(os.readlink(f"{proc}/fd/{argument}"))
        except OSError:
            pass
    return KernelWait(call, kind)


def thread_cpu_ns(native_id: int | None, proc: str = "/proc/self") -> int | None:
    """CPU time thread ``native_id`` of this process has used, in ns, or ``None``."""
    if native_id is None:
        return None
    try:
        with open(f"{proc}/task/{native_id}/schedstat", encoding="ascii") as handle:
            return int(handle.read(128).split()[0])
    except (OSError, ValueError, IndexError):  # not Linux, no schedstat, or the thread ended
        return None


def _idle(before: int | None, after: int | None, seconds: float) -> bool:
    """Used no more CPU than 1 ms plus 1 % of the time between two samples; True if unknown."""
    if before is None or after is None:
        return True
    return after - before <= 1_000_000 + 10_000_000 * max(0.0, seconds)


class ThreadTracker:
    """Samples every thread but the calling one; thread-safe."""

    def __init__(self) -> None:
        self._seen: dict[int, _Seen] = {}
        self._lock = threading.Lock()

    def sample(
        self,
        stamps: dict[int, ThreadWaitStamp],
        now: float,
        mono: float,
        skip: Iterable[int] = (),
        settled: bool = True,
    ) -> dict[str, Any]:
        """A ``threads`` record (docs/protocol.md) of every thread but the calling one and
        those in ``skip``. ``stamps`` maps thread idents to the ThreadChannel waits they
        are in. Never raises on threads that come and go."""
        skipped = {threading.get_ident(), *skip}
        threads = {thread.ident: thread for thread in threading.enumerate()}
        listed: list[dict[str, Any]] = []
        waiting: Counter[str] = Counter()
        # Frame objects of other threads are made here (sys._current_frames, f_back): see
        # _gc_pause for why no collection may run meanwhile.
        with self._lock, collections_paused():
            frames = sys._current_frames()
            seen: dict[int, _Seen] = {}
            for ident, frame in frames.items():
                if ident in skipped:
                    continue
                thread = threads.get(ident)
                entry = self._one(ident, frame, thread, stamps.get(ident), now, mono, seen, settled)
                if entry is not None:
                    waiting[entry["reason"]] += 1
                    listed.append(entry)
            self._seen = seen
        listed.sort(key=lambda entry: -float(entry["wait"]))
        return {
            "type": "threads",
            "sampled_at": now,
            "threads": len(frames),
            "waiting": dict(waiting),
            "top": listed[:MAX_THREADS_LISTED],
        }

    def _one(
        self,
        ident: int,
        frame: FrameType,
        thread: threading.Thread | None,
        stamp: ThreadWaitStamp | None,
        now: float,
        mono: float,
        seen: dict[int, _Seen],
        settled: bool,
    ) -> dict[str, Any] | None:
        stack = outward(frame, _DEPTH)
        native_id = getattr(thread, "native_id", None)
        site_index: int | None = 0
        target = None
        by_kernel = False
        if stamp is not None:
            reason, target = stamp.reason, stamp.channel
        else:
            views = [_FrameView(f.f_code.co_qualname, f.f_code.co_filename) for f in stack]
            wait = classify_frames(views)
            if wait is None:
                wait = classify(views, active=None, kernel=kernel_wait(native_id))
                by_kernel = wait.evidence == BY_KERNEL
            reason, site_index = wait.reason, wait.frame_index
        place = (reason, tuple((f.f_code, f.f_lasti) for f in stack[:MAX_FRAMES]))
        known = self._seen.get(ident)
        cpu = thread_cpu_ns(native_id) if by_kernel else None
        if known is None or known.place != place:
            known = _Seen(place, now, cpu=cpu)
        else:
            known.samples += 1
            known.idle = _idle(known.cpu, cpu, now - known.at)
            known.cpu = cpu
        known.at = now
        seen[ident] = known
        if reason in NOT_WAITING:
            return None
        if by_kernel and settled and not (known.samples >= 2 and known.idle):
            return None
        waited = max(0.0, mono - stamp.started) if stamp is not None else now - known.since
        name = clip(thread.name, MAX_NAME_CHARS) if thread is not None else f"thread-{ident}"
        site = stack[site_index] if site_index is not None and site_index < len(stack) else None
        return {
            "thread": name or f"thread-{ident}",
            "ident": ident,
            "native_id": native_id,
            "reason": reason,
            "target": target,
            "since": now - waited,
            "wait": round(waited, 6),
            "site": describe(site.f_code, site.f_lineno) if site is not None else None,
            "stack": describe_frames(stack),
        }
