"""The public ``configure()`` and ``flush()`` functions."""

from __future__ import annotations

import os

from . import _runtime, _tracking
from ._endpoint import parse_endpoint
from ._settings import (
    Settings,
    check_dump_signal,
    check_interval,
    check_lag_threshold,
    check_service,
    check_tracking,
    env_dump_signal,
    env_endpoint,
    env_interval,
    env_lag_threshold,
    env_service,
    env_tracking,
)
from ._task_dump import install_dump_signal


def configure(
    service: str | None = None,
    endpoint: str | None = None,
    *,
    interval: float | None = None,
    enabled: bool = True,
    tracking: bool | None = None,
    lag_threshold: float | None = None,
    dump_signal: str | int | None = None,
) -> None:
    """Set how this process reports to the drainwatch agent.

    Arguments left as ``None`` fall back to ``DRAINWATCH_SERVICE``, ``DRAINWATCH_ENDPOINT``,
    ``DRAINWATCH_INTERVAL``, ``DRAINWATCH_TRACKING``, ``DRAINWATCH_LAG_THRESHOLD`` and
    ``DRAINWATCH_DUMP_SIGNAL``, then to the defaults (service named by the agent,
    ``unix:///tmp/drainwatch/ingest.sock``, 1 s, tracking on, 0.1 s, no dump signal).
    Channels created earlier keep reporting through the new settings.

    Called inside a running event loop, with tracking on, it also watches that loop: its
    tasks (what each waits on, since when) and its lag (a stall longer than
    ``lag_threshold`` seconds is reported with the blocking code's stack). Threads are
    tracked whenever tracking is on. ``dump_signal`` (``"SIGUSR1"`` or ``"SIGUSR2"``) makes
    that signal print ``dump_tasks()`` to stderr; it is installed only from the main thread.

    Raises ``ValueError`` naming the argument for a bad value; an unreachable agent is not
    an error (records are counted as dropped).
    """
    if not enabled:
        _runtime.configure(Settings(enabled=False))
        _tracking.TRACKING.apply(Settings(enabled=False))
        return
    # The environment is read only for what the caller left out, so a bad variable
    # cannot break an explicit configuration.
    env = os.environ
    settings = Settings(
        service=env_service(env) if service is None else check_service(service, "service"),
        endpoint=env_endpoint(env) if endpoint is None else parse_endpoint(endpoint),
        interval=env_interval(env) if interval is None else check_interval(interval, "interval"),
        tracking=env_tracking(env) if tracking is None else check_tracking(tracking, "tracking"),
        lag_threshold=(
            env_lag_threshold(env)
            if lag_threshold is None
            else check_lag_threshold(lag_threshold, "lag_threshold")
        ),
        dump_signal=(
            env_dump_signal(env)
            if dump_signal is None
            else check_dump_signal(dump_signal, "dump_signal")
        ),
    )
    _runtime.configure(settings)
    try:
        _tracking.TRACKING.apply(settings)
    except Exception:  # tracking is a view: configuring must not fail because of it
        _runtime.note_internal_error()
    install_dump_signal(settings.dump_signal)


def flush(timeout: float = 1.0) -> bool:
    """Send everything now; wait up to ``timeout`` s for a busy agent. Never raises.

    Returns True if every datagram was handed to the kernel. Call it before
    ``os._exit()`` or at the end of a short-lived job.
    """
    return _runtime.flush(timeout)
