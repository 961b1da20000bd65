"""Fixtures for agent tests that drive the SDK's real shutdown classes on a fake clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from drainwatch import _shutdown

from tests.agent.shutdowns import FakeTime, SdkProcess


@pytest.fixture
def clock() -> FakeTime:
    """One fake clock for the SDK's shutdown timestamps and the agent's wall clock."""
    return FakeTime()


@pytest.fixture
def spawn(monkeypatch: pytest.MonkeyPatch, clock: FakeTime) -> Callable[[], SdkProcess]:
    """Start a simulated SDK process; the latest one is the process-wide ``STATE`` (which
    the in-flight registry consults), and nothing is sent to a real agent."""
    monkeypatch.setattr(_shutdown, "steady_time", clock)
    monkeypatch.setattr(_shutdown, "_emit", lambda: None)

    def new() -> SdkProcess:
        process = SdkProcess(clock)
        monkeypatch.setattr(_shutdown, "STATE", process.state)
        return process

    return new


@pytest.fixture
def sdk(spawn: Callable[[], SdkProcess]) -> SdkProcess:
    """One simulated SDK process."""
    return spawn()
