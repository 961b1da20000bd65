"""A real Prometheus server (Debian's ``prometheus``) on loopback, for end-to-end tests.

It scrapes the given targets and evaluates the given rule files every 200 ms. Sample
timestamps are Prometheus' wall clock at the start of each scrape: the same clock as
``time.time()`` in the tests, which is what lets them order scrapes and process exits.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml
from drainwatch.agent.loadgen import free_port

PROMETHEUS = shutil.which("prometheus")
JOB = "drainwatch"
# Prometheus hands new targets to its scrape loops on a 5 s tick, so the first scrape comes
# late; the machine may be busy too.
STARTUP_SECONDS = 20.0

T = TypeVar("T")
Labels = dict[str, str]


def poll(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T:
    """Call ``check`` until it returns something other than None; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


class PrometheusServer:
    """``prometheus`` on a free loopback port. ``targets`` maps each scrape address to the
    target labels it gets (job ``drainwatch``)."""

    def __init__(
        self,
        binary: str,
        directory: Path,
        targets: Mapping[str, Labels],
        rule_files: Sequence[Path] = (),
    ) -> None:
        config = {
            # A scrape that takes longer than the interval fails rather than overlapping.
            "global": {
                "scrape_interval": "200ms",
                "scrape_timeout": "200ms",
                "evaluation_interval": "200ms",
            },
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "static_configs": [
                        {"targets": [address], "labels": labels}
                        for address, labels in targets.items()
                    ],
                }
            ],
        }
        config_path = directory / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = directory / "prometheus.log"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={directory / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    # Only what went wrong, so that the log fits in a failure's notes.
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def wait_ready(self) -> None:
        def ready() -> bool | None:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited at start:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    return True if response.status == 200 else None
            except OSError:
                return None

        poll("prometheus /-/ready", ready, STARTUP_SECONDS)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{url}: HTTP {error.code}: {error.read().decode()}") from error
        assert answer["status"] == "success", answer
        return answer["data"]

    def target_health(self) -> str | None:
        """The health of the first ``drainwatch`` target, once Prometheus has scraped it."""
        targets = self.api("targets", state="active")["activeTargets"]
        return next((t["health"] for t in targets if t["labels"]["job"] == JOB), None)

    def vector(self, expr: str, at: float | None = None) -> list[tuple[Labels, float]]:
        """An instant query, evaluated at ``at`` (Unix seconds) or now."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        assert data["resultType"] == "vector", data
        return [(row["metric"], float(row["value"][1])) for row in data["result"]]

    def value(self, expr: str, at: float) -> float:
        """The single value of ``expr`` at ``at``; fails when there is none or several."""
        rows = self.vector(expr, at)
        assert len(rows) == 1, f"{expr} @ {at:.3f}: {rows}"
        return rows[0][1]

    def samples(self, selector: str, at: float, window: str = "5m") -> list[tuple[float, float]]:
        """The raw (timestamp, value) samples of one series scraped in ``window`` before ``at``.

        A range selector leaves out the staleness markers a failed scrape writes.
        """
        data = self.api("query", query=f"{selector}[{window}]", time=f"{at:.3f}")
        assert data["resultType"] == "matrix", data
        assert len(data["result"]) == 1, f"{selector}: {data['result']}"
        return [(float(ts), float(value)) for ts, value in data["result"][0]["values"]]

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert pending or firing now."""
        found: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return found


@contextmanager
def running_prometheus(
    directory: Path, targets: Mapping[str, Labels], rule_files: Sequence[Path] = ()
) -> Iterator[PrometheusServer]:
    """A ready ``PrometheusServer``, stopped on exit; its log is added to a failure's notes."""
    if PROMETHEUS is None:
        raise AssertionError("prometheus is missing: install Debian's 'prometheus' package")
    server = PrometheusServer(PROMETHEUS, directory, targets, rule_files)
    try:
        server.wait_ready()
        yield server
    except AssertionError as error:
        if log := server.log().strip():
            error.add_note(f"prometheus log:\n{log}")
        raise
    finally:
        server.stop()
