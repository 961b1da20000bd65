"""``ShutdownCoordinator``: run a service's shutdown in the right order, and time it.

On the termination signal: readiness goes off (liveness stays OK), the coordinator waits
for load balancers to notice (the propagation wait), then stops components dependents
first, each under its own timeout, health listeners last. Every step is reported to the
agent as it starts and ends, so the drain waterfall shows which step ate the budget.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import _runtime
from ._clock import steady_time
from ._shutdown import (
    BUSINESS,
    CANCEL,
    HEALTH,
    HEALTH_CLOSED,
    LISTENERS_CLOSED,
    PROPAGATION_WAIT,
    READINESS_OFF,
    ROLES,
    STATE,
)
from ._signals import installers_patched

logger = logging.getLogger("drainwatch")

StopFunction = Callable[[], Awaitable[object] | object]


class CycleError(ValueError):
    """Components depend on each other in a circle; the message names the circle."""


@dataclass(frozen=True)
class Component:
    name: str
    stop: StopFunction
    depends_on: tuple[str, ...]
    timeout: float
    role: str


@dataclass
class StepResult:
    """How one step of the shutdown went. ``error`` is the exception a stop raised."""

    name: str
    started: float
    finished: float
    ok: bool
    error: BaseException | None = None
    timed_out: bool = False
    forced: bool = False

    @property
    def seconds(self) -> float:
        return self.finished - self.started


@dataclass
class ShutdownResult:
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    @property
    def errors(self) -> list[BaseException]:
        return [step.error for step in self.steps if step.error is not None]


def _check_seconds(value: float, setting: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e6:
        raise ValueError(f'"{setting}" must be a number of seconds >= 0: {value!r}')
    return float(value)


class ShutdownCoordinator:
    """Registers components and stops them in dependency order on SIGTERM/SIGINT.

    ``depends_on`` names components this one uses: a component is stopped before the
    ones it depends on (the gRPC server before the database pool it calls). Components
    with ``role="health"`` are stopped last, after every business component, so liveness
    probes keep passing until the very end. Not thread-safe: configure it from one thread,
    run it on one event loop.
    """

    def __init__(
        self,
        *,
        propagation_wait: float = 5.0,
        default_timeout: float = 30.0,
        cancel_tasks: bool = True,
        cancel_timeout: float = 5.0,
        force_on_second_signal: bool = True,
    ) -> None:
        self.propagation_wait = _check_seconds(propagation_wait, "propagation_wait")
        self.default_timeout = _check_seconds(default_timeout, "default_timeout")
        self.cancel_tasks = cancel_tasks
        self.cancel_timeout = _check_seconds(cancel_timeout, "cancel_timeout")
        self.force_on_second_signal = force_on_second_signal
        self._components: dict[str, Component] = {}
        self._readiness_hooks: list[Callable[[], Awaitable[object] | object]] = []
        self._ready = True
        self._started: asyncio.Event | None = None
        self._finished: asyncio.Event | None = None
        self._forced: asyncio.Event | None = None
        self._signals = 0
        self._task: asyncio.Task[ShutdownResult] | None = None
        self._protected: set[asyncio.Task[Any]] = set()
        self.result: ShutdownResult | None = None
        _runtime.current()  # start reporting: the coordinator is only useful when it does

    # -- configuration -----------------------------------------------------------------------

    def add(
        self,
        name: str,
        stop: StopFunction,
        *,
        depends_on: Iterable[str] = (),
        timeout: float | None = None,
        role: str = BUSINESS,
    ) -> None:
        """Register a component. ``stop`` is a function or coroutine function; its result
        is awaited if awaitable (a ``grpc.aio`` stop, an aiohttp ``runner.cleanup``)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f'component "name" must be a non-empty string: {name!r}')
        if name in self._components:
            raise ValueError(f'component "{name}" is already registered; names must be unique')
        if not callable(stop):
            raise TypeError(f'component "{name}": "stop" must be callable: {stop!r}')
        if role not in ROLES:
            raise ValueError(f'component "{name}": "role" must be one of {ROLES}: {role!r}')
        seconds = self.default_timeout if timeout is None else _check_seconds(timeout, "timeout")
        self._components[name] = Component(name, stop, tuple(depends_on), seconds, role)

    def on_readiness_off(self, hook: Callable[[], Awaitable[object] | object]) -> None:
        """Also run ``hook`` when readiness goes off (e.g. ``health.enter_graceful_shutdown``)."""
        self._readiness_hooks.append(hook)

    @property
    def ready(self) -> bool:
        """For the readiness endpoint: False from the moment the shutdown begins."""
        return self._ready

    def order(self) -> list[list[str]]:
        """Stop order as levels (each level may stop concurrently); raises ``CycleError``."""
        self._check_dependencies()
        dependents: dict[str, set[str]] = {name: set() for name in self._components}
        for component in self._components.values():
            for dependency in component.depends_on:
                dependents[dependency].add(component.name)
        levels: list[list[str]] = []
        stopped: set[str] = set()
        for role in (BUSINESS, HEALTH):
            pending = {n for n, c in self._components.items() if c.role == role}
            while pending:
                level = sorted(
                    n
                    for n in pending
                    if dependents[n] <= stopped | _other_role(self._components, role)
                )
                if not level:
                    raise CycleError(_describe_cycle(pending, dependents))
                levels.append(level)
                stopped.update(level)
                pending.difference_update(level)
        return levels

    def _check_dependencies(self) -> None:
        for component in self._components.values():
            for dependency in component.depends_on:
                if dependency not in self._components:
                    raise ValueError(
                        f'component "{component.name}" depends on "{dependency}", which is '
                        f"not registered; add it first or fix the name "
                        f"(registered: {', '.join(sorted(self._components))})"
                    )

    def topology(self) -> dict[str, Any]:
        return {
            "components": [
                {"name": c.name, "depends_on": list(c.depends_on), "role": c.role}
                for c in self._components.values()
            ],
        }

    # -- running -----------------------------------------------------------------------------

    def install(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
    ) -> None:
        """Handle ``signals`` on ``loop`` (default: the running loop) by shutting down."""
        self.order()  # fail now, not at SIGTERM, if the graph is wrong
        STATE.set_topology(self.topology())
        loop = loop or asyncio.get_running_loop()
        self._started = asyncio.Event()
        self._finished = asyncio.Event()
        self._forced = asyncio.Event()
        for signum in signals:
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        if not installers_patched():  # under drainwatch run the handler is already recorded
            STATE.note_signal(signum)
        self._signals += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self.shutdown(), name="drainwatch-shutdown"
            )
        elif self.force_on_second_signal and self._forced is not None:
            logger.warning("drainwatch: second signal, skipping what is left of the drain")
            self._forced.set()

    async def wait(self) -> ShutdownResult:
        """Wait until a signal arrived and the shutdown it started has finished."""
        if self._finished is None:
            raise RuntimeError("call install() before wait()")
        waiter = asyncio.current_task()
        if waiter is not None:
            self._protected.add(waiter)  # the cancel step must not cancel who waits for it
        await self._finished.wait()
        if self.result is None:  # pragma: no cover - set before _finished
            raise RuntimeError("shutdown finished without a result")
        return self.result

    async def shutdown(self) -> ShutdownResult:
        """Run the whole shutdown now (also called by the signal handler). Never raises
        for a component's failure: each is recorded in the result and logged."""
        result = ShutdownResult()
        if self._forced is None:
            self._forced = asyncio.Event()
        caller = asyncio.current_task()
        if caller is not None:
            self._protected.add(caller)
        await self._readiness_off(result)
        await self._step(result, PROPAGATION_WAIT, self._propagation_wait, None)
        levels = self.order()
        business = [level for level in levels if self._components[level[0]].role == BUSINESS]
        health = [level for level in levels if self._components[level[0]].role == HEALTH]
        STATE.step_started(LISTENERS_CLOSED)
        for level in business:
            await self._stop_level(result, level)
        STATE.step_finished(LISTENERS_CLOSED, ok=all(s.ok for s in result.steps))
        if self.cancel_tasks:
            await self._step(result, CANCEL, self._cancel_other_tasks, self.cancel_timeout)
        if health:
            STATE.step_started(HEALTH_CLOSED)
            for level in health:
                await self._stop_level(result, level)
            STATE.step_finished(HEALTH_CLOSED)
        for step in result.steps:
            if step.error is not None:
                logger.error("drainwatch: stopping %s failed: %r", step.name, step.error)
            elif step.timed_out:
                logger.error("drainwatch: stopping %s timed out", step.name)
        self.result = result
        if self._finished is not None:
            self._finished.set()
        return result

    async def _readiness_off(self, result: ShutdownResult) -> None:
        started = steady_time()
        self._ready = False
        STATE.step_started(READINESS_OFF)
        STATE.set_ready(False)
        errors = []
        for hook in self._readiness_hooks:
            try:
                outcome = hook()
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception as error:  # record, keep shutting down
                errors.append(error)
        step = StepResult(
            READINESS_OFF, started, steady_time(), not errors, errors[0] if errors else None
        )
        STATE.step_finished(READINESS_OFF, ok=step.ok, detail=_describe(step))
        result.steps.append(step)

    async def _propagation_wait(self) -> None:
        if self._forced is not None:
            try:
                await asyncio.wait_for(self._forced.wait(), self.propagation_wait)
            except TimeoutError:
                pass

    async def _step(
        self,
        result: ShutdownResult,
        name: str,
        run: Callable[[], Awaitable[object]],
        timeout: float | None,
    ) -> None:
        STATE.step_started(name)
        step = await _timed(name, run, timeout, self._forced)
        STATE.step_finished(name, ok=step.ok, detail=_describe(step))
        result.steps.append(step)

    async def _stop_level(self, result: ShutdownResult, level: list[str]) -> None:
        async def stop(component: Component) -> StepResult:
            STATE.step_started(component.name, detail=f"timeout={component.timeout:g}s")

            async def call() -> object:
                outcome = component.stop()
                if inspect.isawaitable(outcome):
                    return await outcome
                return outcome

            step = await _timed(component.name, call, component.timeout, self._forced)
            STATE.step_finished(component.name, ok=step.ok, detail=_describe(step))
            return step

        result.steps.extend(await asyncio.gather(*(stop(self._components[name]) for name in level)))

    async def _cancel_other_tasks(self) -> None:
        """Cancel the tasks still running once the business components have stopped,
        except the shutdown itself and the tasks awaiting ``wait()`` or ``shutdown()``."""
        protected = {asyncio.current_task(), self._task, *self._protected}
        tasks = [task for task in asyncio.all_tasks() if task not in protected and not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.cancel_timeout)


