"""The agent's memory: services -> SDK processes (instances) -> channels.

Records are cumulative, so applying one is a merge, not an increment: counters take the
larger value (a late snapshot never moves them back), set-once facts (closed, drained,
residual) keep their first value, gauges take the latest. Channel objects that are gone
(collected in the target, evicted by a cap, or whose process went away long ago) fold
their counters into per-name totals, so ``*_total`` series never go backwards.

Every label value passes through ``SeriesCaps`` (``series_caps.py``): services, channel and
method names per service and in total, processes, channel objects and label length are
capped, and what is folded into ``other`` or cut is counted. A process not heard from for
the retention period is forgotten, and so is a service with no process left. Ages and
expiry use the monotonic clock: a wall clock that jumps neither expires live processes nor
keeps dead ones; the wall clock only stamps times that are shown.

Thread safety: ``apply``/``expire`` run on the event loop; ``view()`` may run in a worker
thread for /metrics. All of them take ``lock``; ``view`` copies what it needs under it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from drainwatch._clock import steady_time
from drainwatch._histogram import WAIT_BUCKETS
from drainwatch.collectors.sdk_decode import Decoded, Envelope

from .config import Limits
from .series_caps import OTHER, NameCap, SeriesCaps, TotalCap, sdk_limit
from .shutdown_state import InflightMethod, merge_shutdown
from .task_state import InstanceTasks, apply_loop, apply_threads, empty_lag, fold_lag

__all__ = ["OTHER", "ChannelObject", "Instance", "RetiredTotals", "Service", "State"]
_COUNTERS = (
    "sent",
    "received",
    "discarded",
    "read_after_close",
    "send_after_close",
    "double_close",
)
_OPS = ("send", "receive")


def _empty_histogram() -> list[float]:
    # bucket counts (non-cumulative, +Inf last), then sum
    return [0.0] * (len(WAIT_BUCKETS) + 2)


@dataclass(slots=True)
class ChannelObject:
    """One channel object in one process, as last reported."""

    name: str
    kind: str
    owner: str | None
    capacity: int
    created: float
    closed: float | None = None
    immediate: bool = False
    closed_by: str | None = None
    closed_where: str | None = None
    drained: float | None = None
    residual: int | None = None
    depth: int = 0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    waiters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_OPS, 0))
    oldest_wait: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_OPS, 0.0))
    wait: dict[str, list[float]] = field(
        default_factory=lambda: {op: _empty_histogram() for op in _OPS}
    )
    wait_totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_OPS, 0))
    # What /metrics writes of this object, made by the first scrape after the values they
    # come from changed (agent/channel_series.py); None until then: the histograms' lines
    # (cumulative buckets, count, sum; send, then receive) and the health score.
    wait_lines: tuple[list[float], list[float]] | None = None
    health: float | None = None
    updated: float = 0.0
    # Collected in the target. Kept so its close facts stay visible after the process
    # ends; it no longer holds items or waiters of the service.
    gone: bool = False


@dataclass(slots=True)
class RetiredTotals:
    """Counters of channel objects of one name that no longer exist."""

    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    wait: dict[str, list[float]] = field(
        default_factory=lambda: {op: _empty_histogram() for op in _OPS}
    )
    created: float | None = None

    def absorb(self, channel: ChannelObject) -> None:
        for key in _COUNTERS:
            self.counters[key] += channel.counters[key]
        for op in _OPS:
            mine, theirs = self.wait[op], channel.wait[op]
            for index, value in enumerate(theirs):
                mine[index] += value
        if self.created is None or channel.created < self.created:
            self.created = channel.created


@dataclass(slots=True)
class Instance:
    """One SDK process (a new one after every restart or fork)."""

    instance: str
    pid: int
    service: str
    first_seen: float
    last_seen: float
    last_heard: float = 0.0  # monotonic, for expiry
    last_seq: int = 0
    lost: int = 0
    dropped: int = 0
    started: float | None = None
    python: str | None = None
    sdk: str | None = None
    connected: bool = True
    disconnected_at: float | None = None
    channels: dict[int, ChannelObject] = field(default_factory=dict)
    shutdown: dict[str, Any] | None = None
    inflight: dict[tuple[str, str], InflightMethod] = field(default_factory=dict)
    # Request outcomes when the shutdown began (first datagram with a phase past
    # "running"), so a drain report can tell what happened during the shutdown.
    outcomes_at_shutdown: dict[tuple[str, str], dict[str, int]] | None = None
    # its event loops' tasks and lag, and its threads (agent/task_state.py)
    tasks: InstanceTasks = field(default_factory=InstanceTasks)
    # What the SDK itself folded or cut (its own caps), cumulative, by limit.
    sdk_capped: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Service:
    name: str
    channel_names: NameCap
    method_names: NameCap
    instances: dict[str, Instance] = field(default_factory=dict)
    retired: dict[str, RetiredTotals] = field(default_factory=dict)
    last_heard: float = 0.0  # monotonic: a service with no process left expires after it
    # request counters of processes that were forgotten, so request totals never go back
    retired_requests: dict[tuple[str, str], InflightMethod] = field(default_factory=dict)
    # dropped / lost counts of processes that were forgotten, so the totals never go back
    retired_dropped: int = 0
    retired_lost: int = 0
    # event-loop lag of processes that were forgotten, so the histogram never goes back
    retired_lag: list[float] = field(default_factory=empty_lag)


@dataclass(slots=True)
class AgentCounters:
    datagrams: int = 0
    records: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    # SDK caps of processes that were forgotten, so the totals never go back
    retired_sdk_capped: dict[str, int] = field(default_factory=dict)


class State:
    def __init__(
        self,
        limits: Limits,
        default_service: str | None,
        wall_clock: Callable[[], float] = steady_time,
        clock: Callable[[], float] = time.monotonic,
        caps: SeriesCaps | None = None,
    ) -> None:
        self.limits = limits
        self.default_service = default_service or "unknown"
        self.lock = threading.Lock()
        self.services: dict[str, Service] = {}
        self.counters = AgentCounters()
        self.caps = caps if caps is not None else SeriesCaps(limits.max_label_length)
        self._channels_total = TotalCap(limits.max_channels_total, "channels_total")
        self._methods_total = TotalCap(limits.max_methods_total, "methods_total")
        self._sdk_limits: set[str] = set()
        self._wall_clock = wall_clock
        self._clock = clock
        # Called with the lock held just before a process is forgotten (drain reports).
        self.retire_observers: list[Callable[[Service, Instance], None]] = []

    # -- bookkeeping -------------------------------------------------------------------------

    def reject(self, reason: str, count: int = 1) -> None:
        with self.lock:
            rejected = self.counters.rejected
            rejected[reason] = rejected.get(reason, 0) + count

    def _capped(self, limit: str) -> None:
        self.caps.count(limit)

    def _label(self, value: str) -> str:
        return self.caps.label(value)

    def sdk_capped(self) -> dict[str, int]:
        """What SDK processes folded or cut themselves, by exported limit (``sdk_*``),
        live and forgotten processes together. Call with the lock held."""
        totals = dict(self.counters.retired_sdk_capped)
        for _, instance in self.instances():
            for limit, count in instance.sdk_capped.items():
                totals[limit] = totals.get(limit, 0) + count
        return totals

    # -- applying records --------------------------------------------------------------------

    def apply(self, decoded: Decoded) -> None:
        with self.lock:
            self.counters.datagrams += 1
            for reason, count in decoded.rejected.items():
                rejected = self.counters.rejected
                rejected[reason] = rejected.get(reason, 0) + count
            instance = self._instance(decoded.envelope)
            self.counters.records += len(decoded.records)
            for record in decoded.records:
                kind = record["type"]
                if kind == "channel":
                    self._apply_channel(instance, record)
                elif kind == "shutdown":
                    instance.shutdown = merge_shutdown(instance.shutdown, record)
                elif kind == "inflight":
                    self._apply_inflight(instance, record)
                elif kind == "loop":
                    apply_loop(instance.tasks, record, self.limits, self._label, self._capped)
                elif kind == "threads":
                    apply_threads(instance.tasks, record, self.limits, self._label, self._capped)
                else:
                    instance.started = record["started"]
                    instance.python = record["python"]
                    instance.sdk = record["sdk"]
                    self._apply_sdk_capped(instance, record.get("capped"))
            if instance.outcomes_at_shutdown is None and _shutting_down(instance):
                instance.outcomes_at_shutdown = {
                    key: dict(method.outcomes) for key, method in instance.inflight.items()
                }

    def _apply_sdk_capped(self, instance: Instance, capped: dict[str, int] | None) -> None:
        if not capped:
            return
        mine = instance.sdk_capped
        for name, count in capped.items():
            limit = sdk_limit(name, self._sdk_limits)
            mine[limit] = max(mine.get(limit, 0), count)

    def _apply_inflight(self, instance: Instance, record: dict[str, Any]) -> None:
        service = self.services[instance.service]
        key = (record["protocol"], self._label(record["method"]))
        method = instance.inflight.get(key)
        if method is None:
            name = self.caps.admit(service.method_names, key[1])
            if name == OTHER or len(instance.inflight) >= self.limits.max_methods_per_instance:
                if name != OTHER:
                    self._capped("methods")
                key = (record["protocol"], OTHER)
                method = instance.inflight.get(key)
            if method is None:
                method = instance.inflight[key] = InflightMethod(*key)
        method.merge(record)
        method.series.observe(self._wall_clock(), method.active)

    def _service(self, raw_name: str | None) -> Service:
        name = self._label(raw_name or self.default_service)
        service = self.services.get(name)
        if service is None:
            if len(self.services) >= self.limits.max_services:
                self._capped("services")
                name = OTHER
                service = self.services.get(name)
            if service is None:
                limits = self.limits
                service = self.services[name] = Service(
                    name,
                    NameCap(limits.max_channels_per_service, "channels", self._channels_total),
                    NameCap(limits.max_methods_per_instance, "methods", self._methods_total),
                )
        service.last_heard = self._clock()
        return service

    def _instance(self, envelope: Envelope) -> Instance:
        service = self._service(envelope.service)
        now = self._wall_clock()
        instance = service.instances.get(envelope.instance)
        if instance is None:
            if len(service.instances) >= self.limits.max_instances_per_service:
                self._capped("instances")
                self._retire_instance(service, _oldest_instance(service))
            instance = service.instances[envelope.instance] = Instance(
                envelope.instance,
                envelope.pid,
                service.name,
                first_seen=now,
                last_seen=now,
                last_seq=envelope.seq - 1,
            )
        if envelope.seq > instance.last_seq + 1:
            instance.lost += envelope.seq - instance.last_seq - 1
        instance.last_seq = max(instance.last_seq, envelope.seq)
        instance.last_seen = now
        instance.last_heard = service.last_heard
        instance.dropped = max(instance.dropped, envelope.dropped)
        return instance

    def _channel_name(self, service: Service, raw: str) -> str:
        return self.caps.admit(service.channel_names, self._label(raw))

    def _apply_channel(self, instance: Instance, record: dict[str, Any]) -> None:
        channel = instance.channels.get(record["id"])
        if channel is None:
            service = self.services[instance.service]
            if len(instance.channels) >= self.limits.max_channel_objects_per_instance:
                self._capped("channel_objects")
                self._evict_one(service, instance)
            channel = instance.channels[record["id"]] = ChannelObject(
                name=self._channel_name(service, record["name"]),
                kind=record["kind"],
                owner=record["owner"],
                capacity=record["capacity"],
                created=record["created"],
            )
        _merge(channel, record)
        channel.updated = self._clock()
        if record["trigger"] == "gone":
            channel.gone = True

    # -- forgetting --------------------------------------------------------------------------

    def _retire_channel(self, service: Service, instance: Instance, channel_id: int) -> None:
        channel = instance.channels.pop(channel_id, None)
        if channel is not None:
            totals = service.retired.get(channel.name)
            if totals is None:
                totals = service.retired[channel.name] = RetiredTotals()
            totals.absorb(channel)

    def _evict_one(self, service: Service, instance: Instance) -> None:
        # Prefer a collected object, then a closed one, then the least recently updated.
        victim = min(
            instance.channels.items(),
            key=lambda item: (not item[1].gone, item[1].closed is None, item[1].updated),
        )[0]
        self._retire_channel(service, instance, victim)

    def _retire_instance(self, service: Service, instance: Instance) -> None:
        for observer in self.retire_observers:
            observer(service, instance)
        for channel_id in list(instance.channels):
            self._retire_channel(service, instance, channel_id)
        for (protocol, name), method in instance.inflight.items():
            key = (protocol, name)
            retired = service.retired_requests.get(key)
            if retired is None:
                if len(service.retired_requests) >= self.limits.max_methods_per_instance:
                    key = (protocol, OTHER)
                    retired = service.retired_requests.get(key)
                if retired is None:
                    retired = service.retired_requests[key] = InflightMethod(*key)
            retired.absorb(method)
        service.retired_dropped += instance.dropped
        service.retired_lost += instance.lost
        fold_lag(service.retired_lag, instance.tasks)
        retired_caps = self.counters.retired_sdk_capped
        for limit, count in instance.sdk_capped.items():
            retired_caps[limit] = retired_caps.get(limit, 0) + count
        service.instances.pop(instance.instance, None)

    def disconnected(self, instance_id: str) -> None:
        """The SDK process's connection closed: it exited or was killed."""
        with self.lock:
            now = self._wall_clock()
            for service in self.services.values():
                instance = service.instances.get(instance_id)
                if instance is not None and instance.connected:
                    instance.connected = False
                    instance.disconnected_at = now

    def expire(
        self, retention_seconds: float, service_retention_seconds: float | None = None
    ) -> None:
        """Forget processes not heard from for ``retention_seconds`` (their counters stay in
        the service's totals), then services with no process left that were not heard from
        for ``service_retention_seconds`` (their series end; their drain reports stay in the
        report store). Without it, services stay."""
        with self.lock:
            now = self._clock()
            cutoff = now - retention_seconds
            service_cutoff = (
                now - service_retention_seconds if service_retention_seconds is not None else None
            )
            for name, service in list(self.services.items()):
                for instance in list(service.instances.values()):
                    if instance.last_heard < cutoff:
                        self._retire_instance(service, instance)
                if (
                    service_cutoff is not None
                    and not service.instances
                    and service.last_heard < service_cutoff
                ):
                    service.channel_names.release()
                    service.method_names.release()
                    del self.services[name]

    # -- reading -----------------------------------------------------------------------------

    def instances(self) -> Iterator[tuple[Service, Instance]]:
        for service in self.services.values():
            for instance in service.instances.values():
                yield service, instance


