"""Tables of the status page: channels, blocked tasks and threads with the "last words"
stacks, and the history of recent drains.

Task dumps come from another part of the agent than the rest: the names this page expects
are pinned in ``TASK_FIELDS`` (one place to align with the task tracker's JSON).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .page_html import clip, clock, esc, fixed, items, mapping, number, offset, seconds, text, whole
from .page_waterfall import runbook_href, violations_list, waterfall_svg

WAIT_WARN_SECONDS: Final = 1.0
WAIT_BAD_SECONDS: Final = 5.0
HEALTH_WARN: Final = 80.0
HEALTH_BAD: Final = 50.0
MAX_ROWS: Final = 200  # rows per table; more are counted, not drawn


@dataclass(frozen=True, slots=True)
class TaskFields:
    """Where the page finds blocked asyncio tasks, and what each task entry holds."""

    report_key: str = "blocked_tasks"  # in a drain report: tasks alive at the drain deadline
    api_path: str = "/api/v1/tasks"  # the live dump: {"services": [{"name", "tasks": [...]}]}
    name: str = "task"
    reason: str = "reason"
    target: str = "waiting_on"  # what it awaits (a channel name, a lock, ...)
    seconds: str = "blocked_seconds"
    stack: str = "stack"  # list of frame descriptions, innermost last


TASK_FIELDS: Final = TaskFields()


def _cell(value: str, sort: float | str | None, css: str = "") -> str:
    sort_attr = "" if sort is None else f' data-sort="{esc(sort)}"'
    class_attr = f' class="{css}"' if css else ""
    return f"<td{class_attr}{sort_attr}>{value}</td>"


def _grade(value: float, warn: float, bad: float, higher_is_worse: bool = True) -> str:
    if higher_is_worse:
        return "bad" if value >= bad else "warn" if value >= warn else ""
    return "bad" if value < bad else "warn" if value < warn else ""


def _count_cell(value: int | None) -> str:
    count = value or 0
    return _cell(str(count), count, "bad" if count > 0 else "")


def _channel_row(channel: Mapping[str, Any], origin: float | None) -> str:
    name = text(channel.get("name"), "?")
    depth = whole(channel.get("depth")) or 0
    capacity = whole(channel.get("capacity")) or 0
    closed = number(channel.get("closed"))
    drained = number(channel.get("drained"))
    residual = whole(channel.get("residual"))
    stuck = closed is not None and drained is None and depth > 0
    depth_css = "bad" if stuck else "warn" if capacity and depth >= capacity else ""
    depth_text = f"{depth} / {capacity}" if capacity else f"{depth} / \u221e"
    if closed is None:
        closed_text = "open"
    elif origin is not None:
        closed_text = offset(closed - origin)
    else:
        closed_text = clock(closed)
    waiters = mapping(channel.get("waiters"))
    waiting = (whole(waiters.get("send")) or 0) + (whole(waiters.get("receive")) or 0)
    oldest = max(
        (number(value) or 0.0 for value in mapping(channel.get("oldest_wait")).values()),
        default=0.0,
    )
    health = number(channel.get("health_score"))
    cells = [
        f'<th scope="row" title="{esc(name)}">{esc(clip(name, 40))}</th>',
        _cell(esc(depth_text), depth, depth_css),
        _cell(esc(closed_text), closed if closed is not None else "", ""),
        _cell(
            "-" if residual is None else str(residual),
            residual if residual is not None else -1,
            "bad" if residual else "",
        ),
        _count_cell(whole(channel.get("read_after_close"))),
        _count_cell(whole(channel.get("send_after_close"))),
        _count_cell(whole(channel.get("double_close"))),
        _cell(str(waiting), waiting, "warn" if waiting else ""),
        _cell(esc(seconds(oldest)), oldest, _grade(oldest, WAIT_WARN_SECONDS, WAIT_BAD_SECONDS)),
        _cell(
            "-" if health is None else f"{health:g}",
            health if health is not None else -1,
            "" if health is None else _grade(health, HEALTH_WARN, HEALTH_BAD, False),
        ),
    ]
    return "<tr>" + "".join(cells) + "</tr>"


_CHANNEL_COLUMNS: Final = (
    ("Channel", "text"),
    ("Depth / capacity", "number"),
    ("Closed at", "number"),
    ("Residual at close", "number"),
    ("Read after close", "number"),
    ("Send after close", "number"),
    ("Double close", "number"),
    ("Blocked waiters", "number"),
    ("Oldest wait", "number"),
    ("Health", "number"),
)


def _sortable_head(columns: Sequence[tuple[str, str]]) -> str:
    return (
        "<thead><tr>"
        + "".join(
            f'<th scope="col" data-type="{kind}"><button type="button" class="sort">'
            f"{esc(title)}</button></th>"
            for title, kind in columns
        )
        + "</tr></thead>"
    )


def _more(shown: int, total: int) -> str:
    return f'<p class="more">{total - shown} more not shown.</p>' if total > shown else ""


def channels_table(service: Mapping[str, Any], origin: float | None, table_id: str) -> str:
    """The service's channels, sortable by any column, bad values highlighted; "Closed at"
    is an offset from the last shutdown's start when there is one."""
    channels = items(service.get("channels"))
    if not channels:
        return (
            '<p class="none">No channel reported (drainwatch.Channel, ThreadChannel, '
            "watch_queue).</p>"
        )
    rows = "".join(_channel_row(channel, origin) for channel in channels[:MAX_ROWS])
    return (
        f'<div class="table-wrap"><table class="channels sortable" id="{esc(table_id)}">'
        f"{_sortable_head(_CHANNEL_COLUMNS)}<tbody>{rows}</tbody></table></div>"
        + _more(min(len(channels), MAX_ROWS), len(channels))
    )


