"""The Prometheus view of the agent's state: a collector in prometheus_client's sense.

Families are built straight from the state on each scrape (no per-series client objects),
with the state lock held only while copying what is needed. Names are the contract in
``docs/metrics.md``; ``tests/test_contract.py`` keeps code, docs, dashboards and alerts in step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drainwatch._version import __version__
from drainwatch.collectors.sdk_decode import REJECT_REASONS
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .outside_metrics import OutsideTarget

from .channel_series import channel_blocks
from .report_store import DrainReports
from .shutdown_metrics import collect_shutdown
from .state import State


@dataclass(frozen=True, slots=True)
class _ProcessView:
    service: str
    connected: int
    dropped: int
    lost: int


class StateCollector(Collector):
    """Exports channel, request, shutdown and agent self metrics; a scrape never raises on
    odd state. Without ``reports`` it keeps its own drain reports (default budget)."""

    def __init__(
        self,
        state: State,
        reports: DrainReports | None = None,
        outside: Callable[[], OutsideTarget | None] | None = None,
    ) -> None:
        self._state = state
        self._reports = reports if reports is not None else DrainReports(state)
        self._outside = outside

    def collect(self) -> Iterator[Metric]:
        state = self._state
        with state.lock:
            channels = channel_blocks(state)
            processes = [
                _ProcessView(
                    instance.service, int(instance.connected), instance.dropped, instance.lost
                )
                for _, instance in state.instances()
            ]
            processes += [
                _ProcessView(service.name, 0, service.retired_dropped, service.retired_lost)
                for service in state.services.values()
            ]
            datagrams = state.counters.datagrams
            records = state.counters.records
            rejected = dict(state.counters.rejected)
            capped = {**state.caps.counts(), **state.sdk_capped()}
        agent_service = state.default_service
        yield from channels
        yield from collect_shutdown(state, self._reports, self._outside)
        yield from _agent_families(agent_service, processes, datagrams, records, rejected, capped)


def _gauge(name: str, documentation: str, labels: list[str], unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels, unit=unit)


def _agent_families(
    service: str,
    processes: list[_ProcessView],
    datagrams: int,
    records: int,
    rejected: dict[str, int],
    capped: dict[str, int],
) -> Iterator[Metric]:
    build = _gauge("drainwatch_agent_build_info", "The agent's version.", ["service", "version"])
    build.add_metric([service, __version__], 1)
    yield build
    received = CounterMetricFamily(
        "drainwatch_agent_events_received", "SDK records accepted by the agent.", labels=["service"]
    )
    received.add_metric([service], records)
    yield received
    received_datagrams = CounterMetricFamily(
        "drainwatch_agent_datagrams_received",
        "SDK datagrams accepted by the agent.",
        labels=["service"],
    )
    received_datagrams.add_metric([service], datagrams)
    yield received_datagrams
    rejected_family = CounterMetricFamily(
        "drainwatch_agent_events_rejected",
        "Datagrams or records refused, by reason (oversized, malformed, unsupported_version, "
        "schema, unknown_type).",
        labels=["service", "reason"],
    )
    for reason in REJECT_REASONS:
        rejected_family.add_metric([service, reason], rejected.get(reason, 0))
    yield rejected_family
    capped_family = CounterMetricFamily(
        "drainwatch_agent_series_capped",
        "Values folded into 'other' or cut by a cardinality limit, by limit.",
        labels=["service", "limit"],
    )
    for limit, count in sorted(capped.items()):
        capped_family.add_metric([service, limit], count)
    yield capped_family
    per_service: dict[str, list[int]] = {}
    for process in processes:
        totals = per_service.setdefault(process.service, [0, 0, 0])
        totals[0] += process.connected
        totals[1] += process.dropped
        totals[2] += process.lost
    connected = _gauge(
        "drainwatch_sdk_processes",
        "SDK processes of the service connected to the agent now.",
        ["service"],
    )
    dropped = CounterMetricFamily(
        "drainwatch_sdk_events_dropped",
        "Records the SDK could not hand to the kernel (agent absent "
        "or behind), as reported by the SDK.",
        labels=["service"],
    )
    lost = CounterMetricFamily(
        "drainwatch_sdk_datagrams_lost",
        "Datagrams sent by the SDK that never arrived (gaps in their sequence numbers).",
        labels=["service"],
    )
    for name, (alive, drop_count, lost_count) in sorted(per_service.items()):
        connected.add_metric([name], alive)
        dropped.add_metric([name], drop_count)
        lost.add_metric([name], lost_count)
    yield from (connected, dropped, lost)
