"""``drainwatch report``: fetch the drain reports from an agent and print the waterfall.

Standard library only (urllib), so it also works from an application image that carries
just the SDK. Exit codes: 0 no violation, 1 at least one violation, 2 the agent could not
be reached or refused the request.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Final, TextIO

from drainwatch._task_dump import render_loop, render_threads

DEFAULT_AGENT_URL: Final = "http://127.0.0.1:9469"
TIMEOUT_SECONDS: Final = 5.0
BAR_WIDTH: Final = 40
_LABEL_WIDTH: Final = 36
EXIT_OK: Final = 0
EXIT_VIOLATIONS: Final = 1
EXIT_UNREACHABLE: Final = 2


class ReportError(Exception):
    """The agent could not be asked. ``str()`` is the message for the user."""


def fetch(
    agent: str, service: str | None = None, everything: bool = False, timeout: float = 5.0
) -> dict[str, Any]:
    """GET ``/api/v1/report`` from ``agent``; raise ``ReportError`` with the next step."""
    query = {"service": service} if service else {}
    if everything:
        query["all"] = "1"
    document = get_json(agent, "/api/v1/report", query, timeout)
    if not isinstance(document, dict) or not isinstance(document.get("reports"), list):
        raise ReportError(f"{agent} answered without a report list; is {agent} a drainwatch agent?")
    return document


def get_json(agent: str, path: str, query: dict[str, str], timeout: float = 5.0) -> Any:
    """GET ``path`` from the agent at ``agent`` and parse the JSON answer; raise
    ``ReportError`` naming what went wrong and the next step."""
    parsed = urllib.parse.urlsplit(agent)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ReportError(
            f"--agent must be an http:// URL such as {DEFAULT_AGENT_URL} "
            f"(the agent's --listen address): {agent!r}"
        )
    url = agent.rstrip("/") + path
    if query:
        url += "?" + urllib.parse.urlencode(query)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) only
            body = response.read()
    except urllib.error.HTTPError as error:
        refusal = _error_text(error.read())
        raise ReportError(
            f"the agent at {agent} refused the request (HTTP {error.code}): {refusal}"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        raise ReportError(
            f"cannot reach the agent at {agent} ({reason}); is `drainwatch agent` running? "
            "Pass its --listen address with --agent http://HOST:PORT"
        ) from None
    try:
        return json.loads(body)
    except ValueError:
        raise ReportError(
            f"{url} did not answer with JSON; is {agent} a drainwatch agent?"
        ) from None


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:200]


def _clock(at: float | None) -> str:
    if at is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _offset(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f} s"


def _bar(start: float, end: float | None, scale: float, budget: float, running: float) -> str:
    """One waterfall row: '#' while the step ran, '-' then '>' for a step never finished,
    '|' where the budget ends (when the axis goes beyond it)."""
    cells = [" "] * BAR_WIDTH
    budget_cell = min(BAR_WIDTH - 1, int(budget / scale * BAR_WIDTH))
    if budget < scale:
        cells[budget_cell] = "|"
    first = min(BAR_WIDTH - 1, max(0, int(max(0.0, start) / scale * BAR_WIDTH)))
    last_time = end if end is not None else running
    last = min(BAR_WIDTH - 1, max(first, math.ceil(max(0.0, last_time) / scale * BAR_WIDTH) - 1))
    for cell in range(first, last + 1):
        cells[cell] = "#" if end is not None else "-"
    if end is None:
        cells[last] = ">"
    return "".join(cells)


def _step_label(step: dict[str, Any]) -> str:
    label = str(step["name"])
    if step.get("kind") == "listener":
        port = "" if step.get("port") is None else f" :{step['port']}"
        label += f" ({step.get('role')}{port})"
    elif step.get("role"):
        label += f" ({step['role']})"
    if step.get("finished") is None and step.get("kind") != "killed":
        label += " [unfinished]"
    elif step.get("ok") is False:
        label += " [left requests]" if step["name"] == "drain" else " [failed]"
    if len(label) > _LABEL_WIDTH:
        label = label[: _LABEL_WIDTH - 1] + "~"
    return label


def render_report(report: dict[str, Any]) -> str:
    """A report from ``/api/v1/report`` as text: header, waterfall, findings, verdict."""
    lines: list[str] = []
    budget = float(report.get("budget_seconds") or 30.0)
    signal = report.get("signal")
    total = report.get("shutdown_seconds") or 0.0
    state = "complete" if report.get("complete") else f"in progress ({report.get('phase')})"
    lines.append(
        f"{report['service']}  pid {report['pid']}  instance {report['instance']}  shutdown {state}"
    )
    began = (
        f"{signal['name']} at {_clock(signal['at'])}"
        if signal
        else f"no signal seen; first shutdown event at {_clock(report.get('started'))}"
    )
    lines.append(f"  {began}")
    if report.get("killed"):
        ending = f"killed (connection closed without an exit record) at {_offset(total)}"
    elif report.get("exited") is not None:
        code = report.get("exit_code")
        ending = f"exited at {_offset(total)}" + ("" if code is None else f" (code {code})")
    else:
        ending = f"still running, {_seconds(total)} so far"
    lines.append(
        f"  {ending}   drain {_seconds(report.get('drain_seconds'))}   budget {budget:g} s"
    )
    lines.append("")
    lines.extend(_waterfall(report, budget, float(total)))
    lines.extend(_findings(report))
    lines.append("")
    lines.extend(_violations(report))
    return "\n".join(lines)


def _waterfall(report: dict[str, Any], budget: float, total: float) -> list[str]:
    ends = [float(step["end_offset"]) for step in report["steps"] if step.get("end_offset")]
    scale = max(budget, total, *ends) if ends else max(budget, total)
    scale = scale or 1.0
    axis = f"0s{' ' * (BAR_WIDTH - 2 - len(f'{scale:g}s'))}{scale:g}s"
    header = f"  {'start':>9} {'duration':>9}  {'step':<{_LABEL_WIDTH}} "
    lines = [header + f" {axis}"]
    for signal in report.get("signals", []):
        offset = float(signal.get("offset") or 0.0)
        lines.append(
            f"  {_offset(offset):>9} {'':>9}  {signal['name']:<{_LABEL_WIDTH}} "
            f"|{_bar(offset, offset, scale, budget, total)}|"
        )
    for step in report["steps"]:
        start = float(step["start_offset"] or 0.0)
        end = step.get("end_offset")
        lines.append(
            f"  {_offset(start):>9} {_seconds(step.get('duration')):>9}  "
            f"{_step_label(step):<{_LABEL_WIDTH}} "
            f"|{_bar(start, None if end is None else float(end), scale, budget, total)}|"
        )
    if budget < scale:
        lines.append(f"  {'':>9} {'':>9}  {'':<{_LABEL_WIDTH}}  '|' = budget ({budget:g} s)")
    return lines


def _findings(report: dict[str, Any]) -> list[str]:
    lines: list[str] = [""]
    at_exit = report.get("inflight_at_exit")
    if at_exit is not None:
        parts = ", ".join(f"{protocol} {count}" for protocol, count in sorted(at_exit.items()))
        source = report.get("inflight_at_exit_source") or ""
        lines.append(f"  in flight at exit: {parts or 'none'} ({source.replace('_', ' ')})")
    requests = report.get("requests", [])
    if requests:
        since = "since the shutdown began"
        if report.get("requests_counted_from") != "shutdown":
            since = "since the process started"
        lines.append(f"  requests {since}:")
        for request in requests:
            outcomes = ", ".join(
                f"{outcome} {count}" for outcome, count in request["outcomes"].items() if count
            )
            lines.append(
                f"    {request['protocol']} {request['method']}: {outcomes or 'none finished'}; "
                f"active {request['active']}, started during drain "
                f"{request['started_during_drain']}"
            )
    residual = report.get("channels_with_residual", [])
    if residual:
        lines.append("  channels with residual items:")
        for channel in residual:
            closed = (
                "never closed"
                if channel.get("closed") is None
                else f"closed at {_clock(channel['closed'])}"
            )
            lines.append(f"    {channel['name']}: {channel['depth']} item(s), {closed}")
    lines.extend(_loop_stalls(report.get("loop_stalls")))
    lines.extend(_deadline_tasks(report.get("tasks_at_deadline")))
    return lines


def _loop_stalls(stalls: object) -> list[str]:
    """Blocks of the event loop during the shutdown, with the code that blocked it."""
    if not isinstance(stalls, list) or not stalls:
        return []
    lines = ["  event loop blocked during the shutdown:"]
    for stall in stalls:
        if not isinstance(stall, dict):
            continue
        seconds = stall.get("seconds")
        length = f"{seconds:.2f} s" if isinstance(seconds, int | float) else "?"
        lines.append(f"    {length} at {_clock(stall.get('at'))} on thread {stall.get('thread')}:")
        stack = stall.get("stack") or ["(not seen while it lasted: the blocking code held the GIL)"]
        lines.extend(f"      {frame}" for frame in stack)
    return lines


def _deadline_tasks(found: object) -> list[str]:
    """What was still there at the drain deadline (or when the process was killed)."""
    if not isinstance(found, dict):
        return []
    when = "when it was killed" if found.get("reason") == "killed" else "at the drain deadline"
    lines = [f"  what kept the process from exiting: tasks and threads {when}:"]
    for loop in found.get("loops") or []:
        lines.extend(f"    {line}" if line else "" for line in render_loop(loop))
    if found.get("threads"):
        lines.extend(f"    {line}" if line else "" for line in render_threads(found["threads"]))
    return lines


def _violations(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    violations = report.get("violations", [])
    if violations:
        lines.append("  violations:")
        for violation in violations:
            lines.append(f"    x {violation['rule']} at {_offset(violation.get('offset'))}")
            lines.append(f"      {violation['explanation']}")
            lines.append(f"      runbook: {violation['runbook']}")
    judged = "" if report.get("complete") else " (so far; most rules are judged at exit)"
    lines.append(f"  verdict: {report.get('verdict', 'OK')}{judged}")
    return lines


def terminal_safe(text: str) -> str:
    """``text`` with every control, format and unpaired surrogate character but newline
    escaped: names in a report come from the target, and an escape sequence in a service
    or step name must not drive the terminal that prints it."""
    return "".join(
        char
        if char == "\n" or unicodedata.category(char) not in ("Cc", "Cf", "Cs")
        else char.encode("unicode_escape", "backslashreplace").decode("ascii")
        for char in text
    )


def render(document: dict[str, Any]) -> str:
    reports = document.get("reports", [])
    if not reports:
        return "No shutdown seen yet: the agent has no drain report (for this service)."
    return terminal_safe("\n\n".join(render_report(report) for report in reports))


def run_report(
    agent: str,
    service: str | None,
    as_json: bool,
    everything: bool = False,
    timeout: float = TIMEOUT_SECONDS,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The ``drainwatch report`` command; returns its exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        document = fetch(agent, service, everything, timeout)
    except ReportError as error:
        print(terminal_safe(f"drainwatch report: {error}"), file=err)
        return EXIT_UNREACHABLE
    if as_json:
        print(json.dumps(document, indent=1), file=out)
    else:
        print(render(document), file=out)
    violated = any(report.get("violations") for report in document["reports"])
    return EXIT_VIOLATIONS if violated else EXIT_OK
