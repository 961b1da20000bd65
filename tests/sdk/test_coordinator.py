"""``ShutdownCoordinator``: order, timeouts, failures, cycles, signals, and what it reports."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import drainwatch
import pytest
from drainwatch import CycleError, ShutdownCoordinator
from drainwatch._shutdown import STATE

from .conftest import run


class Log:
    """Records when each fake component stopped (monotonic) in the order they stopped."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, float]] = []

    def stopper(self, name: str, seconds: float = 0.0, fail: bool = False) -> Any:
        async def stop() -> None:
            self.events.append((name, "start", time.monotonic()))
            await asyncio.sleep(seconds)
            if fail:
                raise RuntimeError(f"{name} refused to stop")
            self.events.append((name, "end", time.monotonic()))

        return stop

    def order(self) -> list[str]:
        return [name for name, what, _ in self.events if what == "start"]


def test_components_stop_dependents_first_and_health_last() -> None:
    """The server stops before the pool it uses; the health listener stops after everything."""
    log = Log()
    coordinator = ShutdownCoordinator(propagation_wait=0, cancel_tasks=False)
    coordinator.add("health", log.stopper("health"), role="health")
    coordinator.add("db", log.stopper("db"))
    coordinator.add("cache", log.stopper("cache"))
    coordinator.add("grpc", log.stopper("grpc"), depends_on=["db", "cache"])
    coordinator.add("worker", log.stopper("worker"), depends_on=["db"])
    assert coordinator.order() == [["grpc", "worker"], ["cache", "db"], ["health"]]
    result = run(coordinator.shutdown())
    assert result.ok
    order = log.order()
    assert order.index("grpc") < order.index("db") and order.index("worker") < order.index("db")
    assert order[-1] == "health"
    assert [step.name for step in result.steps][:2] == ["readiness_off", "propagation_wait"]


def test_components_of_one_level_stop_concurrently() -> None:
    """Two independent servers in one loop stop side by side, not one after the other."""
    log = Log()
    coordinator = ShutdownCoordinator(propagation_wait=0, cancel_tasks=False)
    coordinator.add("grpc-a", log.stopper("grpc-a", 0.3))
    coordinator.add("grpc-b", log.stopper("grpc-b", 0.3))
    started = time.monotonic()
    result = run(coordinator.shutdown())
    assert result.ok
    assert time.monotonic() - started < 0.55


def test_readiness_goes_off_first_and_the_propagation_wait_is_kept() -> None:
    """Readiness is off before any component stops, and the wait lasts as configured."""
    log = Log()
    seen_ready: list[bool] = []
    coordinator = ShutdownCoordinator(propagation_wait=0.2, cancel_tasks=False)

    async def stop_server() -> None:
        seen_ready.append(coordinator.ready)
        log.events.append(("server", "start", time.monotonic()))

    coordinator.add("server", stop_server)
    coordinator.on_readiness_off(
        lambda: log.events.append(("ready-off", "start", time.monotonic()))
    )
    assert coordinator.ready
    run(coordinator.shutdown())
    assert seen_ready == [False]
    (_, _, off), (_, _, stopped) = log.events
    assert stopped - off >= 0.19
    assert STATE.ready is False
    record = STATE.record()
    assert record["steps"]["readiness_off"]["started"] <= record["steps"]["server"]["started"]


def test_a_component_that_hangs_times_out_and_the_rest_still_stop() -> None:
    """A stop that never returns is cut at its timeout; later components still run."""
    log = Log()
    coordinator = ShutdownCoordinator(propagation_wait=0, cancel_tasks=False)
    coordinator.add("db", log.stopper("db"))
    coordinator.add("stuck", log.stopper("stuck", 60), timeout=0.2, depends_on=["db"])
    started = time.monotonic()
    result = run(coordinator.shutdown())
    assert time.monotonic() - started < 2
    steps = {step.name: step for step in result.steps}
    assert steps["stuck"].timed_out and not steps["stuck"].ok
    assert steps["db"].ok
    assert not result.ok
    assert STATE.record()["steps"]["stuck"] | {"started": 0, "finished": 0} == {
        "started": 0,
        "finished": 0,
        "ok": False,
        "detail": "timed out",
    }