def _describe_cycle(pending: set[str], dependents: dict[str, set[str]]) -> str:
    """Name one cycle among components none of which can stop first.

    Each stuck component has a stuck dependent; following dependents must repeat a name.
    The cycle is printed in ``depends_on`` direction: ``a -> b`` means a depends on b.
    """
    path = [min(pending)]
    while True:
        following = min(name for name in dependents[path[-1]] if name in pending)
        if following in path:
            cycle = [*path[path.index(following) :], following]
            cycle.reverse()
            return f"components depend on each other in a cycle: {' -> '.join(cycle)}"
        path.append(following)


def _other_role(components: dict[str, Component], role: str) -> set[str]:
    # Business components never wait for health ones: health is stopped after all of them.
    return {name for name, component in components.items() if component.role != role}


async def _timed(
    name: str,
    run: Callable[[], Awaitable[object]],
    timeout: float | None,
    forced: asyncio.Event | None,
) -> StepResult:
    """Run one step under ``timeout``; a second signal (``forced``) cuts it short too."""
    started = steady_time()
    task = asyncio.ensure_future(run())
    waiters: set[asyncio.Future[Any]] = {task}
    force_wait = asyncio.ensure_future(forced.wait()) if forced is not None else None
    if force_wait is not None:
        waiters.add(force_wait)
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if force_wait is not None:
            force_wait.cancel()
    cut_by_signal = forced is not None and forced.is_set()
    if task not in done:
        task.cancel()
        return StepResult(
            name,
            started,
            steady_time(),
            ok=False,
            timed_out=not cut_by_signal,
            forced=cut_by_signal,
        )
    if task.cancelled():
        return StepResult(
            name,
            started,
            steady_time(),
            ok=False,
            error=asyncio.CancelledError(),
            forced=cut_by_signal,
        )
    error = task.exception()
    return StepResult(
        name, started, steady_time(), ok=error is None, error=error, forced=cut_by_signal
    )


def _describe(step: StepResult) -> str | None:
    if step.timed_out:
        return "timed out"
    if step.forced:
        return "cut short by a second signal"
    if step.error is not None:
        return f"{type(step.error).__name__}: {step.error}"
    return None
