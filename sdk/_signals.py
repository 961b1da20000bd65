"""Observe termination signals without taking them over.

``observe_signals()`` chains a recorder in front of whatever handler is installed: the
signal is recorded (and sent to the agent at once), then the previous handler runs as if
drainwatch were not there. Every signal is passed on, including a second SIGTERM; a
default disposition is honoured by restoring it and re-raising the signal, so a process
that dies on SIGTERM still dies on SIGTERM. Under ``drainwatch run`` the handlers the
application installs later (``signal.signal``, ``loop.add_signal_handler``) are wrapped the
same way.
"""

from __future__ import annotations

import _thread
import asyncio
import os
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from . import _runtime
from ._shutdown import STATE, send_state

TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGINT)
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class _Recorder:
    """A signal handler that records, then defers to the handler it wraps."""

    def __init__(self, previous: Handler) -> None:
        self.__wrapped__ = previous

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        _record(signum)
        previous = self.__wrapped__
        if callable(previous):
            return previous(signum, frame)
        if previous in (signal.SIG_DFL, None):
            # The default action (terminate) must still happen, after the record went out.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        return None


# How long a signal handler waits for its record to go out. The send normally takes well
# under a millisecond; it waits longer only for a lock the interrupted code holds.
_SEND_WAIT_SECONDS = 0.5


def _record(signum: int) -> None:
    """Record ``signum`` from a real signal handler: the record goes out before the handler
    returns, sent from a thread of its own.

    A handler runs in the main thread between two bytecodes of whatever it was doing, which
    may hold a lock the send needs (the in-flight registry's, an event's): sent from the
    handler itself, that would deadlock the process. The handler waits for the sender on a
    lock nobody else knows, at most ``_SEND_WAIT_SECONDS``.
    """
    try:
        STATE.note_signal(signum, send=False)
    except Exception:  # instrumentation must never break the application
        _runtime.note_internal_error()
        return
    sent = _thread.allocate_lock()
    sent.acquire()

    def send() -> None:
        try:
            send_state()
        finally:
            sent.release()

    try:
        # _thread, not threading: starting a threading.Thread takes module locks the
        # interrupted code may hold too.
        _thread.start_new_thread(send, ())
    except RuntimeError:  # no new thread now (the interpreter is finalizing)
        _runtime.note_internal_error()
        return
    sent.acquire(timeout=_SEND_WAIT_SECONDS)


def _record_in_loop(signum: int) -> None:
    """Record ``signum`` from an event-loop callback: ordinary code, so it sends itself."""
    try:
        STATE.note_signal(signum)
    except Exception:  # instrumentation must never break the application
        _runtime.note_internal_error()


def observe_signals(signals: Iterable[int] = TERMINATION_SIGNALS) -> bool:
    """Chain a recorder in front of the current handlers; False off the main thread.

    Idempotent: a handler that is already a recorder is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in signals:
        current = signal.getsignal(signum)
        if isinstance(current, _Recorder) or current == signal.SIG_IGN:
            continue
        signal.signal(signum, _Recorder(current))
    return True


def unwrap(handler: Handler) -> Handler:
    return handler.__wrapped__ if isinstance(handler, _Recorder) else handler


# -- drainwatch run: keep observing after the application installs its own handlers -------

_patched: set[str] = set()


def installers_patched() -> bool:
    """Whether handlers installed with ``loop.add_signal_handler`` already record signals."""
    return "signal" in _patched


def patch_signal_installers() -> None:
    """Wrap handlers installed later through ``signal.signal`` and ``loop.add_signal_handler``."""
    if "signal" in _patched:
        return
    _patched.add("signal")
    original_signal = signal.signal
    original_getsignal = signal.getsignal

    def installing(signum: int, handler: Handler) -> Handler:
        if (
            signum in TERMINATION_SIGNALS
            and callable(handler)
            and not isinstance(handler, _Recorder)
            # asyncio's own no-op handler: the callback given to add_signal_handler
            # is wrapped instead, so the signal is recorded once.
            and getattr(handler, "__name__", "") != "_sighandler_noop"
        ):
            handler = _Recorder(handler)
        return unwrap(original_signal(signum, handler))

    def getting(signum: int) -> Handler:
        return unwrap(original_getsignal(signum))

    signal.signal = installing  # type: ignore[assignment]
    signal.getsignal = getting  # type: ignore[assignment]

    loop_class: Any = getattr(asyncio, "SelectorEventLoop", None)
    original_add = getattr(loop_class, "add_signal_handler", None)
    if loop_class is None or original_add is None:
        return

    def add_signal_handler(
        self: asyncio.AbstractEventLoop, sig: int, callback: Callable[..., Any], *args: Any
    ) -> None:
        if sig in TERMINATION_SIGNALS:
            inner = callback

            def recorded(*call_args: Any) -> Any:
                _record_in_loop(sig)
                return inner(*call_args)

            callback = recorded
        original_add(self, sig, callback, *args)

    loop_class.add_signal_handler = add_signal_handler
