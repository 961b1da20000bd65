"""What a thread is waiting on, from its Python frames (innermost first) and a kernel hint.

Pure and standard-library only: the agent feeds it py-spy's frames, and an in-process thread
tracker can feed it frames from ``sys._current_frames()`` (names as ``co_qualname`` or plain
``co_name``; both are understood) plus its own ``/proc/self/task/TID/syscall``.

How a reason is decided, in order:

1. **Frames.** The innermost frame is matched against known wait sites of the standard
   library (``threading.Condition.wait``, ``queue.Queue.get``, ``selectors.*.select``,
   ``socket.accept``, ``subprocess.Popen.wait``, ...). The frames just outside it, while they
   are still library code, refine the reason: ``Condition.wait`` under ``Queue.get`` is
   ``queue_get``, under ``Event.wait`` is ``event``; ``selectors`` under the event loop's
   ``_run_once`` is ``loop_idle``, under ``Popen.communicate`` is ``subprocess``; anything
   under grpc's own frames is ``grpc``. The walk stops at the first frame of other code, so a
   handler's ``Queue.get`` stays ``queue_get`` whatever called the handler. An innermost grpc
   frame (server ``_serve``, a blocking call) is a completion-queue wait unless the thread runs.
2. **Kernel.** A wait inside C code (``time.sleep``, ``Lock.acquire``, ``sock.recv``,
   ``os.waitpid``) leaves no Python frame of its own: the innermost frame is the caller. The
   system call the thread sits in (``/proc/PID/task/TID/syscall``, see :func:`parse_syscall`)
   tells them apart: ``clock_nanosleep`` is ``sleep``, ``futex`` is ``lock``, ``recvfrom`` is
   ``socket``, ``wait4`` is ``process_wait``, ``read`` is ``socket`` or ``io`` by its fd.
3. **Activity.** Without a kernel hint, a thread the OS reports idle (py-spy ``active: false``)
   whose frames show no known wait is taken to be in ``sleep`` (the common case: ``time.sleep``
   in a loop); an active one is ``running``; when activity is unknown the reason is ``unknown``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

QUEUE_GET: Final = "queue_get"
QUEUE_PUT: Final = "queue_put"
LOCK: Final = "lock"
CONDITION: Final = "condition"
EVENT: Final = "event"
FUTURE: Final = "future"
SOCKET: Final = "socket"
IO: Final = "io"
SLEEP: Final = "sleep"
LOOP_IDLE: Final = "loop_idle"
SUBPROCESS: Final = "subprocess"
PROCESS_WAIT: Final = "process_wait"
THREAD_JOIN: Final = "thread_join"
SIGNAL_WAIT: Final = "signal_wait"
GRPC: Final = "grpc"
RUNNING: Final = "running"
UNKNOWN: Final = "unknown"

# Every value classify() can return, in a stable order (label values of the agent's metrics).
REASONS: Final = (
    QUEUE_GET,
    QUEUE_PUT,
    LOCK,
    CONDITION,
    EVENT,
    FUTURE,
    SOCKET,
    IO,
    SLEEP,
    LOOP_IDLE,
    SUBPROCESS,
    PROCESS_WAIT,
    THREAD_JOIN,
    SIGNAL_WAIT,
    GRPC,
    RUNNING,
    UNKNOWN,
)
# Reasons that mean "not waiting": the blocked-seconds metric leaves them out.
NOT_WAITING: Final = frozenset({RUNNING, UNKNOWN})

# How the reason was decided (for reports: "how do we know").
BY_FRAMES: Final = "frames"
BY_KERNEL: Final = "kernel"
BY_ACTIVITY: Final = "activity"
BY_NOTHING: Final = "none"


class FrameLike(Protocol):
    """A Python frame as py-spy reports it: qualified (3.11+) or plain function name, file."""

    @property
    def name(self) -> str: ...

    @property
    def filename(self) -> str: ...


@dataclass(frozen=True, slots=True)
class KernelWait:
    """The system call a thread sits in: its name (``"futex"``), ``"running"``, or ``None``.

    ``fd_kind`` is what the call's first argument refers to when it is a file descriptor:
    ``socket``, ``pipe``, ``device``, ``file``, ``anon`` (an anonymous inode such as epoll).
    """

    syscall: str | None
    fd_kind: str | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """A classification: the reason, the index of the frame that decided it, and how.

    The deciding frame is the outermost one that shaped the reason: ``Queue.get`` rather than
    the ``Condition.wait`` inside it, so a report can say *which* queue call is stuck.
    """

    reason: str
    frame_index: int | None
    evidence: str


# -- frame rules ---------------------------------------------------------------------------------

# (path suffix, function names) -> reason, for the innermost frame. A function name is the
# last dotted part of py-spy's name, so "Condition.wait" (3.11+) and "wait" (3.10) both match.
_Site = tuple[str, frozenset[str], str]


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


_SITES: Final[tuple[_Site, ...]] = (
    ("threading.py", _names("wait wait_for"), CONDITION),
    ("threading.py", _names("_wait_for_tstate_lock join"), THREAD_JOIN),
    ("threading.py", _names("acquire"), LOCK),
    ("queue.py", _names("get"), QUEUE_GET),
    ("queue.py", _names("put"), QUEUE_PUT),
    ("selectors.py", _names("select"), SOCKET),
    ("socket.py", _names("accept readinto create_connection recv_into"), SOCKET),
    ("ssl.py", _names("read recv recv_into do_handshake accept"), SOCKET),
    ("subprocess.py", _names("_try_wait _wait wait communicate _communicate"), SUBPROCESS),
    ("multiprocessing/popen_fork.py", _names("wait poll"), PROCESS_WAIT),
    ("multiprocessing/process.py", _names("join"), PROCESS_WAIT),
    (
        "multiprocessing/connection.py",
        _names("_recv recv recv_bytes _recv_bytes poll _poll wait"),
        IO,
    ),
    ("multiprocessing/queues.py", _names("get"), QUEUE_GET),
    ("multiprocessing/queues.py", _names("put"), QUEUE_PUT),
    ("concurrent/futures/_base.py", _names("result exception wait as_completed"), FUTURE),
    # An idle executor worker: `work_queue.get()` on a SimpleQueue is C, so _worker is innermost.
    ("concurrent/futures/thread.py", _names("_worker"), QUEUE_GET),
    ("asyncio/base_events.py", _names("_run_once"), LOOP_IDLE),
    ("signal.py", _names("pause sigwait sigtimedwait"), SIGNAL_WAIT),
)

# Outer library frames that refine the reason found so far: (path suffix, names, reason,
# reasons it may refine). The event loop's _run_once turns a select into loop_idle, but a
# Queue.get called straight from a loop callback stays queue_get (the loop is blocked, not idle).
_Refiner = tuple[str, frozenset[str], str, frozenset[str]]
_CONDITIONS: Final = frozenset({CONDITION, LOCK, IO})
_SELECTS: Final = frozenset({SOCKET, IO})
_REFINERS: Final[tuple[_Refiner, ...]] = (
    ("queue.py", _names("get"), QUEUE_GET, _CONDITIONS),
    ("queue.py", _names("put"), QUEUE_PUT, _CONDITIONS),
    ("multiprocessing/queues.py", _names("get"), QUEUE_GET, _CONDITIONS),
    ("multiprocessing/queues.py", _names("put"), QUEUE_PUT, _CONDITIONS),
    ("threading.py", _names("_wait_for_tstate_lock join"), THREAD_JOIN, _CONDITIONS),
    ("threading.py", _names("acquire"), LOCK, frozenset({CONDITION})),
    ("threading.py", _names("wait"), EVENT, frozenset({CONDITION})),
    (
        "concurrent/futures/_base.py",
        _names("result exception wait as_completed"),
        FUTURE,
        frozenset({CONDITION, EVENT}),
    ),
    ("asyncio/base_events.py", _names("_run_once"), LOOP_IDLE, frozenset({SOCKET})),
    ("subprocess.py", _names("_communicate communicate wait _wait"), SUBPROCESS, _SELECTS),
    ("multiprocessing/popen_fork.py", _names("wait poll"), PROCESS_WAIT, _SELECTS),
    ("multiprocessing/process.py", _names("join"), PROCESS_WAIT, _SELECTS),
)

# Library files the refinement walk may pass through; it stops at the first other frame, so
# a handler's own Queue.get is queue_get even when grpc's server frames are further out.
_LIBRARY_SUFFIXES: Final = (
    "threading.py",
    "queue.py",
    "selectors.py",
    "socket.py",
    "ssl.py",
    "subprocess.py",
    "socketserver.py",
)
_LIBRARY_PACKAGES: Final = ("asyncio", "concurrent", "multiprocessing", "grpc")
_REFINE_DEPTH: Final = 8


def _function(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _qualifier(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _path(filename: str) -> str:
    return "/" + filename.replace("\\", "/").lstrip("/")


def _in_file(path: str, suffix: str) -> bool:
    return path.endswith("/" + suffix)


def _in_package(path: str, package: str) -> bool:
    return f"/{package}/" in path


def _is_library(path: str) -> bool:
    return any(_in_file(path, s) for s in _LIBRARY_SUFFIXES) or any(
        _in_package(path, p) for p in _LIBRARY_PACKAGES
    )


def _site(frame: FrameLike) -> str | None:
    path = _path(frame.filename)
    function = _function(frame.name)
    for suffix, names, reason in _SITES:
        if function in names and _in_file(path, suffix):
            return reason
    return None


def _refine(reason: str, frames: Sequence[FrameLike]) -> tuple[str, int]:
    """Walk outward through library frames refining ``reason``; return it and the deciding frame."""
    refined, decided = reason, 0
    for index, frame in enumerate(frames[1 : 1 + _REFINE_DEPTH], start=1):
        path = _path(frame.filename)
        if not _is_library(path):
            break
        if _in_package(path, "grpc"):
            refined, decided = GRPC, index
            continue
        function = _function(frame.name)
        for suffix, names, candidate, refines in _REFINERS:
            if refined in refines and function in names and _in_file(path, suffix):
                if candidate == EVENT and not _is_event_wait(frame):
                    continue
                refined, decided = candidate, index
                break
    return refined, decided


def _is_event_wait(frame: FrameLike) -> bool:
    # A "wait" in threading.py outside Condition.wait is Event.wait or Barrier.wait; 3.11+
    # names the class, 3.10 does not (and Event is by far the common one).
    qualifier = _qualifier(frame.name)
    return not qualifier or qualifier == "Event"


def classify_frames(frames: Sequence[FrameLike]) -> Wait | None:
    """The wait shown by the frames alone (innermost first), or ``None`` if they show none."""
    try:
        if not frames:
            return None
        reason = _site(frames[0])
        if reason is None:
            return None
        refined, decided = _refine(reason, frames)
        return Wait(refined, decided, BY_FRAMES)
    except (AttributeError, TypeError):
        return None


def _in_grpc(frames: Sequence[FrameLike]) -> bool:
    try:
        return bool(frames) and _in_package(_path(frames[0].filename), "grpc")
    except (AttributeError, TypeError):
        return False


def classify(
    frames: Sequence[FrameLike],
    *,
    active: bool | None,
    kernel: KernelWait | None = None,
) -> Wait:
    """Classify one thread; never raises. See the module docstring for the order of evidence."""
    by_frames = classify_frames(frames)
    if by_frames is not None:
        return by_frames
    index = 0 if frames else None
    kernel_reason = _kernel_reason(kernel) if kernel is not None else None
    if _in_grpc(frames) and kernel_reason != RUNNING and active is not True:
        # grpc's own threads (server `_serve`, channel spin) and blocking calls wait on a
        # completion queue in Cython: the innermost Python frame is grpc's.
        return Wait(GRPC, 0, BY_FRAMES)
    if kernel_reason is not None:
        return Wait(kernel_reason, index, BY_KERNEL)
    if active is True:
        return Wait(RUNNING, index, BY_ACTIVITY)
    if active is False:
        return Wait(SLEEP, index, BY_ACTIVITY)
    return Wait(UNKNOWN, index, BY_NOTHING)


# -- kernel hints ---------------------------------------------------------------------------------

_SLEEP_CALLS: Final = frozenset({"nanosleep", "clock_nanosleep"})
_FUTEX_CALLS: Final = frozenset({"futex", "futex_waitv"})
_POLL_CALLS: Final = frozenset(
    {"select", "pselect6", "poll", "ppoll", "epoll_wait", "epoll_pwait", "epoll_pwait2"}
)
_SOCKET_CALLS: Final = _names(
    "accept accept4 connect recvfrom recvmsg recvmmsg sendto sendmsg sendmmsg"
)
_FD_IO_CALLS: Final = _names("read write readv writev pread64 pwrite64")
_PROCESS_CALLS: Final = frozenset({"wait4", "waitid"})
_SIGNAL_CALLS: Final = frozenset({"pause", "rt_sigsuspend", "rt_sigtimedwait"})
_KERNEL_REASONS: Final = (
    (frozenset({"running"}), RUNNING),
    (_SLEEP_CALLS, SLEEP),
    (_FUTEX_CALLS, LOCK),
    (_POLL_CALLS | _SOCKET_CALLS, SOCKET),
    (_PROCESS_CALLS, PROCESS_WAIT),
    (_SIGNAL_CALLS, SIGNAL_WAIT),
)


def _kernel_reason(kernel: KernelWait) -> str | None:
    call = kernel.syscall
    if call in _FD_IO_CALLS:
        return SOCKET if kernel.fd_kind == "socket" else IO
    for calls, reason in _KERNEL_REASONS:
        if call in calls:
            return reason
    return None


# Only the calls a blocked Python thread sits in; the rest read as unknown.
_SYSCALLS: Final[dict[str, dict[int, str]]] = {
    "x86_64": {
        0: "read", 1: "write", 7: "poll", 17: "pread64", 18: "pwrite64", 19: "readv",
        20: "writev", 23: "select", 34: "pause", 35: "nanosleep", 42: "connect", 43: "accept",
        44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 61: "wait4",
        128: "rt_sigtimedwait", 130: "rt_sigsuspend", 202: "futex", 230: "clock_nanosleep",
        232: "epoll_wait", 247: "waitid", 270: "pselect6", 271: "ppoll", 281: "epoll_pwait",
        288: "accept4", 299: "recvmmsg", 307: "sendmmsg", 441: "epoll_pwait2", 449: "futex_waitv",
    },
    "aarch64": {
        22: "epoll_pwait", 63: "read", 64: "write", 65: "readv", 66: "writev", 67: "pread64",
        68: "pwrite64", 72: "pselect6", 73: "ppoll", 95: "waitid", 98: "futex",
        101: "nanosleep", 115: "clock_nanosleep", 133: "rt_sigsuspend", 137: "rt_sigtimedwait",
        202: "accept", 203: "connect", 206: "sendto", 207: "recvfrom", 211: "sendmsg",
        212: "recvmsg", 242: "accept4", 243: "recvmmsg", 260: "wait4", 269: "sendmmsg",
        441: "epoll_pwait2", 449: "futex_waitv",
    },
}  # fmt: skip
_MACHINES: Final = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
# System calls whose first argument is a file descriptor worth resolving.
FD_CALLS: Final = _FD_IO_CALLS | _SOCKET_CALLS


def syscall_name(machine: str, number: int) -> str | None:
    """The name of system call ``number`` on ``machine`` (``platform.machine()``), if known."""
    table = _SYSCALLS.get(_MACHINES.get(machine.lower(), ""), {})
    return table.get(number)


def parse_syscall(text: str, machine: str) -> tuple[str | None, int | None]:
    """Parse ``/proc/PID/task/TID/syscall``: (call name or ``"running"``, first argument).

    The file holds ``running``, ``-1 SP PC`` (blocked outside a system call) or
    ``NR ARG1 ... ARG6 SP PC`` in hex; anything else gives ``(None, None)``.
    """
    parts = text.split()
    if not parts:
        return None, None
    if parts[0] == "running":
        return "running", None
    try:
        number = int(parts[0])
        argument = int(parts[1], 16) if len(parts) > 1 else None
    except ValueError:
        return None, None
    if number < 0:
        return None, None
    return syscall_name(machine, number), argument


def fd_kind(link: str) -> str:
    """What a ``/proc/PID/fd/N`` link target is: socket, pipe, anon, device or file."""
    if link.startswith("socket:"):
        return "socket"
    if link.startswith("pipe:"):
        return "pipe"
    if link.startswith("anon_inode:"):
        return "anon"
    if link.startswith("/dev/"):
        return "device"
    return "file"
