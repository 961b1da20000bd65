"""Figure 4: ``close()`` in a target process until it is visible on the agent's /metrics.

A real agent and a real target process run; for each channel the bench asks the target to
close it, the target answers with the wall-clock time it called ``close()``, and the bench
scrapes /metrics in a tight loop until that channel's closed timestamp appears. The time a
scrape *returns* counts as "seen", so every latency is an upper bound and includes up to
one scrape; the median scrape time is reported next to the figure.

The exposition grows by about 56 lines per channel name and the agent renders roughly
5 µs per line, so one agent holding hundreds of channels would make every scrape, not
the close path, the thing measured. Channels are therefore closed in batches, each
against a fresh agent and target, which keeps a scrape at a few milliseconds.
"""

from __future__ import annotations

import random
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .agent_process import AgentProcess, LineReader, MetricsScraper, running_agent, stop_process
from .figure import Figure
from .measure import percentile

BUDGET_P99_SECONDS = 0.100
_POLL_INTERVAL_SECONDS = 0.002
_SEEN_TIMEOUT_SECONDS = 5.0
_READY_TIMEOUT_SECONDS = 15.0
_REPLY_TIMEOUT_SECONDS = 5.0
# A random pause between closes, so they do not fall into step with the SDK's
# periodic snapshot or the agent's own timers.
_PAUSE_SECONDS = (0.005, 0.025)
_REPO_ROOT = Path(__file__).resolve().parent.parent


def _closed_series(index: int) -> re.Pattern[str]:
    return re.compile(
        rf'^drainwatch_channel_closed_timestamp_seconds\{{[^}}]*channel="c{index}"[,}}]',
        re.MULTILINE,
    )


def _created_series(index: int) -> re.Pattern[str]:
    return re.compile(
        rf'^drainwatch_channel_created_timestamp_seconds\{{[^}}]*channel="c{index}"[,}}]',
        re.MULTILINE,
    )


@dataclass
class _Observed:
    """What the bench saw over one or more batches."""

    latencies: list[float] = field(default_factory=list)
    scrape_seconds: list[float] = field(default_factory=list)
    first_scrape: int = 0  # closes already visible on the first scrape after the close
    missed: int = 0


class _Poll:
    """Scrapes until a series appears; records every scrape's duration."""

    def __init__(self, scraper: MetricsScraper, observed: _Observed) -> None:
        self._scraper = scraper
        self._observed = observed

    def until(self, series: re.Pattern[str], timeout: float) -> tuple[float, int] | None:
        """(wall-clock time of the first scrape showing ``series``, scrapes it took);
        None after ``timeout``."""
        deadline = time.monotonic() + timeout
        attempts = 0
        while True:
            started = time.perf_counter()
            body = self._scraper.scrape()
            seen = time.time()
            attempts += 1
            self._observed.scrape_seconds.append(time.perf_counter() - started)
            if series.search(body):
                return seen, attempts
            if time.monotonic() >= deadline:
                return None
            time.sleep(_POLL_INTERVAL_SECONDS)


def _start_target(agent: AgentProcess, channels: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.close_target", agent.ingest, str(channels)],
        cwd=_REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _close_in_target(target: subprocess.Popen[str], replies: LineReader, index: int) -> float:
    if target.stdin is None:  # pragma: no cover - stdin=PIPE always sets it
        raise RuntimeError("the target's stdin pipe is missing")
    target.stdin.write(f"{index}\n")
    target.stdin.flush()
    reply = replies.next_line(_REPLY_TIMEOUT_SECONDS)
    if reply is None:
        raise RuntimeError(f"the target did not confirm closing c{index}: {replies.tail()}")
    answered, closed_at = reply.split()
    if int(answered) != index:
        raise RuntimeError(f"the target closed c{answered}, expected c{index}")
    return float(closed_at)


def _measure(agent: AgentProcess, channels: int, observed: _Observed) -> None:
    target = _start_target(agent, channels)
    scraper = MetricsScraper(agent)
    try:
        if target.stdout is None:  # pragma: no cover - stdout=PIPE always sets it
            raise RuntimeError("the target's stdout pipe is missing")
        replies = LineReader(target.stdout, "target-stdout")
        if replies.next_line(_READY_TIMEOUT_SECONDS) != "ready\n":
            raise RuntimeError(f"the target did not start: {replies.tail()}")
        if (
            _Poll(scraper, _Observed()).until(_created_series(channels - 1), _SEEN_TIMEOUT_SECONDS)
            is None
        ):
            raise RuntimeError("the agent never showed the target's channels")
        poll = _Poll(scraper, observed)
        for index in range(channels):
            time.sleep(random.uniform(*_PAUSE_SECONDS))
            closed_at = _close_in_target(target, replies, index)
            seen = poll.until(_closed_series(index), _SEEN_TIMEOUT_SECONDS)
            if seen is None:
                observed.missed += 1
                observed.latencies.append(_SEEN_TIMEOUT_SECONDS)
                continue
            seen_at, attempts = seen
            observed.latencies.append(seen_at - closed_at)
            observed.first_scrape += attempts == 1
    finally:
        scraper.close()
        if target.stdin is not None:
            target.stdin.close()
        stop_process(target)


def close_latency(batches: int, per_batch: int = 5) -> Figure:
    """Close ``per_batch`` channels one at a time in each of ``batches`` fresh agent/target
    pairs; p50/p99 of close-to-/metrics latency."""
    observed = _Observed()
    for _ in range(batches):
        with running_agent() as agent:
            _measure(agent, per_batch, observed)
    latencies = observed.latencies
    channels = len(latencies)
    p50 = percentile(latencies, 0.50)
    p99 = percentile(latencies, 0.99)
    note = (
        f"{channels} closes in {batches} batches, each with a real agent and target process "
        f"and {per_batch} channels; /metrics polled every "
        f"{_POLL_INTERVAL_SECONDS * 1000:.0f} ms; each latency is an upper bound including up "
        f"to one scrape (median scrape {statistics.median(observed.scrape_seconds) * 1000:.1f} "
        f"ms); {observed.first_scrape} of {channels} closes were already visible on the first "
        "scrape after the target confirmed the close"
    )
    if observed.missed:
        note += f"; {observed.missed} close(s) never seen within {_SEEN_TIMEOUT_SECONDS:.0f} s"
    return Figure(
        name="close() to agent /metrics latency",
        baseline="-",
        candidate=(
            f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
        ),
        ratio="-",
        spread=f"n={channels}",
        budget=f"p99 ≤ {BUDGET_P99_SECONDS * 1000:.0f} ms",
        meets=not observed.missed and p99 <= BUDGET_P99_SECONDS,
        note=note,
    )
