"""What target discovery reports: process identities, the processes found, gone and refused.

Plain frozen data, safe to hand between threads. ``ProcessId`` is how every collector names
a process: ``(pid, create_time)``, never the PID alone, because PIDs are reused and a
process that takes over a target's PID is a different process. ``TargetDiscovery``
(:mod:`drainwatch.collectors.targets`) produces the rest; the string fields take the values
of the constants defined there (``BY_*`` for ``found_by``, the gone reasons for ``reason``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class ProcessId:
    """A process, unambiguously: its PID and its start time (Unix seconds, from psutil)."""

    pid: int
    create_time: float

    def __str__(self) -> str:
        return f"PID {self.pid} (started {self.create_time:.2f})"


@dataclass(frozen=True, slots=True)
class SdkProcess:
    """A process the SDK reported, as the agent knows it (``Instance`` in agent/state.py)."""

    pid: int
    instance: str
    first_seen: float  # agent's clock, Unix seconds
    started: float | None = None  # the SDK's own "started", Unix seconds


@dataclass(frozen=True, slots=True)
class TargetProcess:
    id: ProcessId
    ppid: int
    found_by: str  # pid | cmdline | sdk | child
    root: ProcessId  # the topmost process of the service this one belongs to
    cmdline: str  # joined, cut to 256 characters; "" when unreadable
    first_seen: float


@dataclass(frozen=True, slots=True)
class GoneProcess:
    id: ProcessId
    found_by: str
    first_seen: float
    last_seen_alive: float  # the last discovery that found it alive
    noticed: float  # the first discovery that did not
    reason: str  # exited | pid_reused | no_longer_matched


@dataclass(frozen=True, slots=True)
class Rejected:
    """A PID that was offered (by the SDK or ``--target-pid``) and refused, and why."""

    pid: int
    source: str
    reason: str


@dataclass(frozen=True, slots=True)
class Targets:
    """The result of one discovery: immutable, safe to hand to other threads."""

    at: float
    processes: tuple[TargetProcess, ...]
    gone: tuple[GoneProcess, ...] = ()
    rejected: tuple[Rejected, ...] = ()
    restarts: int = 0
    problem: str | None = None
    unreadable: int = 0  # processes whose details could not be read during the scan

    @property
    def up(self) -> bool:
        return bool(self.processes)

    @property
    def ids(self) -> tuple[ProcessId, ...]:
        return tuple(process.id for process in self.processes)

    @property
    def roots(self) -> tuple[ProcessId, ...]:
        return tuple(sorted({process.root for process in self.processes}))
