"""Go-style dumps of tasks and threads: ``drainwatch.dump_tasks()``, the dump signal, and
the text ``drainwatch tasks`` prints from the agent's ``/api/v1/tasks``.

Rendering works on the protocol's ``loop`` and ``threads`` records (docs/protocol.md), so
the dump taken in the process and the one the agent serves read the same::

    loop 1 on thread "MainThread": 5 tasks, 3 blocked; lag: worst 0.51s in the last 60s
      stall 0.50s at 12:00:01.204 UTC (the loop was blocked by this code):
        handler (app.py:33)

      3 tasks [channel_receive "jobs", 42s]: "consumer-0", "consumer-1", "consumer-2"
        Channel._wait_for_item (drainwatch/_async_channel.py:131)
        consume (app.py:12)

    thread "worker-1" [queue_get, 5.0s]:
        Condition.wait (threading.py:320)
        Queue.get (queue.py:171)

Stacks are innermost first, as Go and py-spy print them.
"""

from __future__ import annotations

import datetime
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any, TextIO

from . import _runtime
from ._tracking import TRACKING

_INDENT = "  "


def duration(seconds: float) -> str:
    """``0.30s``, ``42s``, ``5m02s``, ``2h03m``: compact, like Go's goroutine header."""
    if seconds < 10:
        return f"{seconds:.2f}s" if seconds < 1 else f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def clock(at: object) -> str:
    if not isinstance(at, int | float):
        return "?"
    moment = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


def _quoted(text: object) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wait_label(reason: object, target: object) -> str:
    return f"{reason} {_quoted(target)}" if target else str(reason)


def _stack(frames: object, indent: str) -> list[str]:
    if not isinstance(frames, list) or not frames:
        return [f"{indent}(no Python frames)"]
    return [f"{indent}{frame}" for frame in frames]


def _seconds(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def render_loop(record: Mapping[str, Any]) -> list[str]:
    """One ``loop`` record: its header, its stalls, then its task sites."""
    blocked = sum(count for count in (record.get("blocked") or {}).values())
    header = (
        f"loop {record.get('id')} on thread {_quoted(record.get('thread'))}: "
        f"{record.get('tasks', 0)} tasks, {blocked} blocked"
    )
    if record.get("sampled", 0) != record.get("tasks", 0):
        header += f" (the first {record.get('sampled')} looked at)"
    if "lag_max" in record:
        header += f"; lag: worst {duration(_seconds(record['lag_max']))} in the last 60s"
        if record.get("stalls_total"):
            header += f", {record['stalls_total']} stalls over {record.get('threshold')}s"
    if record.get("closed"):
        header += " (closed)"
    lines = [header]
    for stall in record.get("stalls") or []:
        state = "still blocked" if stall.get("ongoing") else "the loop was blocked by this code"
        lines.append(
            f"{_INDENT}stall {duration(_seconds(stall.get('seconds')))} at "
            f"{clock(stall.get('at'))} ({state}):"
        )
        if stall.get("stack"):
            lines.extend(_stack(stall.get("stack"), _INDENT * 2))
        else:
            lines.append(f"{_INDENT * 2}(not seen while it lasted: the blocking code held the GIL)")
    for site in record.get("sites") or []:
        lines.append("")
        lines.append(_INDENT + _site_header(site))
        lines.extend(_stack(site.get("stack"), _INDENT * 2))
    if record.get("truncated"):
        lines.append(f"{_INDENT}(more sites than fit in one report)")
    return lines


def _site_header(site: Mapping[str, Any]) -> str:
    label = _wait_label(site.get("reason"), site.get("target"))
    tasks = site.get("tasks") or []
    count = site.get("count", len(tasks))
    if count == 1 and tasks:
        only = tasks[0]
        waited = duration(_seconds(only.get("wait")))
        return f"task {_quoted(only.get('name'))} [{label}, {waited}]:"
    oldest = duration(_seconds(site.get("oldest")))
    newest = duration(_seconds(site.get("newest")))
    span = oldest if oldest == newest else f"{newest}..{oldest}"
    names = ", ".join(_quoted(task.get("name")) for task in tasks)
    more = f" and {count - len(tasks)} more" if count > len(tasks) else ""
    return f"{count} tasks [{label}, {span}]: {names}{more}"


def render_threads(record: Mapping[str, Any], source: str = "") -> list[str]:
    """A ``threads`` record: each waiting thread with its stack."""
    waiting = record.get("top") or []
    suffix = f" ({source})" if source else ""
    lines = [f"threads{suffix}: {record.get('threads', len(waiting))}, {len(waiting)} waiting"]
    for thread in waiting:
        label = _wait_label(thread.get("reason"), thread.get("target"))
        lines.append("")
        lines.append(
            f"{_INDENT}thread {_quoted(thread.get('thread'))} "
            f"[{label}, {duration(_seconds(thread.get('wait')))}]:"
        )
        lines.extend(_stack(thread.get("stack"), _INDENT * 2))
    return lines


def render(records: Sequence[Mapping[str, Any]]) -> str:
    """``loop`` and ``threads`` records as one Go-style dump."""
    blocks = []
    for record in records:
        if record.get("type") == "loop":
            blocks.append("\n".join(render_loop(record)))
        elif record.get("type") == "threads":
            blocks.append("\n".join(render_threads(record)))
    return "\n\n".join(blocks) + "\n"


def dump_tasks(file: TextIO | None = None) -> str:
    """A Go-style dump of this process: every task of each watched event loop (and of the
    loop running in the calling thread), grouped where several wait at the same place,
    with what each waits on and for how long; then every waiting thread.

    Written to ``file`` when given; returned either way. Never raises: if sampling fails the
    dump says so.
    """
    try:
        reporter = _runtime.current()
        own = [reporter.thread_ident] if reporter.thread_ident is not None else []
        text = render(TRACKING.sample_now(reporter.channel_refs().values(), own))
    except Exception as error:
        _runtime.note_internal_error()
        text = f"drainwatch: no dump: {error!r}\n"
    if file is not None:
        try:
            file.write(text)
            file.flush()
        except (OSError, ValueError):
            pass
    return text


class _DumpHandler:
    """Writes ``dump_tasks()`` to stderr, then defers to the handler it replaced."""

    def __init__(self, previous: object) -> None:
        self.__wrapped__ = previous

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        dump_tasks(sys.stderr)
        previous = self.__wrapped__
        if callable(previous):
            previous(signum, frame)


def install_dump_signal(signum: signal.Signals | None) -> bool:
    """Dump on ``signum`` (SIGUSR1 or SIGUSR2) from now on; False off the main thread (only
    it may install handlers) or with no signal. Idempotent."""
    if signum is None or threading.current_thread() is not threading.main_thread():
        return False
    try:
        current = signal.getsignal(signum)
        if not isinstance(current, _DumpHandler):
            previous = current if callable(current) else None
            signal.signal(signum, _DumpHandler(previous))
    except (OSError, ValueError):
        return False
    return True
