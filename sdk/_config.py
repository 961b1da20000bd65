"""The public ``configure()`` and ``flush()`` functions."""

from __future__ import annotations

from . import _runtime
from ._endpoint import parse_endpoint
from ._settings import (
    DEFAULT_INTERVAL_SECONDS,
    Settings,
    check_interval,
    check_service,
    settings_from_env,
)


def configure(
    service: str | None = None,
    endpoint: str | None = None,
    *,
    interval: float | None = None,
    enabled: bool = True,
) -> None:
    """Set how this process reports to the drainwatch agent.

    Arguments left as ``None`` fall back to ``DRAINWATCH_SERVICE``, ``DRAINWATCH_ENDPOINT``
    and ``DRAINWATCH_INTERVAL``, then to the defaults (service named by the agent,
    ``unix:///tmp/drainwatch/ingest.sock``, 1 s). Channels created earlier keep reporting
    through the new settings. Raises ``ValueError`` naming the argument for a bad value;
    an unreachable agent is not an error (records are counted as dropped).
    """
    if not enabled:
        _runtime.configure(Settings(enabled=False))
        return
    from_env = settings_from_env()
    settings = Settings(
        service=check_service(service, "service") if service is not None else from_env.service,
        endpoint=parse_endpoint(endpoint) if endpoint is not None else from_env.endpoint,
        interval=(
            check_interval(interval, "interval")
            if interval is not None
            else from_env.interval or DEFAULT_INTERVAL_SECONDS
        ),
        enabled=True,
    )
    _runtime.configure(settings)


def flush(timeout: float = 1.0) -> bool:
    """Send everything now; wait up to ``timeout`` s for a busy agent. Never raises.

    Returns True if every datagram was handed to the kernel. Call it before
    ``os._exit()`` or at the end of a short-lived job.
    """
    return _runtime.flush(timeout)
