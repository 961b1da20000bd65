"""``drainwatch_agent_ingest_socket_*``: what the watch over the ingest socket paths did."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from drainwatch.collectors.ingest_watch import RESTORE_REASONS
from drainwatch.collectors.sdk_ingest import Ingest, UnixIngest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class IngestCollector(Collector):
    """Per Unix ingest path: restorations by reason, and whether another process holds it.
    A scrape never raises; UDP endpoints have no path and export nothing here."""

    def __init__(self, ingests: Callable[[], Sequence[Ingest]], service: str) -> None:
        self._ingests = ingests
        self._service = service

    def collect(self) -> Iterator[Metric]:
        restored = CounterMetricFamily(
            "drainwatch_agent_ingest_socket_restored",
            "Times the ingest socket's path was found deleted or replaced and the agent "
            "listened there again, by reason (deleted, replaced).",
            labels=["service", "path", "reason"],
        )
        taken = GaugeMetricFamily(
            "drainwatch_agent_ingest_socket_taken",
            "1 while another process listens on the ingest socket's path (new SDK processes "
            "report there, not to this agent).",
            labels=["service", "path"],
        )
        for ingest in self._ingests():
            if not isinstance(ingest, UnixIngest):
                continue
            stats = ingest.watch_stats
            path = ingest.endpoint.path
            for reason in RESTORE_REASONS:
                restored.add_metric([self._service, path, reason], stats.restored[reason])
            taken.add_metric([self._service, path], int(stats.taken))
        yield from (restored, taken)
