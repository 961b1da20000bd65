"""What the HTTP integrations (aiohttp, ASGI) share: health paths, listener roles, labels.

Health and readiness are observed from the responses the service itself gives on its
conventional paths, so a service that already has ``/readyz`` needs no extra call:

- a 2xx on a readiness path declares the service ready; a 5xx after it had been ready
  turns readiness off (the ``readiness_off`` step, the first step of a correct drain);
- a 5xx on a liveness path while the process is shutting down is recorded as the step
  ``liveness_failed``: the orchestrator is about to kill the process mid-drain.

Everything here that runs per request is a set lookup or two; nothing raises into the
application.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Final, ParamSpec

from drainwatch import _inflight, _runtime, _shutdown

logger = logging.getLogger("drainwatch")

P = ParamSpec("P")

HEALTH_PORTS_ENV: Final = "DRAINWATCH_HEALTH_PORTS"
LIVENESS_FAILED: Final = "liveness_failed"

HEALTH_PATHS: Final = frozenset(
    {"/healthz", "/readyz", "/livez", "/health", "/ready", "/live", "/ping"}
)
READINESS_PATHS: Final = frozenset({"/readyz", "/ready", "/health/ready"})
LIVENESS_PATHS: Final = frozenset(
    {"/livez", "/live", "/healthz", "/health", "/ping", "/health/live"}
)
OBSERVED_PATHS: Final = READINESS_PATHS | LIVENESS_PATHS

# Request methods outside this set (any token is a valid HTTP method) share one label, so a
# client cannot grow the number of series.
HTTP_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)
OTHER_HTTP_METHOD: Final = "OTHER"
UNMATCHED: Final = "unmatched"

# 1000 normal closure, 1001 going away, 1005 closed without a status code (a clean close
# frame that carries no code); 1006 means the connection dropped without a close frame.
_NORMAL_CLOSE_CODES: Final = frozenset({1000, 1001, 1005})
_ABNORMAL_CLOSURE: Final = 1006


def is_health_path(path: str) -> bool:
    """True for the conventional health, readiness and liveness paths."""
    return path in HEALTH_PATHS or path.startswith("/health/")


def observe_health_response(path: str, status: int) -> None:
    """Learn readiness and liveness from a response on a health path. Never raises."""
    if path not in OBSERVED_PATHS:
        return
    try:
        state = _shutdown.STATE
        if path in READINESS_PATHS:
            if 200 <= status < 300:
                state.set_ready(True)
            elif status >= 500 and state.ready:
                state.set_ready(False)
        if path in LIVENESS_PATHS and status >= 500 and state.shutting_down:
            state.step_started(LIVENESS_FAILED, detail=f"{path} {status}")
    except Exception:
        _runtime.note_internal_error()


def method_label(method: str, template: str | None) -> str:
    """``"GET /orders/{id}"``: the request method and the route template, never a raw path."""
    verb = method if method in HTTP_METHODS else OTHER_HTTP_METHOD
    return f"{verb} {UNMATCHED if template is None else template}"


def websocket_outcome(close_code: int | None) -> str:
    """The outcome of a WebSocket connection that ended with ``close_code``.

    ``None`` (the handler returned without a close) means the server closes it normally.
    """
    if close_code is None or close_code in _NORMAL_CLOSE_CODES:
        return _inflight.OK
    if close_code == _ABNORMAL_CLOSURE:
        return _inflight.aborted_or_cancelled()
    return _inflight.ERROR


# -- listeners ----------------------------------------------------------------------------------


def check_role(role: str | None) -> str | None:
    """``role`` itself; raises ``ValueError`` naming the argument for anything unknown."""
    if role is not None and role not in _shutdown.ROLES:
        raise ValueError(f'"role" must be one of {", ".join(_shutdown.ROLES)} or None: {role!r}')
    return role


def health_ports() -> frozenset[int]:
    """Ports named in ``DRAINWATCH_HEALTH_PORTS`` (read now, at every call). Never raises."""
    raw = os.environ.get(HEALTH_PORTS_ENV, "")
    ports: set[int] = set()
    for item in raw.split(","):
        text = item.strip()
        if not text:
            continue
        if text.isdigit() and 0 < int(text) < 65536:
            ports.add(int(text))
        else:
            logger.warning(
                'drainwatch: "%s" must be a comma-separated list of ports (1-65535): '
                "%r is not one; it is ignored (example: %s=8081,8082)",
                HEALTH_PORTS_ENV,
                text,
                HEALTH_PORTS_ENV,
            )
    return frozenset(ports)


def listener_role(
    port: int | None, explicit: str | None, route_paths: Callable[[], Iterable[str]]
) -> str:
    """A listener's role: ``health`` for a port in ``DRAINWATCH_HEALTH_PORTS``, else
    ``explicit``, else ``health`` if the app serves health paths only, else ``business``.

    ``route_paths`` is called only when needed; an empty app is ``business``.
    """
    if port is not None and port in health_ports():
        return _shutdown.HEALTH
    if explicit is not None:
        return explicit
    paths = list(route_paths())
    if paths and all(is_health_path(path) for path in paths):
        return _shutdown.HEALTH
    return _shutdown.BUSINESS


def listener_name(address: object) -> tuple[str, int | None]:
    """The listener name and port for a bound socket address (``getsockname()``)."""
    if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
        return f"http:{address[1]}", address[1]
    if isinstance(address, bytes):
        address = address.decode(errors="replace")
    return f"http:unix:{address}", None


def guarded(action: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> None:
    """Run a bookkeeping action; count its failure instead of raising into the app."""
    try:
        action(*args, **kwargs)
    except Exception:
        _runtime.note_internal_error()
