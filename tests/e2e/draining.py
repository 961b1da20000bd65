"""Helpers of the fault tests: polling, drain reports, and a target whose drain lasts as
long as the test wants."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tests.processes import AgentProcess, short_tmpdir

T = TypeVar("T")

HEALTHY = """
import drainwatch
ch = drainwatch.Channel("steady")
ch.put_nowait(1)
ch.close()
drainwatch.flush(timeout=2)
"""


def until(check: Callable[[], T | bool | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(0.05)


def reports(agent: AgentProcess, service: str) -> list[dict[str, Any]]:
    status, _, body = agent.get(f"/api/v1/report?service={service}&all=1")
    assert status == 200, body
    reports: list[dict[str, Any]] = json.loads(body)["reports"]
    return reports


class DrainingTarget:
    """A service under ``drainwatch run`` that, on SIGTERM, starts draining and finishes only
    when told to (a line on stdin): its drain can be made to span whatever the test does."""

    SOURCE = """
        import signal, sys, threading, drainwatch
        jobs = drainwatch.Channel("jobs")
        jobs.put_nowait(1)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        print("ready", flush=True)
        stop.wait()
        print("draining", flush=True)
        sys.stdin.readline()
        jobs.get_nowait()
        jobs.close()
        print("exiting", flush=True)
    """

    def __init__(self, endpoint: str, service: str, source: str | None = None) -> None:
        script = Path(short_tmpdir()) / "target.py"
        script.write_text(textwrap.dedent(source or self.SOURCE))
        command = [sys.executable, "-m", "drainwatch", "run", "--service", service, "--"]
        self.process = subprocess.Popen(
            [*command, sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DRAINWATCH_ENDPOINT": endpoint},
        )

    def expect(self, line: str) -> None:
        assert self.process.stdout is not None and self.process.stderr is not None
        got = self.process.stdout.readline().strip()
        assert got == line, (got, self.process.stderr.read() if got == "" else "")

    def tell(self, line: str = "go") -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def draining_target(endpoint: str, service: str, source: str | None = None) -> Iterator[Any]:
    target = DrainingTarget(endpoint, service, source)
    try:
        yield target
    finally:
        target.close()
