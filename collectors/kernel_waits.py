"""Where a dumped thread waits: its frames first, then the system call it sits in.

py-spy's frames name most waits (``Queue.get``, ``socket.recv``, ...). When they say
nothing, the thread's kernel state decides: ``ProcKernelWaits`` reads the system call from
``/proc/PID/task/TID/syscall`` and, for a call on a file descriptor, what kind of file it is.
The rules themselves are in :mod:`drainwatch._thread_waits`, shared with the SDK's own
thread tracker; the sampler (:mod:`drainwatch.collectors.pyspy_sampler`) takes the reader
as a ``KernelWaitReader`` so tests hand in recorded kernel states.
"""

from __future__ import annotations

import os
import platform
from typing import Protocol

from drainwatch._thread_waits import (
    FD_CALLS,
    KernelWait,
    Wait,
    classify,
    classify_frames,
    fd_kind,
    parse_syscall,
)
from drainwatch.collectors.pyspy import PySpyThread


class KernelWaitReader(Protocol):
    def read(self, pid: int, tid: int) -> KernelWait | None: ...


class ProcKernelWaits:
    """The system call a thread sits in, from ``{proc_root}/PID/task/TID/syscall``."""

    def __init__(self, proc_root: str = "/proc", machine: str | None = None) -> None:
        self.proc_root = proc_root
        self.machine = machine or platform.machine()

    def read(self, pid: int, tid: int) -> KernelWait | None:
        try:
            with open(f"{self.proc_root}/{pid}/task/{tid}/syscall", encoding="ascii") as handle:
                text = handle.read(512)
        except (OSError, ValueError):
            return None
        call, argument = parse_syscall(text, self.machine)
        kind = None
        if call in FD_CALLS and argument is not None and 0 <= argument < 1 << 24:
            try:
                kind = fd_kind(os.readlink(f"{self.proc_root}/{pid}/fd/{argument}"))
            except OSError:
                pass
        return KernelWait(call, kind)


def classify_thread(thread: PySpyThread, pid: int, kernel_waits: KernelWaitReader | None) -> Wait:
    """The wait reason of one dumped thread; reads its kernel state only when frames say nothing."""
    wait = classify_frames(thread.frames)
    if wait is not None:
        return wait
    tid = thread.os_thread_id
    kernel = kernel_waits.read(pid, tid) if kernel_waits is not None and tid is not None else None
    # Without an OS thread id py-spy cannot tell idle from active (Python 3.10 and older).
    active = thread.active if tid is not None else None
    return classify(thread.frames, active=active, kernel=kernel)
