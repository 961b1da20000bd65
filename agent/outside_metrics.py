"""Prometheus families of the outside view: the target's processes and sockets, py-spy.

The listener and target families (``drainwatch_listener_up``, ``..._closed_timestamp_seconds``,
``drainwatch_target_up``, ``drainwatch_target_exit_timestamp_seconds``) are shared with the
SDK's view and merged in ``shutdown_metrics``; ``outside_listeners`` gives that merge what
the socket timeline knows. Everything else of the outside view is exported here. The
``service`` label is the service of the target's newest lifetime (the SDK's name when the
target runs the SDK, else the agent's ``service`` setting).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from drainwatch.collectors.port_timeline import TCP_CONNECTIONS, contract_metrics
from drainwatch.collectors.pyspy import RESULTS
from drainwatch.collectors.pyspy_sampler import SKIPPED_BUSY, SKIPPED_RATE
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .outside import OutsideSnapshot, OutsideView
from .series_caps import SeriesCaps, cut
from .task_metrics import BlockedThread

_MAX_THREADS: Final = 50


@dataclass(frozen=True, slots=True)
class OutsideListener:
    port: str
    role: str
    up: bool
    closed: float | None


@dataclass(frozen=True, slots=True)
class OutsideTarget:
    """What the socket timeline says of one service, for the merge with the SDK's view."""

    service: str
    up: bool
    exited: float | None
    listeners: tuple[OutsideListener, ...]


def service_of(snap: OutsideSnapshot, default: str) -> str:
    return snap.generations[-1].service if snap.generations else default


def outside_target(view: OutsideView, default_service: str) -> OutsideTarget | None:
    """None until the outside view has sampled a target."""
    snap = view.snapshot()
    timeline = snap.timeline
    if not timeline.samples:
        return None
    listeners = tuple(
        OutsideListener(str(item.port), item.role, item.up, item.closed_at)
        for item in timeline.listeners()
    )
    exited = timeline.target_exit.started if timeline.target_exit is not None else None
    return OutsideTarget(service_of(snap, default_service), timeline.target_up, exited, listeners)


class OutsideCollector(Collector):
    """Exports the outside view but its blocked threads (``PySpyBlockedThreads`` hands those
    to the task collector); a scrape never raises on odd data."""

    def __init__(self, view: OutsideView, default_service: str) -> None:
        self._view = view
        self._default = default_service

    def collect(self) -> Iterator[Metric]:
        snap = self._view.snapshot()
        service = service_of(snap, self._default)
        yield from _process_families(snap, service)
        yield from _pyspy_families(snap, service)


class PySpyBlockedThreads:
    """The threads py-spy last found waiting, longest first (at most ``_MAX_THREADS``), for
    ``drainwatch_thread_blocked_seconds{source="pyspy"}`` (exported with the SDK's threads by
    ``task_metrics.TaskCollector``); None until a sampler runs.

    With ``caps``, the waiting threads beyond the top ``_MAX_THREADS`` and the thread names
    longer than the label limit are counted there (``threads``, ``label_length``), once per
    dump however often it is scraped.
    """

    def __init__(
        self, view: OutsideView, default_service: str, caps: SeriesCaps | None = None
    ) -> None:
        self._view = view
        self._default = default_service
        self._caps = caps
        self._counted_dump: float | None = None

    def __call__(self) -> tuple[str, list[BlockedThread]] | None:
        snap = self._view.snapshot()
        sampler = snap.sampler
        if sampler is None:
            return None
        label_limit = self._caps.max_label_length if self._caps is not None else 128
        waiting = sorted(
            (thread for thread in sampler.threads if thread.waiting),
            key=lambda thread: -thread.blocked_seconds,
        )
        threads: list[BlockedThread] = []
        cut_labels = 0
        for thread in waiting[:_MAX_THREADS]:
            label = cut(thread.label, label_limit)
            cut_labels += label != thread.label
            threads.append(BlockedThread(label, thread.reason, thread.blocked_seconds))
        dump = sampler.last_sample_at
        if self._caps is not None and dump is not None and dump != self._counted_dump:
            self._counted_dump = dump
            self._caps.count("threads", max(0, len(waiting) - _MAX_THREADS))
            self._caps.count("label_length", cut_labels)
        return service_of(snap, self._default), threads


def _gauge(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, labels=labels)