def test_a_component_that_raises_is_recorded_and_the_rest_still_stop() -> None:
    """A failing stop is kept in the result (the same exception), never lost or re-raised."""
    log = Log()
    coordinator = ShutdownCoordinator(propagation_wait=0, cancel_tasks=False)
    coordinator.add("db", log.stopper("db"))
    coordinator.add("broken", log.stopper("broken", fail=True), depends_on=["db"])
    result = run(coordinator.shutdown())
    assert [str(error) for error in result.errors] == ["broken refused to stop"]
    assert log.order() == ["broken", "db"]
    assert STATE.record()["steps"]["broken"]["detail"] == "RuntimeError: broken refused to stop"


def test_a_cycle_is_refused_with_the_cycle_named() -> None:
    """A dependency cycle raises CycleError naming the components in dependency order."""
    coordinator = ShutdownCoordinator()
    noop = Log().stopper("x")
    coordinator.add("a", noop, depends_on=["b"])
    coordinator.add("b", noop, depends_on=["c"])
    coordinator.add("c", noop, depends_on=["a"])
    coordinator.add("d", noop)
    with pytest.raises(CycleError, match=r"cycle: a -> b -> c -> a"):
        coordinator.order()


def test_bad_registrations_are_refused_with_the_reason() -> None:
    """Unknown dependencies, duplicate names, bad roles and timeouts are named in the error."""
    coordinator = ShutdownCoordinator()
    noop = Log().stopper("x")
    coordinator.add("grpc", noop, depends_on=["dbb"])
    coordinator.add("db", noop)
    with pytest.raises(ValueError, match=r'"grpc" depends on "dbb", which is not registered'):
        coordinator.order()
    with pytest.raises(ValueError, match=r'"db" is already registered'):
        coordinator.add("db", noop)
    with pytest.raises(ValueError, match=r'"role" must be one of'):
        coordinator.add("x", noop, role="frontend")
    with pytest.raises(ValueError, match=r'"timeout" must be a number of seconds >= 0: -1'):
        coordinator.add("y", noop, timeout=-1)
    with pytest.raises(TypeError, match=r'"stop" must be callable'):
        coordinator.add("z", "not callable")  # type: ignore[arg-type]


def test_sigterm_runs_the_shutdown_and_a_second_one_cuts_it_short() -> None:
    """A real SIGTERM starts the drain; a second one skips what is left of it."""
    log = Log()

    async def main() -> drainwatch.ShutdownResult:
        coordinator = ShutdownCoordinator(propagation_wait=30, cancel_tasks=False)
        coordinator.add("server", log.stopper("server"))
        coordinator.install()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.1)
        assert not coordinator.ready
        os.kill(os.getpid(), signal.SIGTERM)
        return await coordinator.wait()

    started = time.monotonic()
    result = run(main())
    assert time.monotonic() - started < 5
    steps = {step.name: step for step in result.steps}
    assert steps["propagation_wait"].forced
    assert log.order() == ["server"]
    assert [entry["signal"] for entry in STATE.record()["signals"]] == ["SIGTERM", "SIGTERM"]


def test_other_tasks_are_cancelled_after_the_components_stopped() -> None:
    """Tasks left running after the business components stop are cancelled and timed."""

    async def main() -> tuple[bool, drainwatch.ShutdownResult]:
        leftover = asyncio.create_task(asyncio.sleep(60))
        coordinator = ShutdownCoordinator(propagation_wait=0, cancel_timeout=1)
        coordinator.add("server", Log().stopper("server"))
        coordinator.install(signals=[signal.SIGUSR1])
        os.kill(os.getpid(), signal.SIGUSR1)
        result = await coordinator.wait()  # the waiting task itself is never cancelled
        return leftover.cancelled(), result

    cancelled, result = run(main())
    assert cancelled
    assert [step.name for step in result.steps][-1] == "cancel"


def test_the_topology_is_exported_to_the_agent() -> None:
    """install() sends the components and their dependencies as the shutdown topology."""

    async def main() -> None:
        coordinator = ShutdownCoordinator()
        coordinator.add("db", Log().stopper("db"))
        coordinator.add("grpc", Log().stopper("grpc"), depends_on=["db"])
        coordinator.install(signals=())

    run(main())
    assert STATE.record()["topology"] == {
        "components": [
            {"name": "db", "depends_on": [], "role": "business"},
            {"name": "grpc", "depends_on": ["db"], "role": "business"},
        ]
    }


def test_sync_stop_functions_are_supported() -> None:
    """A plain function (a sync server's stop) works as a component's stop."""
    stopped: list[str] = []
    coordinator = ShutdownCoordinator(propagation_wait=0, cancel_tasks=False)
    coordinator.add("sync", lambda: stopped.append("sync"))
    assert run(coordinator.shutdown()).ok
    assert stopped == ["sync"]
