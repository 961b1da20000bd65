"""The Prometheus view of the agent's state: a collector in prometheus_client's sense.

Families are built straight from the state on each scrape (no per-series client objects),
with the state lock held only while copying what is needed. Names are the contract in
``docs/metrics.md``; ``tests/test_contract.py`` keeps code, docs, dashboards and alerts in step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drainwatch._histogram import WAIT_BUCKETS
from drainwatch._version import __version__
from drainwatch.collectors.sdk_decode import REJECT_REASONS
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .outside_metrics import OutsideTarget

from .channel_summary import ChannelSummary, summarize
from .report_store import DrainReports
from .shutdown_metrics import collect_shutdown
from .state import _OPS, State

_CHANNEL_COUNTERS = (
    ("sent", "drainwatch_channel_sent", "Items put into the channel."),
    ("received", "drainwatch_channel_received", "Items got from the channel."),
    (
        "discarded",
        "drainwatch_channel_discarded",
        "Items dropped by an immediate close (close(immediate=True)).",
    ),
    (
        "read_after_close",
        "drainwatch_channel_read_after_close",
        "Receives attempted on a closed, empty channel (a get that raised ChannelClosed).",
    ),
    (
        "send_after_close",
        "drainwatch_channel_send_after_close",
        "Sends attempted on a closed channel, including puts woken by the close.",
    ),
    (
        "double_close",
        "drainwatch_channel_double_close",
        "close() called on an already closed channel.",
    ),
)
_BUCKET_BOUNDS = [f"{bound:g}" for bound in WAIT_BUCKETS] + ["+Inf"]


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
            summaries = [s for service in state.services.values() for s in summarize(service)]
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
        yield from _channel_families(summaries)
        yield from collect_shutdown(state, self._reports, self._outside)
        yield from _agent_families(agent_service, processes, datagrams, records, rejected, capped)


def _gauge(name: str, documentation: str, labels: list[str], unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels, unit=unit)


def _channel_families(summaries: list[ChannelSummary]) -> Iterator[Metric]:
    labels = ["service", "channel"]
    op_labels = ["service", "channel", "op"]
    created = _gauge(
        "drainwatch_channel_created_timestamp_seconds",
        "When the channel was created (Unix seconds).",
        labels,
    )
    closed = _gauge(
        "drainwatch_channel_closed_timestamp_seconds",
        "When the channel was closed (Unix seconds); absent while open.",
        labels,
    )
    drained = _gauge(
        "drainwatch_channel_drained_timestamp_seconds",
        "When a closed channel became empty (Unix seconds).",
        labels,
    )
    residual = _gauge(
        "drainwatch_channel_residual_items_at_close",
        "Items still buffered at the moment of close (the drain check).",
        labels,
    )
    depth = _gauge("drainwatch_channel_depth", "Items buffered now.", labels)
    capacity = _gauge(
        "drainwatch_channel_capacity", "maxsize of the channel (0 = unbounded).", labels
    )
    health = _gauge(
        "drainwatch_channel_health_score",
        "0..100 from close state, after-close use and blocked time (formula in docs/metrics.md).",
        labels,
    )
    objects = _gauge(
        "drainwatch_channel_objects",
        "Live channel objects reporting under this name (workers, restarts).",
        labels,
    )
    waiters = _gauge(
        "drainwatch_channel_blocked_waiters",
        "Tasks or threads blocked on the channel now.",
        op_labels,
    )
    oldest = _gauge(
        "drainwatch_channel_oldest_wait_seconds",
        "How long the longest current waiter has waited.",
        op_labels,
    )
    counters = {
        key: CounterMetricFamily(name, text, labels=labels) for key, name, text in _CHANNEL_COUNTERS
    }
    waits = HistogramMetricFamily(
        "drainwatch_channel_wait_seconds",
        "Completed waits in put (op=send) and get (op=receive).",
        labels=op_labels,
    )
    for summary in summaries:
        values = [summary.service, summary.name]
        if summary.created is not None:
            created.add_metric(values, summary.created)
        if summary.closed is not None:
            closed.add_metric(values, summary.closed)
        if summary.drained is not None:
            drained.add_metric(values, summary.drained)
        if summary.residual is not None:
            residual.add_metric(values, summary.residual)
        depth.add_metric(values, summary.depth)
        capacity.add_metric(values, summary.capacity)
        health.add_metric(values, summary.health_score)
        objects.add_metric(values, summary.objects)
        for key, family in counters.items():
            family.add_metric(values, summary.counters[key])
        for op in _OPS:
            op_values = [*values, op]
            waiters.add_metric(op_values, summary.waiters[op])
            oldest.add_metric(op_values, summary.oldest_wait[op])
            histogram = summary.wait[op]
            cumulative = 0.0
            buckets = []
            for bound, count in zip(_BUCKET_BOUNDS, histogram[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            waits.add_metric(op_values, buckets, histogram[-1])
    yield from (
        created,
        closed,
        drained,
        residual,
        depth,
        capacity,
        *counters.values(),
        waiters,
        oldest,
        waits,
        health,
        objects,
    )


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