def _stack(frames: object) -> str:
    lines = [text(frame, str(frame)) for frame in frames] if isinstance(frames, list) else []
    if not lines:
        return ""
    return f'<pre class="stack">{esc(chr(10).join(clip(line, 300) for line in lines[:64]))}</pre>'


def _wait_rows(entries: Sequence[Mapping[str, Any]], fields: TaskFields | None) -> str:
    rows = []
    for entry in entries[:MAX_ROWS]:
        if fields is None:
            name = text(entry.get("thread"), "?")
            where = text(entry.get("site"))
            waited = number(entry.get("blocked_seconds"))
            stack = entry.get("stack")
        else:
            name = text(entry.get(fields.name), "?")
            where = text(entry.get(fields.target))
            waited = number(entry.get(fields.seconds))
            stack = entry.get(fields.stack)
        reason = text(entry.get("reason"), "unknown")
        grade = _grade(waited or 0.0, WAIT_WARN_SECONDS, WAIT_BAD_SECONDS)
        stack_html = _stack(stack)
        detail = f"<details><summary>stack</summary>{stack_html}</details>" if stack_html else ""
        rows.append(
            f'<tr><th scope="row" title="{esc(name)}">{esc(clip(name, 40))}</th>'
            f"<td><code>{esc(reason)}</code></td>"
            f"<td>{esc(clip(where, 80))}</td>"
            + _cell(esc(seconds(waited)), waited or 0.0, grade)
            + f"<td>{detail}</td></tr>"
        )
    return "".join(rows)


def _wait_table(entries: Sequence[Mapping[str, Any]], kind: str, fields: TaskFields | None) -> str:
    head = (
        f'<thead><tr><th scope="col">{kind}</th><th scope="col">Reason</th>'
        '<th scope="col">Waiting on / where</th><th scope="col">For</th>'
        '<th scope="col">Stack</th></tr></thead>'
    )
    return (
        f'<div class="table-wrap"><table class="waits {kind.lower()}s">{head}<tbody>'
        f"{_wait_rows(entries, fields)}</tbody></table></div>"
        + _more(min(len(entries), MAX_ROWS), len(entries))
    )


def tasks_section(
    report: Mapping[str, Any] | None, live: Sequence[Mapping[str, Any]] | None
) -> str:
    """Blocked asyncio tasks: the live dump when the agent has one, and those the drain
    report says were alive at the deadline."""
    parts = []
    if live:
        parts.append("<h4>Now</h4>" + _wait_table(live, "Task", TASK_FIELDS))
    at_deadline = items((report or {}).get(TASK_FIELDS.report_key))
    if at_deadline:
        parts.append(
            "<h4>Alive at the drain deadline</h4>" + _wait_table(at_deadline, "Task", TASK_FIELDS)
        )
    if not parts:
        return '<p class="none">No blocked task reported.</p>'
    return "".join(parts)


