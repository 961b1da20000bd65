"""The process's shutdown, as it happens: signal, phases, steps, readiness, listeners, exit.

Integrations and the coordinator report what they see here; every change is sent to the
agent at once (from the thread where it happens), as one cumulative ``shutdown`` record,
so the agent can order events and judge the shutdown even if the process is SIGKILLed a
moment later. While shutting down, snapshots come every 100 ms instead of every second.
"""

from __future__ import annotations

import signal as signal_module
import threading
from dataclasses import dataclass, field
from typing import Any, Final

from ._caps import CAPPED
from ._clock import steady_time
from ._protocol import MAX_LOCATION_CHARS, MAX_NAME_CHARS, clip

RUNNING: Final = "running"
SIGNALLED: Final = "signalled"
DRAINING: Final = "draining"
STOPPING: Final = "stopping"
STOPPED: Final = "stopped"
PHASES: Final = (RUNNING, SIGNALLED, DRAINING, STOPPING, STOPPED)

BUSINESS: Final = "business"
HEALTH: Final = "health"
ROLES: Final = (BUSINESS, HEALTH)

# Step names with a meaning of their own (docs/metrics.md); components add their own names.
READINESS_OFF: Final = "readiness_off"
PROPAGATION_WAIT: Final = "propagation_wait"
LISTENERS_CLOSED: Final = "listeners_closed"
DRAIN: Final = "drain"
CANCEL: Final = "cancel"
HEALTH_CLOSED: Final = "health_closed"
EXIT: Final = "exit"

MAX_STEPS: Final = 64
MAX_SIGNALS: Final = 8


@dataclass
class Step:
    started: float
    finished: float | None = None
    ok: bool | None = None
    detail: str | None = None


@dataclass
class Listener:
    role: str
    port: int | None
    opened: float
    stop_started: float | None = None
    closed: float | None = None