def _shutting_down(instance: Instance) -> bool:
    shutdown = instance.shutdown
    return shutdown is not None and shutdown["phase"] != "running"


def _oldest_instance(service: Service) -> Instance:
    return min(service.instances.values(), key=lambda instance: instance.last_heard)


def _merge(channel: ChannelObject, record: dict[str, Any]) -> None:
    # Runs for every channel record the agent reads: spelled out rather than looped over
    # getattr/setattr, and the stored histograms' totals kept rather than summed again.
    # What /metrics made of the old values is dropped when they change (``changed``).
    changed = False
    if channel.closed is None and record["closed"] is not None:
        channel.closed = record["closed"]
        changed = True
    if channel.drained is None and record["drained"] is not None:
        channel.drained = record["drained"]
        changed = True
    if channel.residual is None and record["residual"] is not None:
        channel.residual = record["residual"]
        changed = True
    if channel.closed_by is None and record["closed_by"] is not None:
        channel.closed_by = record["closed_by"]
    if channel.closed_where is None and record["closed_where"] is not None:
        channel.closed_where = record["closed_where"]
    if record["closed"] is not None:
        channel.immediate = channel.immediate or record["immediate"]
    channel.capacity = record["capacity"]
    channel.depth = record["depth"]
    counters = channel.counters
    for key in _COUNTERS:
        value = record[key]
        if value > counters[key]:
            counters[key] = value
            changed = True
    waiters, oldest, waits = record["waiters"], record["oldest_wait"], record["wait"]
    totals = channel.wait_totals
    for op in _OPS:
        channel.waiters[op] = waiters[op]
        seconds = float(oldest[op])
        if seconds != channel.oldest_wait[op]:
            channel.oldest_wait[op] = seconds
            changed = True
        histogram = waits[op]
        # Per-bucket counts only grow: the same total is the same histogram, and a smaller
        # one an older report.
        count = histogram["count"]  # the sum of its counts (checked by the decoder)
        if count > totals[op]:
            stored = channel.wait[op]
            stored[:-1] = histogram["counts"]
            stored[-1] = float(histogram["sum"])
            totals[op] = count
            channel.wait_lines = None
    if changed:
        channel.health = None
