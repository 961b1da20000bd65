"""Sample the target processes from outside: alive, CPU, memory, threads, fds, TCP sockets.

``ProcessCollector.sample(ids)`` returns a ``ProcessSample``: plain frozen data, one
``ProcessStats`` per target process. It never raises: a process that is gone (exited,
zombie, or its PID now used by another process) is reported with ``alive=False`` and
``gone`` saying why; a value the OS refuses is left ``None`` and named in ``denied``; any
other failure is named in ``errors``; everything else is still filled in.

TCP sockets come from a ``SocketSource`` (:mod:`drainwatch.collectors.tcp_sockets`). The
default, ``SockDiagSockets`` (:mod:`drainwatch.collectors.sock_diag`), asks the kernel once
per sample over netlink and falls back to ``PsutilSockets``, which reads them per process.

Thread safety: a collector is used by one thread at a time (the agent's sampling worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Final, TypeVar

import psutil
from drainwatch._clock import steady_time

from .psutil_types import ProcessFactory, ProcessHandle
from .sock_diag import SockDiagSockets
from .target_types import ProcessId
from .tcp_sockets import (
    ConnectionCount,
    ListeningSocket,
    PsutilSockets,
    SocketReading,
    SocketSource,
)

# The socket types and sources are part of what a sample holds and how a collector is
# built, so callers get them from here along with ProcessCollector.
__all__ = [
    "EXITED",
    "PID_REUSED",
    "ZOMBIE",
    "ConnectionCount",
    "ListeningSocket",
    "ProcessCollector",
    "ProcessSample",
    "ProcessStats",
    "PsutilSockets",
    "SockDiagSockets",
    "SocketReading",
    "SocketSource",
]

T = TypeVar("T")

# gone reasons (TargetDiscovery uses the same words)
EXITED: Final = "exited"
ZOMBIE: Final = "zombie"
PID_REUSED: Final = "pid_reused"


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """One target process in one sample. ``None`` means not read (see denied / errors)."""

    id: ProcessId
    alive: bool
    gone: str | None = None  # exited | zombie | pid_reused, when not alive
    status: str | None = None
    cpu_seconds: float | None = None  # user + system, cumulative
    rss_bytes: int | None = None
    threads: int | None = None
    open_fds: int | None = None
    listening: tuple[ListeningSocket, ...] | None = None
    connections: tuple[ConnectionCount, ...] | None = None
    denied: tuple[str, ...] = ()  # psutil calls refused with AccessDenied
    errors: tuple[str, ...] = ()

    @property
    def sockets_known(self) -> bool:
        """Its listening set is known: read this sample, or empty because it is gone."""
        return not self.alive or self.listening is not None


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """All target processes at one moment. Times are the injected clock (Unix seconds):
    everything observed in this sample was true at some instant in [started, finished]."""

    started: float
    finished: float
    full: bool  # stats and connections were read, not only liveness and listeners
    processes: tuple[ProcessStats, ...]
    socket_source: str
    problem: str | None = None
    cost_seconds: float = 0.0  # CPU time the sample took in the sampling thread

    @property
    def alive(self) -> tuple[ProcessStats, ...]:
        return tuple(process for process in self.processes if process.alive)

    @property
    def duration(self) -> float:
        return self.finished - self.started


# -- the collector ----------------------------------------------------------------------------


class _GoneError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Notes:
    def __init__(self) -> None:
        self.denied: list[str] = []
        self.errors: list[str] = []

    def attempt(self, name: str, call: Callable[[], T]) -> T | None:
        try:
            return call()
        except psutil.ZombieProcess as error:
            raise _GoneError(ZOMBIE) from error
        except psutil.NoSuchProcess as error:
            raise _GoneError(EXITED) from error
        except psutil.AccessDenied:
            self.denied.append(name)
        except Exception as error:
            self.errors.append(f"{name}: {error!r}")
        return None


class ProcessCollector:
    """Samples target processes. ``process`` is ``psutil.Process`` or a fake; ``sockets``
    defaults to ``SockDiagSockets`` (netlink, falling back to psutil); ``clock`` gives the
    sample's Unix timestamps and ``cpu_clock`` measures its cost."""

    def __init__(
        self,
        *,
        process: ProcessFactory = psutil.Process,
        sockets: SocketSource | None = None,
        clock: Callable[[], float] = steady_time,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._process = process
        self._sockets: SocketSource = sockets if sockets is not None else SockDiagSockets()
        self._clock = clock
        self._cpu_clock = cpu_clock

    def sample(self, targets: Iterable[ProcessId], *, full: bool = True) -> ProcessSample:
        """Read every target now. ``full=False`` reads only liveness and listening sockets
        (the cheap sample for tight intervals); ``full=True`` also CPU, RSS, threads, fds
        and connections per local port and state. Never raises."""
        started, cpu_started = self._clock(), self._cpu_clock()
        stats: dict[ProcessId, ProcessStats] = {}
        handles: list[tuple[ProcessId, ProcessHandle]] = []
        for identity in dict.fromkeys(targets):
            handle, stat = self._read(identity, full)
            stats[identity] = stat
            if handle is not None:
                handles.append((identity, handle))
        try:
            readings = self._sockets.read(handles, connections=full)
        except Exception as error:  # a SocketSource must not raise; be safe anyway
            readings = {identity: SocketReading(error=repr(error)) for identity, _ in handles}
        for identity, _ in handles:
            stats[identity] = _with_sockets(stats[identity], readings.get(identity))
        return ProcessSample(
            started=started,
            finished=self._clock(),
            full=full,
            processes=tuple(stats.values()),
            socket_source=self._sockets.name,
            problem=self._sockets.problem,
            cost_seconds=max(0.0, self._cpu_clock() - cpu_started),
        )

    def _read(self, identity: ProcessId, full: bool) -> tuple[ProcessHandle | None, ProcessStats]:
        notes = _Notes()
        values: dict[str, object] = {}
        try:
            try:
                handle = self._process(identity.pid)
                created = handle.create_time()
            except psutil.ZombieProcess as error:
                raise _GoneError(ZOMBIE) from error
            except psutil.NoSuchProcess as error:
                raise _GoneError(EXITED) from error
            if created != identity.create_time:
                raise _GoneError(PID_REUSED)
            with handle.oneshot():
                status = notes.attempt("status", handle.status)
                if status == psutil.STATUS_ZOMBIE:
                    raise _GoneError(ZOMBIE)
                values["status"] = status
                if full:
                    cpu = notes.attempt("cpu_times", handle.cpu_times)
                    if cpu is not None:
                        values["cpu_seconds"] = cpu.user + cpu.system
                    memory = notes.attempt("memory_info", handle.memory_info)
                    if memory is not None:
                        values["rss_bytes"] = memory.rss
                    values["threads"] = notes.attempt("num_threads", handle.num_threads)
                    values["open_fds"] = notes.attempt("num_fds", handle.num_fds)
        except _GoneError as gone:
            return None, _stats(identity, False, gone.reason, values, notes)
        except Exception as error:
            notes.errors.append(f"process: {error!r}")
            return None, _stats(identity, True, None, values, notes)
        return handle, _stats(identity, True, None, values, notes)


def _stats(
    identity: ProcessId, alive: bool, gone: str | None, values: dict[str, object], notes: _Notes
) -> ProcessStats:
    status = values.get("status")
    cpu = values.get("cpu_seconds")
    rss = values.get("rss_bytes")
    threads = values.get("threads")
    fds = values.get("open_fds")
    return ProcessStats(
        id=identity,
        alive=alive,
        gone=gone,
        status=status if isinstance(status, str) else None,
        cpu_seconds=float(cpu) if isinstance(cpu, int | float) else None,
        rss_bytes=rss if isinstance(rss, int) else None,
        threads=threads if isinstance(threads, int) else None,
        open_fds=fds if isinstance(fds, int) else None,
        denied=tuple(notes.denied),
        errors=tuple(notes.errors),
    )


def _with_sockets(stat: ProcessStats, reading: SocketReading | None) -> ProcessStats:
    if reading is None:
        return replace(stat, errors=(*stat.errors, "net_connections: not read"))
    if reading.gone:
        # vanished between its liveness check and the socket read: gone, values kept
        return replace(stat, alive=False, gone=EXITED)
    errors = stat.errors if reading.error is None else (*stat.errors, reading.error)
    return replace(
        stat,
        listening=reading.listening,
        connections=reading.connections,
        denied=(*stat.denied, *reading.denied),
        errors=errors,
    )
