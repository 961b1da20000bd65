"""What an asyncio task is waiting on: its coroutine chain resolved to a reason.

A pending task is suspended in an ``await``. Its coroutine's ``cr_await`` is the next
awaitable (another coroutine, a generator's ``gi_yieldfrom``, an async generator's
``ag_await``) and so on down to the future the task is blocked on, which the task keeps
as ``_fut_waiter``. The chain's frames are the task's stack; the reason is decided, in order:

1. **Exact waits.** The blocking future is a waiter of a drainwatch ``Channel`` (or of an
   ``asyncio.Queue`` instrumented with ``watch_queue``): ``channel_receive`` /
   ``channel_send`` (``queue_get`` / ``queue_put``) with the channel's name, and for a
   channel the exact start of the wait, which the channel stamps.
2. **Frames.** The innermost frame that is library code is matched against known wait
   sites (``asyncio.Lock.acquire`` is ``lock``, ``asyncio.sleep`` is ``sleep``,
   ``StreamReader.read*`` is ``stream``, ``loop.sock_*`` is ``socket``, ...). Library frames
   further out refine it while the run of library code lasts: ``Lock.acquire`` under
   ``Condition.wait`` (re-acquiring) is ``condition``, a stream read under
   ``Process.communicate`` is ``subprocess``, anything inside grpc's frames is ``grpc``.
3. **The future itself.** A task awaiting another task is ``task`` (with that task's name),
   any other future is ``future``; a chain that ends in something else is ``unknown``.

An awaitable that delegates through a coroutine's ``__await__()`` hides the frames behind
it (the wrapper exposes none); the reason then comes from the future alone.

A task with no blocking future is ``running`` (the loop is inside its step right now) or
``ready`` (scheduled, about to run); neither counts as blocked. Everything here only reads
attributes and never raises: it runs on the reporter thread while the loop mutates the tasks.
"""

from __future__ import annotations

import asyncio
import os
from types import CodeType, CoroutineType, FrameType, GeneratorType
from typing import Any, Final, NamedTuple

from ._protocol import MAX_NAME_CHARS, clip

CHANNEL_RECEIVE: Final = "channel_receive"
CHANNEL_SEND: Final = "channel_send"
QUEUE_GET: Final = "queue_get"
QUEUE_PUT: Final = "queue_put"
LOCK: Final = "lock"
EVENT: Final = "event"
CONDITION: Final = "condition"
SEMAPHORE: Final = "semaphore"
SLEEP: Final = "sleep"
SOCKET: Final = "socket"
STREAM: Final = "stream"
SUBPROCESS: Final = "subprocess"
FUTURE: Final = "future"
TASK: Final = "task"
GRPC: Final = "grpc"
UNKNOWN: Final = "unknown"
RUNNING: Final = "running"
READY: Final = "ready"

# Every reason a blocked task can have, in a stable order (label values of the agent).
WAIT_REASONS: Final = (
    CHANNEL_RECEIVE,
    CHANNEL_SEND,
    QUEUE_GET,
    QUEUE_PUT,
    LOCK,
    EVENT,
    CONDITION,
    SEMAPHORE,
    SLEEP,
    SOCKET,
    STREAM,
    SUBPROCESS,
    FUTURE,
    TASK,
    GRPC,
    UNKNOWN,
)
NOT_BLOCKED: Final = frozenset({RUNNING, READY})
# How deep a chain of awaits is followed; real chains are a handful of frames.
MAX_CHAIN: Final = 64


# Tuples rather than dataclasses: one of each is made per task per sample.
class TaskWait(NamedTuple):
    """One task's wait. ``frames`` innermost first; ``started`` is the exact start
    (``time.monotonic()``) when the awaited primitive stamps it, else ``None``."""

    reason: str
    target: str | None
    frames: tuple[FrameType, ...]
    blocker: object | None
    started: float | None = None


