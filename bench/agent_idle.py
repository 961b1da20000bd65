"""The agent's own cost while it watches an idle service from outside.

A target process without the SDK (``bench.idle_target``: idle threads and a health
endpoint) and a real agent watching it by PID with the production settings of the outside
view: its processes and sockets sampled every 50 ms, a py-spy dump every 5 s, an HTTP
liveness probe every 2 s. After a settling period the bench reads the agent's CPU time
(its own threads, and the py-spy processes it ran, once reaped) over ``window`` seconds
and its resident memory at the end. No budget: a figure for sizing the sidecar.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from .agent_process import LineReader, MetricsScraper, running_agent, stop_process
from .figure import Figure

SAMPLE_INTERVAL_SECONDS = 0.05
PYSPY_INTERVAL_SECONDS = 5.0
PROBE_INTERVAL_SECONDS = 2.0
SETTLE_SECONDS = 6.0
_READY_TIMEOUT_SECONDS = 15.0
_REPO_ROOT = Path(__file__).resolve().parent.parent


def _cpu(process: psutil.Process) -> tuple[float, float]:
    """(the process's own CPU seconds, its reaped children's)."""
    times = process.cpu_times()
    return times.user + times.system, times.children_user + times.children_system


def _watched(page: str) -> tuple[float, bool]:
    """(py-spy dumps that succeeded, whether the last liveness probe did) from /metrics."""
    dumps = 0.0
    probe_up = False
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == "drainwatch_pyspy_samples_total" and sample.labels["result"] == "ok":
                dumps += sample.value
            elif sample.name == "drainwatch_probe_success":
                probe_up = probe_up or sample.value == 1
    return dumps, probe_up


def agent_idle(window: float, settle: float = SETTLE_SECONDS) -> Figure:
    target = subprocess.Popen(
        [sys.executable, "-m", "bench.idle_target"],
        cwd=_REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if target.stdout is None:  # pragma: no cover - stdout=PIPE always sets it
            raise RuntimeError("the target's stdout pipe is missing")
        line = LineReader(target.stdout, "idle-target").next_line(_READY_TIMEOUT_SECONDS)
        if line is None or not line.startswith("ready "):
            raise RuntimeError(f"the idle target did not start: {line!r}")
        port = int(line.split()[1])
        arguments = [
            "--target-pid",
            str(target.pid),
            "--sample-interval",
            str(SAMPLE_INTERVAL_SECONDS),
            "--pyspy",
            "--pyspy-interval",
            str(PYSPY_INTERVAL_SECONDS),
            "--probe-http",
            f"liveness=http://127.0.0.1:{port}/healthz",
            "--probe-interval",
            str(PROBE_INTERVAL_SECONDS),
            # stopped before its target: no waiting for the target to exit
            "--target-exit-wait",
            "0",
        ]
        with running_agent(arguments) as agent:
            process = psutil.Process(agent.pid)
            time.sleep(settle)
            own_before, children_before = _cpu(process)
            started = time.perf_counter()
            time.sleep(window)
            elapsed = time.perf_counter() - started
            own_after, children_after = _cpu(process)
            rss = process.memory_info().rss
            scraper = MetricsScraper(agent)
            try:
                page = scraper.scrape()
            finally:
                scraper.close()
    finally:
        if target.stdin is not None:
            target.stdin.close()
        stop_process(target)
    own = (own_after - own_before) / elapsed * 100
    children = (children_after - children_before) / elapsed * 100
    dumps, probe_up = _watched(page)
    return Figure(
        name="Agent idle, one target watched from outside",
        baseline="-",
        candidate=(
            f"{own + children:.2f} % of a core ({own:.2f} % the agent, {children:.2f} % "
            f"py-spy); RSS {rss / 2**20:.0f} MiB"
        ),
        ratio="-",
        spread=f"{window:g} s window",
        budget="a figure: for sizing",
        meets=True,
        note=(
            f"a real agent watching an idle target without the SDK (4 idle threads, a "
            f"health endpoint) by PID: processes and sockets sampled every "
            f"{SAMPLE_INTERVAL_SECONDS * 1000:.0f} ms, py-spy dump every "
            f"{PYSPY_INTERVAL_SECONDS:g} s, HTTP liveness probe every "
            f"{PROBE_INTERVAL_SECONDS:g} s; CPU over {window:g} s after {settle:g} s "
            f"of settling, the agent's threads and the py-spy processes it ran; {dumps:.0f} "
            f"py-spy dumps succeeded in all, the liveness probe "
            + ("succeeded" if probe_up else "did not succeed")
        ),
    )
