"""Prometheus export of the health probes: ``drainwatch_probe_*`` (see docs/metrics.md).

``ProbeCollector`` reads ``ProbeRunner.snapshot()`` (:mod:`drainwatch.collectors.probes`),
which copies the probes' state under the runner's lock, so a scrape never waits for a check
and never raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    # Only for the annotation: probes imports this module to offer ProbeCollector too.
    from .probes import ProbeRunner


class ProbeCollector(Collector):
    """Exports the probe families for one ``service``; a scrape never raises."""

    def __init__(self, runner: ProbeRunner, service: str | Callable[[], str]) -> None:
        self._runner = runner
        self._service = service

    def collect(self) -> Iterator[Metric]:
        service = self._service() if callable(self._service) else self._service
        labels = ["service", "probe"]
        success = GaugeMetricFamily(
            "drainwatch_probe_success",
            "Last probe result from the agent: 1 up, 0 failing (absent before the first check).",
            labels=labels,
        )
        changed = GaugeMetricFamily(
            "drainwatch_probe_last_change_timestamp_seconds",
            "When the probe's result last changed (the first result counts as a change).",
            labels=labels,
        )
        failing = GaugeMetricFamily(
            "drainwatch_probe_consecutive_failures",
            "Failed checks in a row (0 when the last check succeeded).",
            labels=labels,
        )
        duration = GaugeMetricFamily(
            "drainwatch_probe_duration_seconds", "How long the last check took.", labels=labels
        )
        checks = CounterMetricFamily(
            "drainwatch_probe_checks",
            "Checks made, by result (success or failure).",
            labels=[*labels, "result"],
        )
        flips = CounterMetricFamily(
            "drainwatch_probe_transitions",
            "Times the probe's result changed, the first result included.",
            labels=labels,
        )
        for status in self._runner.snapshot():
            key = [service, status.name]
            checks.add_metric([*key, "success"], status.checks - status.failures)
            checks.add_metric([*key, "failure"], status.failures)
            flips.add_metric(key, status.transitions_total)
            if status.ok is None:
                continue
            success.add_metric(key, 1.0 if status.ok else 0.0)
            failing.add_metric(key, status.consecutive_failures)
            if status.last_change is not None:
                changed.add_metric(key, status.last_change)
            if status.last_duration is not None:
                duration.add_metric(key, status.last_duration)
        yield from (success, changed, failing, duration, checks, flips)