@dataclass
class ShutdownState:
    """Process-wide; mutated under ``lock`` from any thread, read by the reporter."""

    phase: str = RUNNING
    signals: list[tuple[str, float]] = field(default_factory=list)
    steps: dict[str, Step] = field(default_factory=dict)
    ready: bool | None = None
    ready_changed: float | None = None
    health: dict[str, tuple[str, float]] = field(default_factory=dict)
    listeners: dict[str, Listener] = field(default_factory=dict)
    exited: float | None = None
    exit_code: int | None = None
    inflight_at_exit: dict[str, int] | None = None
    topology: dict[str, Any] | None = None
    # phase != RUNNING, kept as a plain attribute: every request's start and end reads it.
    shutting_down: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # -- transitions ------------------------------------------------------------------------

    def _advance(self, phase: str) -> None:
        if PHASES.index(phase) > PHASES.index(self.phase):
            self.phase = phase
            self.shutting_down = True

    def note_signal(self, signum: int, send: bool = True) -> None:
        """Record a termination signal; ``send=False`` leaves sending it to the caller."""
        with self.lock:
            if len(self.signals) < MAX_SIGNALS:
                self.signals.append((_signal_name(signum), steady_time()))
            else:
                CAPPED.note("signals")
            self._advance(SIGNALLED)
            if DRAIN not in self.steps:
                self.steps[DRAIN] = Step(steady_time())
        if send:
            _emit()

    def begin_shutdown(self) -> None:
        """A shutdown that began without a signal (a server stopped by the program)."""
        with self.lock:
            self._advance(DRAINING)
            if DRAIN not in self.steps:
                self.steps[DRAIN] = Step(steady_time())
        _emit()

    def step_started(self, name: str, detail: str | None = None) -> None:
        with self.lock:
            name = clip(name, MAX_NAME_CHARS)
            if name not in self.steps:
                if len(self.steps) < MAX_STEPS:
                    self.steps[name] = Step(steady_time(), detail=_detail(detail))
                else:
                    CAPPED.note("steps")
            if self.phase == SIGNALLED:
                self._advance(DRAINING)
        _emit()

    def step_finished(self, name: str, ok: bool = True, detail: str | None = None) -> None:
        with self.lock:
            step = self.steps.get(clip(name, MAX_NAME_CHARS))
            if step is not None and step.finished is None:
                step.finished = steady_time()
                step.ok = ok
                if detail is not None:
                    step.detail = _detail(detail)
        _emit()

    def set_ready(self, ready: bool) -> None:
        """Readiness as the service declares it; turning it off starts the shutdown."""
        with self.lock:
            if self.ready == ready:
                return
            was_ready = self.ready
            self.ready = ready
            self.ready_changed = steady_time()
            if not ready and was_ready and READINESS_OFF not in self.steps:
                self.steps[READINESS_OFF] = Step(self.ready_changed, self.ready_changed, True)
                self._advance(DRAINING)
        _emit()

    def set_health(self, service: str, status: str) -> None:
        """A grpc.health.v1 status change (service "" is the whole server)."""
        with self.lock:
            service = clip(service, MAX_NAME_CHARS)
            previous = self.health.get(service)
            if previous is not None and previous[0] == status:
                return
            if len(self.health) < MAX_STEPS or previous is not None:
                self.health[service] = (clip(status, 32), steady_time())
            else:
                CAPPED.note("health")
        if service == "":
            self.set_ready(status == "SERVING")
        else:
            _emit()

    def listener_opened(self, name: str, role: str, port: int | None) -> None:
        with self.lock:
            name = clip(name, MAX_NAME_CHARS)
            if len(self.listeners) < MAX_STEPS:
                self.listeners[name] = Listener(role, port, steady_time())
            else:
                CAPPED.note("listeners")
        _emit()

    def listener_stop_started(self, name: str, detail: str | None = None) -> None:
        with self.lock:
            listener = self.listeners.get(clip(name, MAX_NAME_CHARS))
            if listener is not None and listener.stop_started is None:
                listener.stop_started = steady_time()
            if self.phase == RUNNING:
                self._advance(DRAINING)
                if DRAIN not in self.steps:
                    self.steps[DRAIN] = Step(steady_time())
        self.step_started(name, detail)

    def listener_closed(self, name: str, ok: bool = True, detail: str | None = None) -> None:
        with self.lock:
            listener = self.listeners.get(clip(name, MAX_NAME_CHARS))
            if listener is not None and listener.closed is None:
                listener.closed = steady_time()
                if listener.stop_started is None:
                    listener.stop_started = listener.closed
        self.step_finished(name, ok, detail)

    def inflight_reached_zero(self) -> None:
        with self.lock:
            step = self.steps.get(DRAIN)
            if step is None or step.finished is not None:
                return
            step.finished = steady_time()
            step.ok = True
            self._advance(STOPPING)
        _emit()

    def note_exit(self, code: int | None, inflight: dict[str, int]) -> None:
        with self.lock:
            if self.exited is not None:
                return
            self.exited = steady_time()
            self.exit_code = code
            self.inflight_at_exit = inflight
            self._advance(STOPPED)
            drain = self.steps.get(DRAIN)
            if drain is not None and drain.finished is None:
                drain.finished = self.exited
                drain.ok = not any(inflight.values())
            self.steps.setdefault(EXIT, Step(self.exited, self.exited, True))
        _emit()

    def set_topology(self, topology: dict[str, Any]) -> None:
        with self.lock:
            self.topology = topology
        _emit()

    # -- reporting --------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        with self.lock:
            return {
                "type": "shutdown",
                "phase": self.phase,
                "signals": [{"signal": name, "at": at} for name, at in self.signals],
                "steps": {
                    name: {
                        "started": step.started,
                        "finished": step.finished,
                        "ok": step.ok,
                        "detail": step.detail,
                    }
                    for name, step in self.steps.items()
                },
                "ready": self.ready,
                "ready_changed": self.ready_changed,
                "health": {
                    service: {"status": status, "at": at}
                    for service, (status, at) in self.health.items()
                },
                "listeners": {
                    name: {
                        "role": listener.role,
                        "port": listener.port,
                        "opened": listener.opened,
                        "stop_started": listener.stop_started,
                        "closed": listener.closed,
                    }
                    for name, listener in self.listeners.items()
                },
                "exited": self.exited,
                "exit_code": self.exit_code,
                "inflight_at_exit": self.inflight_at_exit,
                "topology": self.topology,
            }

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread may have held it), no history."""
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Forget everything (tests, and a forked child that starts its own life)."""
        with self.lock:
            fresh = ShutdownState()
            for name in (
                "phase",
                "signals",
                "steps",
                "ready",
                "ready_changed",
                "health",
                "listeners",
                "exited",
                "exit_code",
                "inflight_at_exit",
                "topology",
                "shutting_down",
            ):
                setattr(self, name, getattr(fresh, name))


def _signal_name(signum: int) -> str:
    try:
        return signal_module.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def _detail(detail: str | None) -> str | None:
    return clip(detail, MAX_LOCATION_CHARS) if detail else None


def send_state() -> None:
    """Send the shutdown state and the in-flight counters now; never raises."""
    _emit()


def _emit() -> None:
    from . import _runtime

    try:
        _runtime.emit_shutdown()
    except Exception:  # instrumentation must never break the application
        _runtime.note_internal_error()


STATE = ShutdownState()
