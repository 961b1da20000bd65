"""Helpers shared by the integration tests: bounded loops and a fresh registry per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import drainwatch
import pytest
from drainwatch import _inflight, _runtime, _shutdown

from tests.aio import run, until

__all__ = ["active", "outcomes", "registry", "run", "until"]

T = TypeVar("T")


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
    """Requests in flight under (protocol, method), as the records say: those counted from
    their start, and those an integration labels when they end."""
    for record in registry.records():
        if (record["protocol"], record["method"]) == (protocol, method):
            return int(record["active"])
    return 0
