"""The JSON document served at ``/api/v1/tasks``: what every task and thread waits on.

Per service, per SDK process: its loops and threads as the SDK last reported them (the
``loop`` and ``threads`` records of docs/protocol.md, task names and top lists capped by
the agent), and, when the agent samples the target with py-spy, the threads it found
waiting (``pyspy_threads``, the same shape as a ``threads`` record). ``drainwatch tasks``
prints it as a Go-style dump.
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

from .state import State
from .task_state import views

if TYPE_CHECKING:
    from .outside import OutsideView


def _pyspy_threads(outside: OutsideView | None, default_service: str) -> tuple[str, Any] | None:
    if outside is None:
        return None
    snap = outside.snapshot()
    sampler = snap.sampler
    if sampler is None or sampler.last_sample_at is None:
        return None
    service = snap.generations[-1].service if snap.generations else default_service
    waiting = sorted(
        (thread for thread in sampler.threads if thread.waiting),
        key=lambda thread: -thread.blocked_seconds,
    )
    return service, {
        "type": "threads",
        "sampled_at": sampler.last_sample_at,
        "threads": len(sampler.threads),
        "waiting": {},
        "top": [
            {
                "thread": thread.label,
                "ident": thread.thread_id,
                "native_id": thread.os_thread_id,
                "reason": thread.reason,
                "target": None,
                "since": thread.since,
                "wait": round(thread.blocked_seconds, 3),
                "site": thread.site,
                "stack": [frame.describe() for frame in thread.frames],
            }
            for thread in waiting
        ],
    }


def tasks_document(
    state: State, service_filter: str | None = None, outside: OutsideView | None = None
) -> dict[str, Any]:
    """Build the document; it shares nothing with the state (copied under its lock)."""
    pyspy = _pyspy_threads(outside, state.default_service)
    with state.lock:
        services = []
        names = set(state.services) | ({pyspy[0]} if pyspy is not None else set())
        for name in sorted(names):
            if service_filter is not None and name != service_filter:
                continue
            service = state.services.get(name)
            instances = []
            for instance in service.instances.values() if service is not None else ():
                found = views(instance.tasks)
                if not found["loops"] and found["threads"] is None:
                    continue
                instances.append(
                    {
                        "instance": instance.instance,
                        "pid": instance.pid,
                        "connected": instance.connected,
                        "last_seen": instance.last_seen,
                        **copy.deepcopy(found),
                    }
                )
            entry: dict[str, Any] = {"name": name, "instances": instances}
            if pyspy is not None and pyspy[0] == name:
                entry["pyspy_threads"] = pyspy[1]
            services.append(entry)
    return {"now": time.time(), "services": services}