def threads_section(report: Mapping[str, Any] | None) -> str:
    """Threads seen waiting by the agent's stack sampler, and the "last words" stacks."""
    outside = mapping((report or {}).get("outside"))
    threads = items(outside.get("blocked_threads"))
    parts = []
    if threads:
        parts.append(_wait_table(threads, "Thread", None))
    for words in items(outside.get("last_words")):
        reason = text(words.get("reason"), "?")
        captured = number(words.get("captured_at"))
        stale = " (from an earlier sample)" if words.get("stale") is True else ""
        blocks = "".join(
            f"<h5>{esc(clip(text(thread.get('thread'), '?')))} "
            f"<code>{esc(text(thread.get('reason'), '?'))}</code></h5>{_stack(thread.get('stack'))}"
            for thread in items(words.get("threads"))[:64]
        )
        parts.append(
            f'<details class="last-words"><summary>Last words: {esc(reason)}, pid '
            f"{esc(whole(words.get('pid')) or '?')}, captured {esc(clock(captured))}{esc(stale)}"
            f"</summary><p>{esc(text(words.get('note')))}</p>{blocks}</details>"
        )
    sampler = mapping(outside.get("sampler"))
    if not parts:
        unavailable = mapping(sampler.get("unavailable"))
        why = "; ".join(f"{key}: {text(value)}" for key, value in unavailable.items())
        note = f" Stack sampling is unavailable: {why}" if why else ""
        return f'<p class="none">No blocked thread seen from outside.{esc(note)}</p>'
    return "".join(parts)


def _history_bar(report: Mapping[str, Any], scale: float) -> str:
    drain = number(report.get("drain_seconds")) or 0.0
    total = number(report.get("shutdown_seconds")) or 0.0
    budget = number(report.get("budget_seconds"))
    budget_mark = ""
    if budget is not None and budget <= scale:
        budget_mark = (
            f'<line class="budget" x1="{fixed(100 * budget / scale)}%" '
            f'x2="{fixed(100 * budget / scale)}%" y1="0" y2="16"/>'
        )
    return (
        '<svg class="history-bar" width="100%" height="16" xmlns="http://www.w3.org/2000/svg">'
        f'<rect class="total" x="0" y="3" height="10" '
        f'width="{fixed(max(0.5, 100 * total / scale))}%"/>'
        f'<rect class="drain" x="0" y="3" height="10" '
        f'width="{fixed(max(0.5, 100 * drain / scale))}%"/>'
        f"{budget_mark}<title>drain {esc(seconds(drain))}, shutdown {esc(seconds(total))}"
        f"</title></svg>"
    )


def history_section(reports: Sequence[Mapping[str, Any]], service_index: int) -> str:
    """Recent drains of one service (newest first) on one scale, each with its waterfall."""
    if not reports:
        return (
            '<p class="none">No drain kept yet (with <code>--state-dir</code> they survive '
            "agent restarts).</p>"
        )
    longest = max(number(r.get("shutdown_seconds")) or 0.0 for r in reports)
    budgets = [number(r.get("budget_seconds")) or 0.0 for r in reports]
    # the budget is drawn when it is in reach, as on the waterfall
    scale = max([longest, 0.001] + [b for b in budgets if b <= 3 * longest])
    rows = []
    details = []
    for index, report in enumerate(reports[:MAX_ROWS]):
        rules = [text(v.get("rule"), "?") for v in items(report.get("violations"))]
        chips = "".join(
            f'<a class="chip" href="{esc(runbook_href(rule) or "#")}">{esc(rule)}</a>'
            for rule in rules
        )
        verdict = text(report.get("verdict"), "?")
        css = "bad" if rules else "ok"
        anchor = f"drain-{service_index}-{index}"
        started = number(report.get("started"))
        rows.append(
            f'<tr class="{css}"><td data-sort="{esc(started or 0)}"><a href="#{anchor}">'
            f"{esc(clock(started))}</a></td>"
            f"<td>{esc(whole(report.get('pid')) or '?')}</td>"
            f"<td>{esc(text(report.get('source'), '?'))}</td>"
            f'<td class="{css}">{esc(verdict)}</td>'
            f"<td>{esc(seconds(number(report.get('drain_seconds'))))}</td>"
            f"<td>{esc(seconds(number(report.get('shutdown_seconds'))))}</td>"
            f'<td class="bar-cell">{_history_bar(report, scale)}</td>'
            f"<td>{chips}</td></tr>"
        )
        details.append(
            f'<details class="past-drain" id="{anchor}"><summary>{esc(clock(started))}: '
            f"{esc(verdict)}</summary>{waterfall_svg(report)}{violations_list(report)}</details>"
        )
    head = (
        '<thead><tr><th scope="col">Began</th><th scope="col">PID</th><th scope="col">Source</th>'
        '<th scope="col">Verdict</th><th scope="col">Drain</th><th scope="col">Shutdown</th>'
        '<th scope="col">On one scale</th><th scope="col">Rules broken</th></tr></thead>'
    )
    return (
        f'<div class="table-wrap"><table class="history">{head}<tbody>{"".join(rows)}'
        f"</tbody></table></div>" + "".join(details)
    )
