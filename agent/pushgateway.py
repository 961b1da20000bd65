"""Push the final drain metrics of a service to a Prometheus Pushgateway.

The agent keeps serving its final metrics for a while after the target is gone, but a
Prometheus that scrapes every 30 s can still miss a pod that finished in 10; a Pushgateway
keeps the last push until it is replaced. ``push_final`` PUTs one group (prometheus-client's
``push_to_gateway``), replacing the previous push with the same grouping key. The grouping
key is ``{service, instance}`` (the pod name by default), so pods never overwrite each
other. Only the grouping key's service is pushed: the Pushgateway stamps the grouping labels
on every pushed series and refuses a push whose series then collide.

The push runs in a daemon thread, bounded by ``timeout``, so it never blocks the event loop
nor delays the agent's exit; it never raises and returns what happened. Prometheus scrapes
the Pushgateway with ``honor_labels: true`` so ``service`` and ``instance`` stay as pushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, push_to_gateway
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

logger = logging.getLogger("drainwatch.agent")

DEFAULT_JOB: Final = "drainwatch"
DEFAULT_TIMEOUT_SECONDS: Final = 5.0
_MAX_JOB_LENGTH = 128
_MAX_REASON_LENGTH = 300
# The thread's own socket timeout normally ends a push; this is the backstop.
_OVERRUN_SECONDS = 1.0
_FIX = (
    "check that the Pushgateway is reachable from the pod (e.g. "
    "http://pushgateway.monitoring.svc:9091) and accepts pushes"
)

T = TypeVar("T")


class PushgatewayError(ValueError):
    """A Pushgateway setting that cannot be used; ``str()`` names setting, rule, value, fix."""


@dataclass(frozen=True, slots=True)
class PushResult:
    ok: bool
    reason: str  # "" when ok; "HTTP 400: ...", "connection refused", "timed out after 5 s"
    group: str  # job and grouping key, for logs: "job=drainwatch service=checkout instance=pod-1"
    seconds: float

    def __str__(self) -> str:
        outcome = "pushed" if self.ok else f"push failed: {self.reason}"
        return f"{self.group}: {outcome} ({self.seconds:.3f} s)"


def parse_pushgateway_url(value: object, where: str = "--pushgateway") -> str:
    """An http:// or https:// base URL (a path prefix is allowed), without a trailing '/'."""
    example = "for example http://pushgateway.monitoring.svc:9091"
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    if not isinstance(value, str) or len(value) > 2048:
        raise PushgatewayError(f"{where} must be an http:// or https:// URL: {shown}; {example}")
    if any(ch.isspace() or not ch.isprintable() for ch in value.strip()):
        raise PushgatewayError(
            f"{where} must be a URL without spaces or control characters: {value!r}; {example}"
        )
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        raise PushgatewayError(
            f"{where} must be a URL with a port from 1 to 65535: {shown}; {example}"
        ) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PushgatewayError(
            f"{where} must be an http:// or https:// URL with a host: {shown}; {example}"
        )
    if parts.username is not None or parts.password is not None:
        raise PushgatewayError(
            f"{where} must be a URL without credentials: {shown}; the URL is logged, and "
            "pushes carry no login: put the Pushgateway on a network only the cluster reaches"
        )
    if parts.query or parts.fragment or port == 0:
        raise PushgatewayError(
            f"{where} must be a base URL without a query, a fragment or port 0: {shown}; {example}"
        )
    return value.strip().rstrip("/")


def parse_job(value: object, where: str = "--pushgateway-job") -> str:
    """The Pushgateway job name: 1 to 128 printable characters without spaces."""
    text = value.strip() if isinstance(value, str) else ""
    if (
        not text
        or len(text) > _MAX_JOB_LENGTH
        or any(ch.isspace() or not ch.isprintable() for ch in text)
    ):
        shown = repr(value) if not isinstance(value, str) else f'"{value[:80]}"'
        raise PushgatewayError(
            f"{where} must be a job name of 1 to {_MAX_JOB_LENGTH} printable characters without "
            f'spaces: {shown}; the default is "{DEFAULT_JOB}"'
        )
    return text


def grouping_key(service: str, instance: str | None = None) -> dict[str, str]:
    """``{service, instance}``; ``instance`` defaults to the host name, the pod's name in
    Kubernetes, so the pods of one service keep separate groups."""
    return {"service": service, "instance": instance or socket.gethostname()}


class _Group(Collector):
    """The series of one group: those whose grouping labels match (or are absent).
    ``_created`` series are left out: a creation time means nothing in a final snapshot."""

    def __init__(self, source: CollectorRegistry | Collector, key: Mapping[str, str]) -> None:
        self._source = source
        self._key = dict(key)

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            kept = [
                sample
                for sample in family.samples
                if not sample.name.endswith("_created")
                and all(
                    sample.labels.get(name, value) == value for name, value in self._key.items()
                )
            ]
            if kept:
                copy = Metric(family.name, family.documentation, family.type, family.unit)
                copy.samples = kept
                yield copy


def _unreachable(cause: object, timeout: float) -> str:
    if isinstance(cause, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
        return "connection refused"
    return f"cannot reach the Pushgateway: {cause}"


def _push_blocking(
    url: str, job: str, registry: CollectorRegistry, key: dict[str, str], timeout: float
) -> str:
    """Push; "" on success, else why not. Runs in the push thread; never raises."""
    try:
        push_to_gateway(url, job, registry, grouping_key=key, timeout=timeout)
    except urllib.error.HTTPError as error:
        try:
            body = error.read(_MAX_REASON_LENGTH).decode("utf-8", "replace").strip()
        except OSError:
            body = ""
        finally:
            error.close()
        return f"HTTP {error.code}: {body or error.reason}"
    except urllib.error.URLError as error:
        return _unreachable(error.reason, timeout)
    except TimeoutError:
        return f"timed out after {timeout:g} s"
    except Exception as error:  # a collector that fails, a reset connection, ...
        return f"{type(error).__name__}: {error}"
    return ""


def _in_thread(function: Callable[[], T]) -> asyncio.Future[T]:
    """Run ``function`` in a daemon thread: a hung push never holds up the agent's exit,
    as a thread of the loop's default executor would."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T) -> None:
        if not future.done():
            future.set_result(result)

    def run() -> None:
        result = function()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(settle, result)

    threading.Thread(target=run, name="drainwatch-pushgateway", daemon=True).start()
    return future


async def push_final(
    url: str,
    job: str,
    metrics: CollectorRegistry | Collector,
    key: Mapping[str, str],
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> PushResult:
    """Push the series of ``metrics`` that belong to the ``key`` group to the Pushgateway
    at ``url`` (already validated by ``parse_pushgateway_url``). Never raises; logs one line."""
    group = " ".join([f"job={job}", *(f"{name}={value}" for name, value in key.items())])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Group(metrics, key))
    began = time.perf_counter()
    pushing = _in_thread(lambda: _push_blocking(url, job, registry, dict(key), timeout))
    try:
        async with asyncio.timeout(timeout + _OVERRUN_SECONDS):
            reason = await pushing
    except TimeoutError:
        reason = f"timed out after {timeout:g} s"
    result = PushResult(not reason, reason[:_MAX_REASON_LENGTH], group, time.perf_counter() - began)
    if result.ok:
        logger.info("drainwatch agent: Pushgateway %s %s", url, result)
    else:
        logger.warning("drainwatch agent: Pushgateway %s %s; %s", url, result, _FIX)
    return result
