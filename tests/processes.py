"""Real processes for tests: a drainwatch agent and instrumented target scripts."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

_LISTENING = re.compile(r"listening on http://(\S+)")
STARTUP_SECONDS = 20.0


_REPO_ROOT = Path(__file__).resolve().parent.parent


def run_bench_tool(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m bench.<module> *args`` from the repository root, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        check=False,
        cwd=_REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def short_tmpdir() -> str:
    """A private directory with a short path: Unix socket paths are limited to 107 bytes."""
    return tempfile.mkdtemp(prefix="dw-", dir="/tmp")


@dataclass
class Samples:
    """Parsed /metrics: ``value(name, **labels)`` and the raw text."""

    text: str

    def all(self, name: str) -> list[tuple[dict[str, str], float]]:
        found = []
        for family in text_string_to_metric_families(self.text):
            for sample in family.samples:
                if sample.name == name:
                    found.append((dict(sample.labels), sample.value))
        return found

    def value(self, name: str, **labels: str) -> float | None:
        for sample_labels, value in self.all(name):
            if all(sample_labels.get(key) == expected for key, expected in labels.items()):
                return value
        return None


def assert_promtool_clean(exposition: str) -> None:
    """``promtool check metrics`` finds nothing to fix in ``exposition``."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: install Debian's 'prometheus' package (.ci/run does)"
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stderr


class AgentProcess:
    """``drainwatch agent`` as a subprocess; stderr goes to a file the test can read."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.directory = short_tmpdir()
        self.socket_path = os.path.join(self.directory, "ingest.sock")
        self.endpoint = f"unix://{self.socket_path}"
        self.log_path = os.path.join(self.directory, "agent.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "drainwatch", "agent", "--listen", "127.0.0.1:0"]
        if not any(arg.startswith("--ingest") for arg in args):
            command += ["--ingest", self.endpoint]
        # A stopping agent waits for its target and for a last scrape; tests that are not
        # about that stop it at once (the tests that are pass their own values).
        for flag in ("--target-exit-wait", "--final-metrics-seconds"):
            if flag not in args:
                command += [flag, "0"]
        self.process = subprocess.Popen(
            [*command, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.url = self._wait_for_listening()

    def _wait_for_listening(self) -> str:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log())
            if match:
                return f"http://{match.group(1)}"
            if self.process.poll() is not None:
                raise RuntimeError(f"agent exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"agent did not start within {STARTUP_SECONDS}s:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def get(self, path: str, accept: str | None = None) -> tuple[int, str, str]:
        request = urllib.request.Request(self.url + path)
        if accept:
            request.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return (
                    response.status,
                    response.headers.get("Content-Type", ""),
                    response.read().decode(),
                )
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Content-Type", ""), error.read().decode()

    def scrape(self) -> Samples:
        status, _, text = self.get("/metrics")
        assert status == 200, text
        return Samples(text)

    def wait_for(self, name: str, count: int = 1, timeout: float = 10.0, **labels: str) -> Samples:
        """Scrape until ``count`` samples of ``name`` with ``labels`` exist."""
        deadline = time.monotonic() + timeout
        while True:
            samples = self.scrape()
            matching = [
                value
                for sample_labels, value in samples.all(name)
                if all(sample_labels.get(k) == v for k, v in labels.items())
            ]
            if len(matching) >= count or time.monotonic() > deadline:
                return samples
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


@contextmanager
def running_agent(*args: str, env: dict[str, str] | None = None) -> Iterator[AgentProcess]:
    agent = AgentProcess(*args, env=env)
    try:
        yield agent
    finally:
        agent.stop()


def _target(
    source: str, endpoint: str, service: str, extra_env: dict[str, str] | None
) -> tuple[list[str], dict[str, str]]:
    """Write ``source`` to a script; return its command line and environment."""
    script = Path(short_tmpdir()) / "target.py"
    script.write_text(textwrap.dedent(source))
    env = {
        **os.environ,
        "DRAINWATCH_ENDPOINT": endpoint,
        "DRAINWATCH_SERVICE": service,
        **(extra_env or {}),
    }
    return [sys.executable, str(script)], env


def run_target(
    source: str,
    endpoint: str,
    *,
    service: str = "checkout",
    timeout: float = 30.0,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a Python script that uses the SDK, reporting to ``endpoint``."""
    command, env = _target(source, endpoint, service, extra_env)
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


@contextmanager
def started_target(
    source: str,
    endpoint: str,
    *,
    service: str = "checkout",
    extra_env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[str]]:
    """Start a target script in the background (stdout piped); killed on exit."""
    command, env = _target(source, endpoint, service, extra_env)
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
