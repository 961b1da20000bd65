"""The drain waterfall of one report as inline SVG: every step on one time axis from the
first signal, the grace budget, and each violation marked where it happened, linked to
its runbook.

The SVG is sized in percent across and pixels down, so it fills any width (1400 px or a
phone) while its text stays at a readable size; nothing in it is scaled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .page_html import clip, esc, fixed, items, mapping, number, offset, seconds, text, whole
from .verdicts import RULES

LABEL_END: Final = 34.0  # percent of the width used by the row labels
PLOT_START: Final = 35.0
PLOT_END: Final = 96.0
ROW_HEIGHT: Final = 22
TOP: Final = 34  # axis labels and violation markers
BOTTOM: Final = 8
LABEL_CHARS: Final = 24


def runbook_href(rule: str) -> str | None:
    """Where the agent serves the runbook of ``rule`` (known rules only)."""
    return f"/runbooks/{rule}" if rule in RULES else None


@dataclass(frozen=True, slots=True)
class Axis:
    """Offsets (seconds from the shutdown's start) to percent of the width."""

    start: float
    end: float

    def x(self, at: float) -> float:
        share = (at - self.start) / (self.end - self.start)
        return PLOT_START + (PLOT_END - PLOT_START) * min(1.0, max(0.0, share))

    def ticks(self, wanted: int = 6) -> list[float]:
        span = self.end - self.start
        raw = span / wanted
        magnitude = 10 ** math.floor(math.log10(raw))
        step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
        first = math.ceil(self.start / step) * step
        return [first + i * step for i in range(int((self.end - first) / step) + 1)]


def axis_for(report: Mapping[str, Any]) -> tuple[Axis, bool]:
    """The time axis of ``report`` and whether the budget is on it: the axis reaches the
    budget unless the shutdown used less than a third of it (then it would be a sliver)."""
    ends = [number(report.get("shutdown_seconds")) or 0.0]
    starts = [0.0]
    for step in items(report.get("steps")):
        starts.append(number(step.get("start_offset")) or 0.0)
        ends.append(number(step.get("end_offset")) or number(step.get("start_offset")) or 0.0)
    for violation in items(report.get("violations")):
        ends.append(number(violation.get("offset")) or 0.0)
    start, span_end = min(starts), max(*ends, 0.001)
    budget = number(report.get("budget_seconds"))
    on_axis = budget is not None and budget <= 3 * span_end
    end = max(span_end, budget or 0.0) if on_axis else span_end
    return Axis(start, start + (end - start) * 1.06), on_axis


def tick_label(at: float, step: float) -> str:
    """An axis label with as many decimals as the tick step needs: ``+250 ms``, ``+1.5 s``."""
    if abs(at) < step / 1000:
        return "0"
    sign = "+" if at > 0 else "\u2212"
    if step < 1.0 and abs(at) < 1.0:
        digits = max(0, -math.floor(math.log10(step * 1000)))
        return f"{sign}{abs(at) * 1000:.{digits}f} ms"
    digits = max(0, -math.floor(math.log10(step)))
    return f"{sign}{abs(at):.{digits}f} s"


def _row_label(step: Mapping[str, Any]) -> str:
    """The step's name and role (listener names carry their port already)."""
    label = text(step.get("name"), "?")
    role = text(step.get("role"))
    if step.get("kind") == "listener" or role:
        label += f" ({role or 'listener'})"
    return label


def _row_state(step: Mapping[str, Any]) -> str:
    if step.get("kind") == "killed":
        return "bad"
    if step.get("finished") is None:
        return "unfinished"
    if step.get("ok") is False:
        return "bad"
    return "ok"


def _row(index: int, step: Mapping[str, Any], axis: Axis, running: float) -> str:
    y = TOP + index * ROW_HEIGHT
    start = number(step.get("start_offset")) or 0.0
    end = number(step.get("end_offset"))
    state = _row_state(step)
    stop = end if end is not None else max(start, running)
    x0 = axis.x(start)
    width = max(0.35, axis.x(stop) - x0)
    label = _row_label(step)
    kind = text(step.get("kind"), "step")
    duration = number(step.get("duration"))
    detail = text(step.get("detail"))
    port = whole(step.get("port"))
    where = "" if port is None else f" port {port}"
    tip = f"{label}{where}: from {offset(start)}" + (
        f", took {seconds(duration)}" if duration is not None else ", never finished"
    )
    if detail:
        tip += f" \u2014 {detail}"
    after = "never finished" if end is None and kind != "killed" else seconds(duration)
    if kind in ("killed", "exit"):
        after = f"{kind} at {offset(start)}"
    after_x = min(x0 + width + 0.6, PLOT_END - 0.5)
    anchor = "end" if x0 + width > 80 else "start"
    if anchor == "end":
        after_x = max(x0 - 0.6, PLOT_START + 0.5)
    return (
        f'<g class="row kind-{esc(kind)} state-{state}">'
        f"<title>{esc(tip)}</title>"
        f'<text class="label" x="6" y="{y + 15}">{esc(clip(label, LABEL_CHARS))}</text>'
        f'<rect class="bar" x="{fixed(x0)}%" y="{y + 4}" width="{fixed(width)}%" height="14" '
        'rx="2"/>'
        f'<text class="after" x="{fixed(after_x)}%" y="{y + 15}" text-anchor="{anchor}">'
        f"{esc(after)}</text></g>"
    )


def _violation_marks(report: Mapping[str, Any], axis: Axis, bottom: int) -> list[str]:
    marks: list[str] = []
    for number_shown, violation in enumerate(items(report.get("violations")), start=1):
        at = number(violation.get("offset"))
        if at is None:
            continue
        rule = text(violation.get("rule"), "?")
        x = fixed(axis.x(at))
        tip = f"{rule} at {offset(at)}: {text(violation.get('explanation'))}"
        mark = (
            f'<line class="violation-line" x1="{x}%" x2="{x}%" y1="{TOP - 12}" y2="{bottom}"/>'
            f'<circle class="violation-dot" cx="{x}%" cy="{TOP - 12}" r="8"/>'
            f'<text class="violation-number" x="{x}%" y="{TOP - 8}" text-anchor="middle">'
            f"{number_shown}</text>"
        )
        href = runbook_href(rule)
        body = f"<title>{esc(tip)}</title>{mark}"
        if href is not None:
            body = f'<a href="{esc(href)}">{body}</a>'
        marks.append(f'<g class="violation" data-rule="{esc(rule)}">{body}</g>')
    return marks


def waterfall_svg(report: Mapping[str, Any]) -> str:
    """The waterfall of ``report`` (a ``/api/v1/report`` entry) as an ``<svg>`` element."""
    steps = items(report.get("steps"))
    axis, budget_on_axis = axis_for(report)
    height = TOP + max(1, len(steps)) * ROW_HEIGHT + BOTTOM
    bottom = height - BOTTOM
    parts: list[str] = []
    ticks = axis.ticks()
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    for index, tick in enumerate(ticks):
        x = fixed(axis.x(tick))
        parity = "odd" if index % 2 else "even"  # a narrow screen shows every other label
        parts.append(
            f'<line class="grid" x1="{x}%" x2="{x}%" y1="{TOP - 2}" y2="{bottom}"/>'
            f'<text class="tick {parity}" x="{x}%" y="{TOP - 24}" text-anchor="middle">'
            f"{esc(tick_label(tick, step))}</text>"
        )
    zero = fixed(axis.x(0.0))
    signal = text(mapping(report.get("signal")).get("name"))
    parts.append(
        f'<line class="origin" x1="{zero}%" x2="{zero}%" y1="{TOP - 2}" y2="{bottom}">'
        f"<title>{esc(signal or 'first shutdown event')} (time zero)</title></line>"
    )
    budget = number(report.get("budget_seconds"))
    if budget is not None and budget_on_axis:
        x = fixed(axis.x(budget))
        parts.append(
            f'<g class="budget"><line x1="{x}%" x2="{x}%" y1="{TOP - 2}" y2="{bottom}"/>'
            f'<text x="{x}%" y="{bottom - 2}" text-anchor="end" dx="-4">'
            f"budget {esc(seconds(budget))}</text></g>"
        )
    running = number(report.get("shutdown_seconds")) or 0.0
    if not steps:
        parts.append(
            f'<text class="empty" x="{PLOT_START}%" y="{TOP + 15}">no step reported yet</text>'
        )
    parts.extend(_row(index, step, axis, running) for index, step in enumerate(steps))
    parts.extend(_violation_marks(report, axis, bottom))
    label = (
        f"Shutdown waterfall: {len(steps)} steps, {len(items(report.get('violations')))} violations"
    )
    return (
        f'<svg class="waterfall" width="100%" height="{height}" role="img" '
        f'aria-label="{esc(label)}" xmlns="http://www.w3.org/2000/svg">' + "".join(parts) + "</svg>"
    )


def violations_list(report: Mapping[str, Any]) -> str:
    """The violations of ``report`` as an ordered list, numbered as on the waterfall."""
    rows = []
    for violation in items(report.get("violations")):
        rule = text(violation.get("rule"), "?")
        href = runbook_href(rule)
        name = f"<code>{esc(rule)}</code>"
        if href is not None:
            name = f'<a class="runbook" href="{esc(href)}">{name}</a>'
        rows.append(
            f'<li data-rule="{esc(rule)}">{name} at '
            f"{esc(offset(number(violation.get('offset'))))}: "
            f"{esc(text(violation.get('explanation')))}</li>"
        )
    if not rows:
        return '<p class="verdict-ok">No violation: the shutdown kept every rule.</p>'
    return '<ol class="violations">' + "".join(rows) + "</ol>"
