"""Helpers shared by the integration tests: bounded loops and a fresh registry per test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import drainwatch
import pytest
from drainwatch import _inflight, _runtime, _shutdown

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """Run ``coro`` in a fresh event loop; raise ``TimeoutError`` after ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Yield to the loop until ``condition`` holds; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[_inflight.InflightRegistry]:
    """A fresh in-flight registry and shutdown state, and a reporter that sends nothing."""
    drainwatch.configure(enabled=False)
    _shutdown.STATE.reset()
    fresh = _inflight.InflightRegistry()
    monkeypatch.setattr(_inflight, "REGISTRY", fresh)
    monkeypatch.delenv("DRAINWATCH_HEALTH_PORTS", raising=False)
    yield fresh
    _shutdown.STATE.reset()
    _runtime.shutdown()


def outcomes(registry: _inflight.InflightRegistry) -> dict[tuple[str, str], dict[str, int]]:
    """Non-zero outcomes per (protocol, method)."""
    return {
        (record["protocol"], record["method"]): {
            name: count for name, count in record["outcomes"].items() if count
        }
        for record in registry.records()
    }


def active(registry: _inflight.InflightRegistry, protocol: str, method: str) -> int:
    return registry.stats(protocol, method).active
