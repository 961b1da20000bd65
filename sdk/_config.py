"""The public ``configure()`` and ``flush()`` functions."""

from __future__ import annotations

from . import _runtime
from ._endpoint import parse_endpoint
from ._settings import (
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
    # The environment is read only for what the caller left out, so a bad variable
    # cannot break an explicit configuration.
    from_env = settings_from_env() if None in (service, endpoint, interval) else Settings()
    settings = Settings(
        service=from_env.service if service is None else check_service(service, "service"),
        endpoint=from_env.endpoint if endpoint is None else parse_endpoint(endpoint),
        interval=from_env.interval if interval is None else check_interval(interval, "interval"),
    )
    _runtime.configure(settings)


def flush(timeout: float = 1.0) -> bool:
    """Send everything now; wait up to ``timeout`` s for a busy agent. Never raises.

    Returns True if every datagram was handed to the kernel. Call it before
    ``os._exit()`` or at the end of a short-lived job.
    """
    return _runtime.flush(timeout)