class ExactWait(NamedTuple):
    """A waiter future of a drainwatch channel or watched queue: what it is and since when."""

    future: object  # held so that its id stays unique while the index is in use
    reason: str
    target: str
    started: float | None


# -- frame rules -----------------------------------------------------------------------------

_ASYNCIO_DIR: Final = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep
_SDK_DIR: Final = os.path.dirname(os.path.abspath(__file__)) + os.sep

# (file inside asyncio, qualnames or qualname prefixes ending in "."), reason
_Sites = tuple[tuple[str, tuple[str, ...], str], ...]
_ASYNCIO_SITES: Final[_Sites] = (
    ("queues.py", ("Queue.get",), QUEUE_GET),
    ("queues.py", ("Queue.put",), QUEUE_PUT),
    ("locks.py", ("Lock.acquire",), LOCK),
    ("locks.py", ("Event.wait",), EVENT),
    ("locks.py", ("Condition.wait", "Condition.wait_for"), CONDITION),
    ("locks.py", ("Semaphore.acquire",), SEMAPHORE),
    ("tasks.py", ("sleep",), SLEEP),
    ("tasks.py", ("wait_for",), TASK),  # 3.11 runs the awaited coroutine as its own task
    ("tasks.py", ("wait", "_wait", "as_completed"), FUTURE),
    ("streams.py", ("StreamReader.", "StreamWriter.", "FlowControlMixin."), STREAM),
    ("streams.py", ("open_connection", "open_unix_connection"), STREAM),
    ("selector_events.py", ("BaseSelectorEventLoop.sock_", "BaseSelectorEventLoop._sock"), SOCKET),
    ("proactor_events.py", ("BaseProactorEventLoop.sock_",), SOCKET),
    (
        "base_events.py",
        (
            "BaseEventLoop.create_connection",
            "BaseEventLoop.create_datagram_endpoint",
            "BaseEventLoop._connect_sock",
            "BaseEventLoop.getaddrinfo",
            "BaseEventLoop.sock_",
        ),
        SOCKET,
    ),
    ("unix_events.py", ("_UnixSelectorEventLoop.create_unix_connection",), SOCKET),
    (
        "subprocess.py",
        ("Process.", "create_subprocess_exec", "create_subprocess_shell"),
        SUBPROCESS,
    ),
    ("base_subprocess.py", ("BaseSubprocessTransport.",), SUBPROCESS),
)
_SDK_SITES: Final[_Sites] = (
    ("_async_channel.py", ("Channel.put",), CHANNEL_SEND),
    (
        "_async_channel.py",
        ("Channel._wait_for_item", "Channel.get", "Channel.__anext__"),
        CHANNEL_RECEIVE,
    ),
    ("_async_channel.py", ("Channel.join",), EVENT),
)
# Outer library frames that refine what the inner ones decided: (reason, refines).
_REFINERS: Final[dict[str, frozenset[str]]] = {
    CONDITION: frozenset({LOCK, FUTURE}),
    SUBPROCESS: frozenset({STREAM, SOCKET, FUTURE}),
    STREAM: frozenset({SOCKET, FUTURE}),
}

_LIBRARY, _OTHER = True, False
_code_rules: dict[CodeType, tuple[bool, str | None]] = {}
_MAX_CACHED_CODES: Final = 8192


def _match(sites: _Sites, name: str, qualname: str) -> str | None:
    for file, names, reason in sites:
        if name != file:
            continue
        for wanted in names:
            # a name ending in "." or "_" is a prefix: every method of a class, sock_*
            if qualname == wanted or (wanted[-1] in "._" and qualname.startswith(wanted)):
                return reason
    return None


