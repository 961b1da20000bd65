"""What ``drainwatch verify-shutdown`` prints and writes: the readable report and the JSON.

The readable report is the agent's drain report (the waterfall, as ``drainwatch report``
prints it), what the clients saw, the table of checks, and for each failed check what
failed and the likely fix. ``document`` is the same as JSON (``--json-out``), with the
agent's drain report embedded as served by ``/api/v1/report``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

from .report_cli import render_report
from .verify_checks import Check, passed
from .verify_load import LOAD, NEW_CONNECTION, Request
from .verify_run import Observation

FORMAT_VERSION: Final = 1
_NAME_WIDTH: Final = 30
# A fast service answers thousands of requests before the signal: the JSON lists those
# that were still running at the signal or started after it, up to this many.
MAX_REQUESTS_LISTED: Final = 5000


def _offset(observed: Observation, at: float | None) -> float | None:
    if at is None or observed.signal_at is None:
        return None
    return round(at - observed.signal_at, 6)


def _around_signal(observed: Observation) -> list[Request]:
    signal_at = observed.signal_at
    if signal_at is None:
        return []
    return [request for request in observed.requests if request.ended > signal_at]


def _client_rows(observed: Observation) -> list[str]:
    signal_at = observed.signal_at
    groups: dict[str, list[Request]] = {
        "in flight at the signal": [],
        "new connections in the accept window": [],
        "before the signal": [],
        "after the signal": [],
    }
    for request in observed.requests:
        if signal_at is None or request.ended <= signal_at:
            groups["before the signal"].append(request)
        elif request.kind == LOAD and request.in_flight_at(signal_at):
            groups["in flight at the signal"].append(request)
        elif request.kind == NEW_CONNECTION:
            groups["new connections in the accept window"].append(request)
        else:
            groups["after the signal"].append(request)
    lines = ["  clients saw:"]
    for label, requests in groups.items():
        if not requests:
            continue
        counts = Counter(request.status for request in requests)
        shown = ", ".join(f"{status} {count}" for status, count in counts.most_common())
        lines.append(f"    {label:<38} {len(requests):>5}  {shown}")
    return lines


def render_text(observed: Observation, checks: list[Check]) -> str:
    """The readable report, ending with the verdict line."""
    options = observed.options
    lines = [f"verify-shutdown: {' '.join(options.command)}", ""]
    if observed.report is not None:
        lines.append(render_report(observed.report))
    else:
        lines.append("  (no drain report: drainwatch saw no shutdown from the command)")
    lines.append("")
    lines.extend(_client_rows(observed))
    lines.append("")
    lines.append("  checks:")
    for check in checks:
        lines.append(f"    {check.status}  {check.name:<{_NAME_WIDTH}} {check.summary}")
    failed = [check for check in checks if check.passed is False]
    if failed:
        lines.append("")
        lines.append("  what failed and the likely fix:")
        for check in failed:
            lines.append(f"    x {check.name}: {check.summary}")
            if check.fix:
                lines.append(f"      fix: {check.fix}")
        if observed.output_tail and (observed.exit_code != 0 or observed.killed):
            lines.append("")
            lines.append("  the command's last output:")
            lines.extend(f"    | {line}" for line in observed.output_tail)
    lines.append("")
    verdict = "PASS" if passed(checks) else f"FAIL ({len(failed)} of {len(checks)} checks)"
    lines.append(f"verify-shutdown: {verdict}")
    return "\n".join(lines)


def document(observed: Observation, checks: list[Check]) -> dict[str, Any]:
    """The ``--json-out`` document."""
    options = observed.options
    return {
        "format_version": FORMAT_VERSION,
        "verdict": "pass" if passed(checks) else "fail",
        "command": list(options.command),
        "service": options.service,
        "settings": {
            "grpc": None
            if options.grpc is None
            else {"target": options.grpc.target, "method": options.grpc.method},
            "http": None
            if options.http is None
            else {"url": options.http.url, "method": options.http.method},
            "health": None
            if options.health is None
            else {"kind": options.health.kind, "target": options.health.describe},
            "concurrency": options.concurrency,
            "rate": options.rate,
            "signal": options.signal_name,
            "signal_after_seconds": options.signal_after,
            "accept_window_seconds": options.accept_window,
            "budget_seconds": options.budget,
        },
        "pid": observed.pid,
        "spawned_at": observed.spawned_at,
        "ready_at": observed.ready_at,
        "signal_at": observed.signal_at,
        "exited_at": observed.exited_at,
        "exit_seconds": _offset(observed, observed.exited_at),
        "exit_code": observed.exit_code,
        "killed": observed.killed,
        "checks": [
            {
                "name": check.name,
                "status": check.status.lower(),
                "summary": check.summary,
                "fix": check.fix,
                "rules": list(check.rules),
            }
            for check in checks
        ],
        "requests_before_signal": dict(
            Counter(
                request.status
                for request in observed.requests
                if observed.signal_at is None or request.ended <= observed.signal_at
            )
        ),
        "requests": [
            {
                "kind": request.kind,
                "endpoint": request.endpoint,
                "status": request.status,
                "ok": request.ok,
                "start_offset": _offset(observed, request.started),
                "end_offset": _offset(observed, request.ended),
            }
            for request in _around_signal(observed)[:MAX_REQUESTS_LISTED]
        ],
        "health": [
            {"offset": _offset(observed, change.at), "up": change.up, "detail": change.detail}
            for change in observed.health
        ],
        "readiness": [
            {"offset": _offset(observed, change.at), "ready": change.up, "detail": change.detail}
            for change in observed.readiness
        ],
        "business_listening": [
            {"offset": _offset(observed, change.at), "listening": change.up}
            for change in observed.business
        ],
        "drain_report": observed.report,
        "output_tail": list(observed.output_tail),
    }
