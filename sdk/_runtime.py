"""The process-wide reporter: started lazily, reconfigurable, and fork-aware.

Nothing here runs at import time. The first channel (or ``configure()``/``flush()``) starts
the reporter from ``configure()`` settings or, failing those, from ``DRAINWATCH_*``
environment variables. Every function is safe to call from any thread and, except
``configure``, never raises into the application.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from ._caps import CAPPED
from ._reporter import Reporter
from ._settings import Settings, settings_from_env
from ._transport import NullTransport, Transport, open_transport

if TYPE_CHECKING:
    from ._channel_base import ChannelBase

logger = logging.getLogger("drainwatch")

_lock = threading.RLock()
_reporter: Reporter | None = None
_explicit: Settings | None = None
_hooks_installed = False


def _keeps_connection(settings: Settings, previous: Reporter | None, same_process: bool) -> bool:
    """New settings with the same endpoint keep the connection: the agent takes a closed
    connection for the process's end, and calling configure() once the first channel has
    started the reporter (to watch a loop, say) is no such thing."""
    return (
        previous is not None
        and same_process
        and settings.enabled
        and previous.settings.enabled
        and previous.settings.endpoint == settings.endpoint
    )


def _build(settings: Settings, previous: Reporter | None, same_process: bool = True) -> Reporter:
    transport: Transport = NullTransport()
    if previous is not None and _keeps_connection(settings, previous, same_process):
        transport = previous.transport
    elif settings.enabled:
        try:
            transport = open_transport(settings.endpoint)
        except OSError as error:
            logger.warning(
                "drainwatch: cannot open %s (%s); records will be counted as dropped",
                settings.endpoint,
                error,
            )
    channels = previous.channel_refs() if previous is not None else None
    # Reconfiguring keeps the process's identity; a forked child is a new process.
    packer = (
        previous.packer.successor(settings.service)
        if previous is not None and same_process
        else None
    )
    reporter = Reporter(settings, transport, channels, packer)
    if settings.enabled:
        reporter.start()
    return reporter


def _install_process_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_at_exit)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def current() -> Reporter:
    """The running reporter, started on first use. Never raises.

    A process whose pid is not the reporter's was forked without Python's at-fork hooks
    (``fork()`` called from C: an embedding server, an extension): it would otherwise send
    as its parent, on its parent's socket, with no reporter thread. It is given its own
    reporter here, at its first SDK call that reaches the runtime.
    """
    reporter = _reporter
    if reporter is not None:
        if reporter.packer.pid != os.getpid():
            _after_fork_in_child()
            return _reporter or reporter
        return reporter
    with _lock:
        if _reporter is not None:
            return _reporter
        settings = _explicit
        if settings is None:
            try:
                settings = settings_from_env()
            except ValueError as error:
                logger.warning("drainwatch: %s; reporting is off", error)
                settings = Settings(enabled=False)
        return _replace(settings)


def _replace(settings: Settings) -> Reporter:
    global _reporter
    previous = _reporter
    _install_process_hooks()
    shared = _keeps_connection(settings, previous, same_process=True)
    reporter = _reporter = _build(settings, previous)
    if previous is not None:
        previous.stop(timeout=0.5, close_transport=not shared)
    return reporter


def configure(settings: Settings) -> None:
    """Use ``settings`` from now on; channels created before keep reporting."""
    global _explicit
    with _lock:
        _explicit = settings
        _replace(settings)


def shutdown(timeout: float = 1.0) -> None:
    """Send a last snapshot and stop reporting until the next use. For tests and exit."""
    global _reporter
    with _lock:
        reporter, _reporter = _reporter, None
    if reporter is not None:
        reporter.stop(timeout)


def _at_exit() -> None:
    reporter = _reporter
    if reporter is None:
        return
    from ._inflight import REGISTRY
    from ._shutdown import STATE

    try:
        STATE.note_exit(None, REGISTRY.unfinished_by_protocol())
    except Exception:
        note_internal_error()
    reporter.stop(timeout=0.5)


def _after_fork_in_child() -> None:
    # Threads do not survive fork and locks may have been held by them: start over with a
    # fresh reporter (new instance id, new socket, new thread) that keeps the channels
    # this child inherited.
    global _lock, _reporter
    _lock = threading.RLock()
    from ._inflight import REGISTRY
    from ._shutdown import STATE
    from ._tracking import TRACKING

    STATE.reset_after_fork()
    REGISTRY.reset_after_fork()
    TRACKING.reset_after_fork()
    CAPPED.reset_after_fork()
    previous = _reporter
    if previous is None:
        return
    previous.reset_after_fork()
    _reporter = _build(_explicit or previous.settings, previous, same_process=False)


def register(channel: ChannelBase) -> None:
    try:
        current().register(channel)
    except Exception:
        note_internal_error()


def retire(channel_id: int, record: dict[str, Any]) -> None:
    reporter = _reporter
    if reporter is not None:
        reporter.retire(channel_id, record)


def emit(record: dict[str, Any]) -> None:
    current().emit(record)


def emit_shutdown() -> None:
    """Send the shutdown state and in-flight counters now (a shutdown event happened)."""
    reporter = current()
    reporter.emit_many(reporter.shutdown_records())


def hasten() -> None:
    reporter = _reporter
    if reporter is not None:
        reporter.hasten()


def retick() -> None:
    reporter = _reporter
    if reporter is not None:
        reporter.retick()


def flush(timeout: float = 1.0) -> bool:
    """Send a full snapshot now, retrying refused datagrams for up to ``timeout`` seconds.

    True if the kernel accepted every datagram. Never raises.
    """
    try:
        return current().flush(timeout)
    except Exception:
        note_internal_error()
        return False


def note_internal_error() -> None:
    reporter = _reporter
    if reporter is not None:
        reporter.internal_errors += 1
