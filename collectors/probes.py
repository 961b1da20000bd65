"""Health probes from the sidecar: HTTP and gRPC ``grpc.health.v1``, checked as a kubelet would.

Each probe runs in its own asyncio task on the agent's loop (network I/O only, never a
blocking call) every ``interval`` seconds, or every ``fast_interval`` while the target
drains (``set_fast``). Like the kubelet, every check opens a new connection, so a closed
listener fails the probe even when an old keep-alive connection would still answer. HTTP
succeeds on a 2xx or 3xx status (redirects are not followed; TLS is not verified, as the
kubelet does); gRPC succeeds on ``SERVING``.

``ProbeRunner.snapshot()`` is thread-safe and is what ``ProbeCollector`` exports
(``drainwatch_probe_success{service,probe}`` and friends, see docs/metrics.md); the
collector is in :mod:`drainwatch.collectors.probe_metrics`, the gRPC health messages in
:mod:`drainwatch.collectors.grpc_health_wire`, and the liveness verdict built on the
probes' transitions in :mod:`drainwatch.collectors.liveness_verdict`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol
from urllib.parse import urlsplit

import aiohttp
from drainwatch import __version__
from drainwatch._clock import steady_time
from drainwatch.collectors.grpc_health_wire import (
    CHECK_METHOD,
    SERVING,
    STATUS_NAMES,
    decode_status,
    encode_request,
)
from drainwatch.collectors.liveness_verdict import LivenessFinding, liveness_failed_during_drain
from drainwatch.collectors.probe_metrics import ProbeCollector
from drainwatch.collectors.probe_specs import GrpcProbeSpec, HttpProbeSpec, ProbeSpecError

logger = logging.getLogger("drainwatch.agent")

DEFAULT_INTERVAL_SECONDS: Final = 2.0
DEFAULT_FAST_INTERVAL_SECONDS: Final = 0.2
DEFAULT_TIMEOUT_SECONDS: Final = 1.0
DEFAULT_MAX_TRANSITIONS: Final = 256
_DETAIL_LIMIT = 200
# A check that overruns its own timeout (a wedged resolver, say) is cut this much later.
_OVERRUN_SECONDS = 1.0
_CLOSE_SECONDS = 2.0
# A fresh subchannel per check: a shared one sits in reconnect backoff after the target
# restarts and would keep failing the probe for up to two minutes.
_GRPC_OPTIONS: Final = (("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0))

__all__ = [
    "DEFAULT_FAST_INTERVAL_SECONDS",
    "DEFAULT_INTERVAL_SECONDS",
    "DEFAULT_TIMEOUT_SECONDS",
    "GrpcHealthProbe",
    "HttpProbe",
    "LivenessFinding",
    "Probe",
    "ProbeCollector",
    "ProbeOutcome",
    "ProbeRunner",
    "ProbeStatus",
    "Transition",
    "liveness_failed_during_drain",
    "probe_from_spec",
]


class ProbeOutcome(NamedTuple):
    ok: bool
    detail: str  # "HTTP 503", "NOT_SERVING", "connection refused", "timed out after 1 s"


class Probe(Protocol):
    """One health check. ``check`` never raises for a failing target: it says why."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def timeout(self) -> float: ...
    async def check(self) -> ProbeOutcome: ...
    async def close(self) -> None: ...


def _positive(setting: str, value: float) -> float:
    if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{setting} must be a positive number of seconds: {value!r}")
    return float(value)


def _clip(text: str) -> str:
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 3] + "..."


