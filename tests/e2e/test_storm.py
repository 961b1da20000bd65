"""A cardinality storm against a real agent: series and memory stay bounded, and counted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.agent_process import AgentProcess as BenchAgent
from bench.agent_process import MetricsScraper
from bench.storm import UNIQUE_NAMES, capped_counts, footprint, send_storm, wait_until_applied
from tests.processes import Samples, run_target, running_agent, short_tmpdir

pytestmark = pytest.mark.e2e

# Small limits keep the test's scrapes quick; the bounds scale with them (the figures for
# the default limits are in docs/reliability.md, from python -m bench.storm).
LIMITS = """
limits:
  max_services: 20
  max_channels_per_service: 200
  max_channels_total: 500
  max_instances_per_service: 16
  max_channel_objects_per_instance: 1000
  max_methods_per_instance: 100
  max_methods_total: 200
  max_label_length: 64
"""
# At most 500 + 21 "other" channel names x 49 series (11 plain, 2 x 19 per op), 200 + 21
# method names x 23 series, and a few hundred per service and for the agent itself.
MAX_SERIES = 521 * 49 + 221 * 23 + 21 * 200 + 500


@pytest.mark.timeout(300)
def test_a_storm_of_20000_unique_names_keeps_series_and_memory_bounded() -> None:
    """20,000 new names in every dimension fold into "other", counted by limit; a second
    storm as large, of fresh names, adds no series and less than half the memory the first
    one took (allocator noise, not state: unbounded state would take as much again)."""
    config = Path(short_tmpdir()) / "agent.yaml"
    config.write_text(LIMITS)
    with running_agent("--config", str(config)) as agent:
        host, port = agent.url.removeprefix("http://").rsplit(":", 1)
        scraper = MetricsScraper(
            BenchAgent(host, int(port), agent.endpoint, agent.directory), timeout=60
        )
        baseline, _ = footprint(scraper, agent.process.pid)
        _, records = send_storm(agent.socket_path)
        text = wait_until_applied(scraper, records)
        first, _ = footprint(scraper, agent.process.pid)
        _, more = send_storm(agent.socket_path, unique=UNIQUE_NAMES, prefix="again")
        text = wait_until_applied(scraper, records + more)
        second, _ = footprint(scraper, agent.process.pid)
        status, _, _ = agent.get("/healthz")
        scraper.close()
    samples = Samples(text)
    assert status == 200
    assert sum(value for _, value in samples.all("drainwatch_agent_events_rejected_total")) == 0
    assert samples.value("drainwatch_agent_events_received_total") == records + more
    assert first.series <= MAX_SERIES, first
    assert first.longest_label <= 64
    assert second.series <= first.series + 50, (first, second)
    assert second.rss_bytes - first.rss_bytes < (first.rss_bytes - baseline.rss_bytes) / 2, (
        baseline,
        first,
        second,
    )
    capped = capped_counts(text)
    for limit in (
        "services",
        "channels",
        "channels_total",
        "instances",
        "channel_objects",
        "methods",
        "methods_total",
        "label_length",
    ):
        assert capped[limit] > 0, (limit, capped)


def test_the_sdks_own_caps_reach_the_agents_capped_counter() -> None:
    """A name the SDK cuts (over 200 characters) is counted by the SDK and exported by the
    agent as limit="sdk_name_length"."""
    source = """
import drainwatch
channel = drainwatch.Channel("x" * 300)
channel.close()
drainwatch.flush(timeout=2)
"""
    with running_agent() as agent:
        result = run_target(source, agent.endpoint, service="long-names")
        assert result.returncode == 0, result.stderr
        samples = agent.wait_for(
            "drainwatch_agent_series_capped_total", limit="sdk_name_length", timeout=10
        )
    assert samples.value("drainwatch_agent_series_capped_total", limit="sdk_name_length") == 1


MANY_THREADS = """
import queue, sys, threading
jobs = queue.Queue()
for index in range(60):
    name = f"worker-{index:02d}-" + "n" * 200
    threading.Thread(target=jobs.get, name=name, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
"""


def test_blocked_threads_are_capped_at_50_series_with_labels_cut_and_counted() -> None:
    """A target with 60 stuck threads named with 200+ characters: py-spy sees them all, the
    agent exports the 50 longest waits, cuts the names to the label limit and counts both."""
    script = Path(short_tmpdir()) / "threads.py"
    script.write_text(MANY_THREADS)
    target = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert target.stdout is not None and target.stdout.readline().strip() == "ready"
        with running_agent("--target-pid", str(target.pid), "--pyspy-interval", "0.3") as agent:
            samples = agent.wait_for("drainwatch_thread_blocked_seconds", count=50, timeout=30)
            capped = agent.wait_for(
                "drainwatch_agent_series_capped_total", limit="threads", timeout=10
            )
    finally:
        target.kill()
        target.wait(10)
        for stream in (target.stdin, target.stdout):
            if stream is not None:
                stream.close()
    threads = [labels["thread"] for labels, _ in samples.all("drainwatch_thread_blocked_seconds")]
    assert len(threads) == 50
    assert all(len(name) <= 128 and name.startswith("worker-") for name in threads)
    assert (capped.value("drainwatch_agent_series_capped_total", limit="threads") or 0) >= 10
    assert (capped.value("drainwatch_agent_series_capped_total", limit="label_length") or 0) >= 50