def _rule(code: CodeType) -> tuple[bool, str | None]:
    """(is library code, the wait site it is, if any), cached per code object."""
    known = _code_rules.get(code)
    if known is not None:
        return known
    path = code.co_filename
    name = os.path.basename(path)
    if path.startswith(_ASYNCIO_DIR):
        rule = (_LIBRARY, _match(_ASYNCIO_SITES, name, code.co_qualname))
    elif path.startswith(_SDK_DIR):
        rule = (_LIBRARY, _match(_SDK_SITES, name, code.co_qualname))
    elif f"{os.sep}grpc{os.sep}" in path:
        rule = (_LIBRARY, GRPC)
    elif f"{os.sep}aiohttp{os.sep}" in path:
        rule = (_LIBRARY, STREAM if name in ("streams.py", "base_protocol.py") else None)
    else:
        rule = (_OTHER, None)
    if len(_code_rules) >= _MAX_CACHED_CODES:
        _code_rules.clear()
    _code_rules[code] = rule
    return rule


def reason_from_frames(frames: tuple[FrameType, ...]) -> str | None:
    """The wait the innermost run of library frames shows, or ``None``."""
    reason: str | None = None
    for frame in frames:
        library, site = _rule(frame.f_code)
        if not library:
            break
        if site == GRPC:
            return GRPC
        if site is None:
            continue
        if reason is None or reason in _REFINERS.get(site, ()):
            reason = site
    return reason


# -- the chain -------------------------------------------------------------------------------


def chain(coroutine: object) -> tuple[FrameType, ...]:
    """The frames of a suspended chain of awaits, innermost first. The chain ends at an
    awaitable without a frame: a future, or an object it cannot see into (an async
    generator's ``asend``)."""
    frames: list[FrameType] = []
    current: Any = coroutine
    for _ in range(MAX_CHAIN):
        kind = type(current)
        # The common cases read their attributes directly: this runs for every task.
        if kind is CoroutineType:
            frame, current = current.cr_frame, current.cr_await
        elif kind is GeneratorType:
            frame, current = current.gi_frame, current.gi_yieldfrom
        else:
            frame = _frame_of(current)
            current = _awaiting(current) if frame is not None else None
        if frame is None:
            break
        frames.append(frame)
        if current is None:
            break
    frames.reverse()
    return tuple(frames)


def _frame_of(awaitable: object) -> FrameType | None:
    for attribute in ("cr_frame", "gi_frame", "ag_frame"):
        frame = getattr(awaitable, attribute, None)
        if frame is not None:
            return frame  # type: ignore[no-any-return]
    return None


def _awaiting(awaitable: object) -> object | None:
    for attribute in ("cr_await", "gi_yieldfrom", "ag_await"):
        value: object = getattr(awaitable, attribute, None)
        if value is not None:
            return value
    return None


def classify(task: asyncio.Task[Any], exact: dict[int, ExactWait]) -> TaskWait:
    """What ``task`` waits on now. Never raises: a task torn down mid-read is ``unknown``."""
    try:
        return _classify(task, exact)
    except Exception:
        return TaskWait(UNKNOWN, None, (), None)


def _classify(task: asyncio.Task[Any], exact: dict[int, ExactWait]) -> TaskWait:
    coroutine = task.get_coro()
    frames = chain(coroutine)
    blocker = getattr(task, "_fut_waiter", None)
    if blocker is None:
        running = bool(getattr(coroutine, "cr_running", False))
        return TaskWait(RUNNING if running else READY, None, frames, None)
    known = exact.get(id(blocker))
    if known is not None and known.future is blocker:
        return TaskWait(known.reason, known.target, frames, blocker, known.started)
    reason = reason_from_frames(frames) or _reason_from_blocker(blocker)
    target = None
    if reason == TASK and isinstance(blocker, asyncio.Task):
        target = clip(blocker.get_name(), MAX_NAME_CHARS) or None
    return TaskWait(reason, target, frames, blocker)


def _reason_from_blocker(blocker: object) -> str:
    if isinstance(blocker, asyncio.Task):
        return TASK
    if isinstance(blocker, asyncio.Future):
        return FUTURE
    return UNKNOWN