def _process_families(snap: OutsideSnapshot, service: str) -> Iterator[Metric]:
    connections = _gauge(
        TCP_CONNECTIONS,
        "The target's TCP connections per local port and state (from the kernel's socket "
        'table; port "other" folds ports beyond the cap).',
        ["service", "port", "state"],
    )
    for metric in contract_metrics(snap.timeline):
        if metric.name == TCP_CONNECTIONS:
            connections.add_metric([service, *(value for _, value in metric.labels)], metric.value)
    processes = _gauge(
        "drainwatch_target_processes",
        "Target processes alive (a service with workers has several).",
        ["service"],
    )
    cpu = CounterMetricFamily(
        "drainwatch_target_cpu_seconds",
        "CPU time (user + system) of the target's live processes.",
        labels=["service"],
    )
    memory = _gauge(
        "drainwatch_target_resident_memory_bytes",
        "Resident memory of the target's live processes.",
        ["service"],
    )
    threads = _gauge(
        "drainwatch_target_threads", "OS threads of the target's live processes.", ["service"]
    )
    fds = _gauge(
        "drainwatch_target_open_fds",
        "Open file descriptors of the target's live processes.",
        ["service"],
    )
    restarts = CounterMetricFamily(
        "drainwatch_target_restarts",
        "Times the target was found again under a new process after it had gone.",
        labels=["service"],
    )
    samples = CounterMetricFamily(
        "drainwatch_agent_process_samples",
        "Samples of the target's processes and sockets taken by the agent.",
        labels=["service"],
    )
    cost = CounterMetricFamily(
        "drainwatch_agent_process_sampling_cpu_seconds",
        "CPU time the agent spent sampling the target's processes and sockets.",
        labels=["service"],
    )
    sample, full = snap.last_sample, snap.last_full_sample
    if sample is not None:
        processes.add_metric([service], len(sample.alive))
    if sample is not None and full is not None:
        # the latest full sample's figures, for the processes still alive now
        live = {process.id for process in sample.alive}
        alive = [process for process in full.alive if process.id in live]
        _add_sum(cpu, service, [p.cpu_seconds for p in alive])
        _add_sum(memory, service, [p.rss_bytes for p in alive])
        _add_sum(threads, service, [p.threads for p in alive])
        _add_sum(fds, service, [p.open_fds for p in alive])
    if snap.targets is not None:
        restarts.add_metric([service], snap.targets.restarts)
    samples.add_metric([service], snap.samples)
    cost.add_metric([service], snap.sample_cpu_seconds)
    yield from (connections, processes, cpu, memory, threads, fds, restarts, samples, cost)


def _add_sum(
    family: GaugeMetricFamily | CounterMetricFamily,
    service: str,
    values: list[float | None] | list[int | None],
) -> None:
    known = [value for value in values if value is not None]
    if known:
        family.add_metric([service], float(sum(known)))


def _pyspy_families(snap: OutsideSnapshot, service: str) -> Iterator[Metric]:
    results = CounterMetricFamily(
        "drainwatch_pyspy_samples",
        "py-spy dumps by result (ok, timeout, denied, target_gone, unsupported, failed) and "
        "dumps skipped (busy: one still running; rate_limited: the per-minute cap).",
        labels=["service", "result"],
    )
    duration = HistogramMetricFamily(
        "drainwatch_pyspy_sample_duration_seconds",
        "Wall time of each py-spy dump (the target is only read, not paused, unless "
        "blocking mode is configured).",
        labels=["service"],
    )
    unavailable = _gauge(
        "drainwatch_sampler_unavailable",
        "1 for each reason stack sampling is impossible now (no_ptrace, ptrace_scope, "
        "pid_namespace, proc_root_unreadable, unsupported_python, not_python, binary_missing, "
        "...); absent while sampling works.",
        ["service", "reason"],
    )
    sampler = snap.sampler
    if sampler is not None:
        for result in (*RESULTS, SKIPPED_BUSY, SKIPPED_RATE):
            results.add_metric([service, result], sampler.samples.get(result, 0))
        buckets = [(f"{bound:g}", count) for bound, count in sampler.duration_buckets]
        buckets.append(("+Inf", sampler.duration_count))
        duration.add_metric([service], buckets, sampler.duration_sum)
        for reason in sorted(sampler.unavailable):
            unavailable.add_metric([service, reason], 1)
    yield from (results, duration, unavailable)
