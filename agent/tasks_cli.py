"""``drainwatch tasks``: what every task and thread of a service waits on, as a Go-style dump.

Fetches ``/api/v1/tasks`` from an agent and prints, per service and process, each watched
loop (its lag, its stalls with the blocking code, its tasks grouped where several wait at
the same place) and the waiting threads the SDK and py-spy see. Standard library only, so
it works from an application image that carries just the SDK. Exit codes: 0 printed, 2 the
agent could not be reached or refused the request.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

from drainwatch._task_dump import clock, render_loop, render_threads

from .report_cli import EXIT_OK, EXIT_UNREACHABLE, TIMEOUT_SECONDS, ReportError, get_json

_INDENT: Final = "  "


def fetch_tasks(agent: str, service: str | None, timeout: float) -> dict[str, Any]:
    """GET ``/api/v1/tasks``; raise ``ReportError`` with the next step."""
    document = get_json(agent, "/api/v1/tasks", {"service": service} if service else {}, timeout)
    if not isinstance(document, dict) or not isinstance(document.get("services"), list):
        raise ReportError(f"{agent} answered without a service list; is it a drainwatch agent?")
    return document


def _indented(lines: list[str], depth: int) -> list[str]:
    return [(_INDENT * depth + line) if line else "" for line in lines]


def _process_header(instance: Mapping[str, Any], now: float) -> str:
    state = "connected" if instance.get("connected") else "gone"
    sampled = [
        record.get("sampled_at")
        for record in [*(instance.get("loops") or []), instance.get("threads") or {}]
        if isinstance(record.get("sampled_at"), int | float)
    ]
    age = f", sampled {now - max(sampled):.1f}s ago" if sampled else ""
    return f"pid {instance.get('pid')}  instance {instance.get('instance')}  ({state}{age})"


def render(document: Mapping[str, Any]) -> str:
    """The ``/api/v1/tasks`` document as text."""
    now = document.get("now")
    now = float(now) if isinstance(now, int | float) else 0.0
    lines: list[str] = []
    for service in document.get("services", []):
        lines.append(f"service {service.get('name')}  (at {clock(now)})")
        for instance in service.get("instances") or []:
            lines.append("")
            lines.append(_INDENT + _process_header(instance, now))
            for loop in instance.get("loops") or []:
                lines.append("")
                lines.extend(_indented(render_loop(loop), 2))
            if instance.get("threads"):
                lines.append("")
                lines.extend(_indented(render_threads(instance["threads"], "sdk"), 2))
        if service.get("pyspy_threads"):
            lines.append("")
            lines.extend(_indented(render_threads(service["pyspy_threads"], "py-spy"), 1))
        lines.append("")
    if not lines:
        return "No task or thread reported yet: no SDK process with tracking on, no py-spy sample."
    return "\n".join(lines).rstrip() + "\n"


def run_tasks(
    agent: str,
    service: str | None,
    as_json: bool,
    timeout: float = TIMEOUT_SECONDS,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The ``drainwatch tasks`` command; returns its exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        document = fetch_tasks(agent, service, timeout)
    except ReportError as error:
        print(f"drainwatch tasks: {error}", file=err)
        return EXIT_UNREACHABLE
    if as_json:
        print(json.dumps(document, indent=1), file=out)
    else:
        out.write(render(document))
    return EXIT_OK