class HttpProbe:
    """GET ``url``; success is a 2xx or 3xx status within ``timeout`` seconds."""

    kind = "http"

    def __init__(self, name: str, url: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.name = name
        self.url = self.target = url
        parts = urlsplit(url)
        self.port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        self.timeout = _positive("probe timeout", timeout)
        self._session: aiohttp.ClientSession | None = None

    async def check(self) -> ProbeOutcome:
        session = self._session
        if session is None or session.closed:
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, ssl=False),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": f"drainwatch-probe/{__version__}"},
            )
        try:
            async with session.get(self.url, allow_redirects=False) as response:
                status = response.status
        except TimeoutError:
            return ProbeOutcome(False, f"timed out after {self.timeout:g} s")
        except aiohttp.ClientConnectorError as error:
            if error.os_error.errno == errno.ECONNREFUSED:
                return ProbeOutcome(False, "connection refused")
            return ProbeOutcome(False, _clip(f"connection failed: {error.os_error}"))
        except (aiohttp.ClientError, OSError, ValueError) as error:
            return ProbeOutcome(False, _clip(f"{type(error).__name__}: {error}"))
        return ProbeOutcome(200 <= status < 400, f"HTTP {status}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class GrpcHealthProbe:
    """``grpc.health.v1.Health/Check`` for ``service`` ("" = the whole server) at
    ``target`` (HOST:PORT); success is ``SERVING`` within ``timeout`` seconds."""

    kind = "grpc"

    def __init__(
        self,
        name: str,
        target: str,
        service: str = "",
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.name = name
        self.address = target
        self.service = service
        self.target = f"{target}/{service}" if service else target
        port = target.rpartition(":")[2]
        self.port = int(port) if port.isascii() and port.isdigit() else 0
        self.timeout = _positive("probe timeout", timeout)
        import grpc.aio  # here, at startup: importing grpc takes a while

        self._grpc = grpc

    async def check(self) -> ProbeOutcome:
        grpc = self._grpc
        channel = grpc.aio.insecure_channel(self.address, options=list(_GRPC_OPTIONS))
        try:
            call = channel.unary_unary(CHECK_METHOD)
            reply: bytes = await call(encode_request(self.service), timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return ProbeOutcome(False, f"timed out after {self.timeout:g} s")
            return ProbeOutcome(False, _clip(f"{code.name}: {error.details()}"))
        finally:
            await channel.close()
        status = decode_status(reply)
        if status is None:
            return ProbeOutcome(False, "malformed HealthCheckResponse")
        return ProbeOutcome(status == SERVING, STATUS_NAMES.get(status, f"status {status}"))

    async def close(self) -> None:
        """Nothing to close: every check has its own channel."""


def probe_from_spec(
    spec: HttpProbeSpec | GrpcProbeSpec, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> Probe:
    """The probe a parsed ``--probe-http`` or ``--probe-grpc`` value describes."""
    if isinstance(spec, HttpProbeSpec):
        return HttpProbe(spec.name, spec.url, timeout)
    return GrpcHealthProbe(spec.name, spec.target, spec.service, timeout)


@dataclass(frozen=True, slots=True)
class Transition:
    at: float  # Unix seconds when the result was known (the end of the check)
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class ProbeStatus:
    """One probe as last seen. ``ok`` is None until the first check completes."""

    name: str
    kind: str
    target: str
    port: int
    ok: bool | None
    detail: str | None
    last_checked: float | None
    last_change: float | None
    last_duration: float | None
    consecutive_failures: int
    last_error: str | None  # the latest failure's detail, kept after a recovery
    checks: int
    failures: int
    transitions_total: int
    transitions: tuple[Transition, ...]  # the latest ``max_transitions``, oldest first


@dataclass(slots=True)
class _Track:
    probe: Probe
    transitions: deque[Transition]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ok: bool | None = None
    detail: str | None = None
    last_checked: float | None = None
    last_change: float | None = None
    last_duration: float | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    checks: int = 0
    failures: int = 0
    transitions_total: int = 0

    def status(self) -> ProbeStatus:
        probe = self.probe
        return ProbeStatus(
            probe.name,
            probe.kind,
            probe.target,
            probe.port,
            self.ok,
            self.detail,
            self.last_checked,
            self.last_change,
            self.last_duration,
            self.consecutive_failures,
            self.last_error,
            self.checks,
            self.failures,
            self.transitions_total,
            tuple(self.transitions),
        )


class ProbeRunner:
    """Runs every probe on its interval as tasks on the running loop (``start``/``stop``,
    or ``async with``). ``snapshot``, ``status`` and ``set_fast`` are thread-safe."""

    def __init__(
        self,
        probes: Sequence[Probe],
        interval: float = DEFAULT_INTERVAL_SECONDS,
        fast_interval: float = DEFAULT_FAST_INTERVAL_SECONDS,
        max_transitions: int = DEFAULT_MAX_TRANSITIONS,
        clock: Callable[[], float] = steady_time,
    ) -> None:
        names = [probe.name for probe in probes]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ProbeSpecError(
                "probe names must be unique across --probe-http and --probe-grpc: "
                + ", ".join(f'"{name}"' for name in twice)
                + " given more than once; rename one"
            )
        self._interval = _positive("probe interval", interval)
        self._fast_interval = _positive("fast probe interval", fast_interval)
        self._clock = clock
        self._lock = threading.Lock()
        self._tracks = [_Track(probe, deque(maxlen=max(1, max_transitions))) for probe in probes]
        self._fast = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def fast(self) -> bool:
        return self._fast

    async def start(self) -> None:
        if self._tasks:
            return
        self._loop = asyncio.get_running_loop()
        for track in self._tracks:
            track.wake = asyncio.Event()
            name = f"drainwatch-probe-{track.probe.name}"
            self._tasks.append(asyncio.create_task(self._run(track), name=name))

    async def stop(self) -> None:
        """Cancel the checks and close the probes, within a bound; never raises."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        closing = [track.probe.close() for track in self._tracks]
        try:
            async with asyncio.timeout(_CLOSE_SECONDS):
                results = await asyncio.gather(*closing, return_exceptions=True)
        except TimeoutError:
            logger.warning("drainwatch agent: probes did not close within %g s", _CLOSE_SECONDS)
            return
        for track, result in zip(self._tracks, results, strict=True):
            if isinstance(result, BaseException):
                logger.warning("drainwatch agent: closing probe %s: %r", track.probe.name, result)

    async def __aenter__(self) -> ProbeRunner:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def set_fast(self, fast: bool) -> None:
        """Probe every ``fast_interval`` (while the target drains) or every ``interval``.
        Turning it on checks every probe at once. Callable from any thread."""
        with self._lock:
            speed_up = fast and not self._fast
            self._fast = fast
            loop = self._loop
        if speed_up and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for track in self._tracks:
            track.wake.set()

    def snapshot(self) -> tuple[ProbeStatus, ...]:
        """Every probe's state, copied under the lock, in configuration order."""
        with self._lock:
            return tuple(track.status() for track in self._tracks)

    def status(self, name: str) -> ProbeStatus | None:
        with self._lock:
            for track in self._tracks:
                if track.probe.name == name:
                    return track.status()
        return None

    async def check_all(self) -> tuple[ProbeStatus, ...]:
        """Check every probe once now (a last look when the target goes away)."""
        await asyncio.gather(*(self._check(track) for track in self._tracks))
        return self.snapshot()

    async def _run(self, track: _Track) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            track.wake.clear()  # a set_fast during the check re-checks at once
            await self._check(track)
            delay = (self._fast_interval if self._fast else self._interval) - (loop.time() - began)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await track.wake.wait()

    async def _check(self, track: _Track) -> None:
        probe = track.probe
        began = time.perf_counter()
        try:
            async with asyncio.timeout(probe.timeout + _OVERRUN_SECONDS):
                outcome = await probe.check()
        except TimeoutError:
            outcome = ProbeOutcome(False, f"timed out after {probe.timeout:g} s")
        except Exception as error:
            logger.exception("drainwatch agent: probe %s failed unexpectedly", probe.name)
            outcome = ProbeOutcome(False, _clip(f"probe error: {type(error).__name__}: {error}"))
        self._record(track, outcome, self._clock(), time.perf_counter() - began)

    def _record(self, track: _Track, outcome: ProbeOutcome, at: float, duration: float) -> None:
        ok, detail = outcome
        with self._lock:
            changed = track.ok is not ok
            track.checks += 1
            if ok:
                track.consecutive_failures = 0
            else:
                track.failures += 1
                track.consecutive_failures += 1
                track.last_error = detail
            if changed:
                track.transitions.append(Transition(at, ok, detail))
                track.transitions_total += 1
                track.last_change = at
            track.ok, track.detail = ok, detail
            track.last_checked, track.last_duration = at, duration
        if changed:
            logger.info(
                "drainwatch agent: probe %s (%s) is %s: %s",
                track.probe.name,
                track.probe.target,
                "up" if ok else "failing",
                detail,
            )
