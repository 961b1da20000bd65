"""The JSON document served at ``/api/v1/state``: everything the agent knows, as data."""

from __future__ import annotations

import copy
from typing import Any

from drainwatch._version import __version__

from .channel_summary import summarize
from .state import ChannelObject, Instance, State


def _channel(channel_id: int, channel: ChannelObject) -> dict[str, Any]:
    return {
        "id": channel_id,
        "name": channel.name,
        "kind": channel.kind,
        "owner": channel.owner,
        "capacity": channel.capacity,
        "created": channel.created,
        "closed": channel.closed,
        "immediate": channel.immediate,
        "closed_by": channel.closed_by,
        "closed_where": channel.closed_where,
        "drained": channel.drained,
        "residual": channel.residual,
        "depth": channel.depth,
        **channel.counters,
        "waiters": dict(channel.waiters),
        "oldest_wait": dict(channel.oldest_wait),
        "updated": channel.updated,
    }


def _instance(instance: Instance) -> dict[str, Any]:
    return {
        "instance": instance.instance,
        "pid": instance.pid,
        "connected": instance.connected,
        "first_seen": instance.first_seen,
        "last_seen": instance.last_seen,
        "disconnected_at": instance.disconnected_at,
        "started": instance.started,
        "python": instance.python,
        "sdk": instance.sdk,
        "sdk_dropped": instance.dropped,
        "datagrams_lost": instance.lost,
        "channels": [_channel(key, value) for key, value in sorted(instance.channels.items())],
        # the merged cumulative shutdown record (docs/protocol.md), or null before the first
        "shutdown": copy.deepcopy(instance.shutdown),
        "requests": [
            {
                "protocol": method.protocol,
                "method": method.method,
                "active": method.active,
                "started_during_drain": method.started_during_drain,
                "outcomes": dict(method.outcomes),
                # [[Unix seconds, active], ...], bounded (agent/inflight_series.py)
                "inflight_series": method.series.points(),
            }
            for _, method in sorted(instance.inflight.items())
        ],
    }


def state_document(state: State, service_filter: str | None = None) -> dict[str, Any]:
    """Build the document under the state lock; the result shares nothing with the state."""
    with state.lock:
        services = []
        for service in sorted(state.services.values(), key=lambda s: s.name):
            if service_filter is not None and service.name != service_filter:
                continue
            services.append(
                {
                    "name": service.name,
                    "channels": [
                        {
                            "name": summary.name,
                            "objects": summary.objects,
                            "created": summary.created,
                            "closed": summary.closed,
                            "drained": summary.drained,
                            "residual": summary.residual,
                            "depth": summary.depth,
                            "capacity": summary.capacity,
                            **summary.counters,
                            "waiters": dict(summary.waiters),
                            "oldest_wait": dict(summary.oldest_wait),
                            "health_score": summary.health_score,
                        }
                        for summary in summarize(service)
                    ],
                    "instances": [_instance(instance) for instance in service.instances.values()],
                }
            )
        counters = state.counters
        return {
            "agent": {
                "version": __version__,
                "service": state.default_service,
                "datagrams_received": counters.datagrams,
                "events_received": counters.records,
                "events_rejected": dict(counters.rejected),
                "series_capped": {**state.caps.counts(), **state.sdk_capped()},
            },
            "services": services,
        }
