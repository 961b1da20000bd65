"""Requests in flight over time, one small chart per (protocol, method).

Through a drain the points come from the report (``requests[].inflight_series``), drawn on
offsets from the shutdown's start with the signal and the end of the drain marked; before
any shutdown they come from ``/api/v1/state`` (every process of the service added up),
drawn over the last minutes up to now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .page_html import clip, esc, fixed, items, number, seconds, text

WIDTH: Final = 1000.0  # the chart's own units across; the SVG stretches to the page
HEIGHT: Final = 80.0
LIVE_WINDOW_SECONDS: Final = 300.0


@dataclass(frozen=True, slots=True)
class Series:
    """One method's step series, on seconds relative to ``zero``."""

    protocol: str
    method: str
    points: tuple[tuple[float, int], ...]  # (seconds from zero, requests in flight)


def _points(raw: object, zero: float) -> tuple[tuple[float, int], ...]:
    found: list[tuple[float, int]] = []
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        return ()
    for point in raw:
        if not isinstance(point, Sequence) or isinstance(point, str | bytes) or len(point) != 2:
            continue
        at, count = number(point[0]), number(point[1])
        if at is not None and count is not None:
            found.append((at - zero, max(0, int(count))))
    found.sort(key=lambda item: item[0])
    return tuple(found)


def report_series(report: Mapping[str, Any]) -> list[Series]:
    """The in-flight series of a drain report, relative to its start."""
    zero = number(report.get("started"))
    if zero is None:
        return []
    found = []
    for request in items(report.get("requests")):
        points = _points(request.get("inflight_series"), zero)
        if points:
            found.append(
                Series(text(request.get("protocol"), "?"), text(request.get("method"), "?"), points)
            )
    return found


def live_series(service: Mapping[str, Any], now: float) -> list[Series]:
    """In flight per method over the last minutes, all processes of the service added up."""
    per_method: dict[tuple[str, str], list[list[tuple[float, int]]]] = {}
    for instance in items(service.get("instances")):
        for request in items(instance.get("requests")):
            key = (text(request.get("protocol"), "?"), text(request.get("method"), "?"))
            points = _points(request.get("inflight_series"), now)
            if points:
                per_method.setdefault(key, []).append(list(points))
    found = []
    for (protocol, method), serieses in sorted(per_method.items()):
        found.append(Series(protocol, method, _sum_steps(serieses)))
    return found


def _sum_steps(serieses: list[list[tuple[float, int]]]) -> tuple[tuple[float, int], ...]:
    """Step functions added up: at each change of any series, the sum of the latest counts."""
    events = sorted(
        (at, index, count) for index, points in enumerate(serieses) for at, count in points
    )
    current = [0] * len(serieses)
    summed: list[tuple[float, int]] = []
    for at, index, count in events:
        current[index] = count
        if summed and summed[-1][0] == at:
            summed[-1] = (at, sum(current))
        else:
            summed.append((at, sum(current)))
    return tuple(summed)


def chart_svg(series: Series, start: float, end: float, marks: Sequence[tuple[float, str]]) -> str:
    """A step chart of ``series`` between ``start`` and ``end`` (seconds), with vertical
    ``marks`` (seconds, label) such as the signal and the end of the drain."""
    span = max(end - start, 1e-6)
    peak = max((count for _, count in series.points), default=0)
    top = max(peak, 1)

    def x(at: float) -> float:
        return WIDTH * min(1.0, max(0.0, (at - start) / span))

    def y(count: int) -> float:
        return HEIGHT - 4 - (HEIGHT - 8) * count / top

    path: list[str] = []
    last_count = 0
    for index, (at, count) in enumerate(series.points):
        if index == 0:
            path.append(f"M{fixed(x(at))},{fixed(y(count))}")
        else:
            path.append(f"H{fixed(x(at))}V{fixed(y(count))}")
        last_count = count
    path.append(f"H{fixed(x(end))}")
    area = "".join(path) + f"V{fixed(HEIGHT)}H{fixed(x(series.points[0][0]))}Z"
    guides = "".join(
        f'<line class="mark" x1="{fixed(x(at))}" x2="{fixed(x(at))}" y1="0" y2="{HEIGHT}">'
        f"<title>{esc(label)}</title></line>"
        for at, label in marks
        if start <= at <= end
    )
    name = f"{series.protocol} {series.method}"
    return (
        f'<figure class="inflight-chart" data-method="{esc(series.method)}">'
        f'<figcaption><span class="method" title="{esc(name)}">{esc(clip(name))}</span>'
        f'<span class="figures">peak {peak} \u00b7 last {last_count}</span></figcaption>'
        f'<svg class="inflight" viewBox="0 0 {fixed(WIDTH, 0)} {fixed(HEIGHT, 0)}" '
        f'preserveAspectRatio="none" width="100%" height="{fixed(HEIGHT, 0)}" role="img" '
        f'aria-label="{esc(f"{name}: in flight over time, peak {peak}")}" '
        'xmlns="http://www.w3.org/2000/svg">'
        f'<path class="area" d="{area}"/>'
        f'<path class="line" d="{"".join(path)}" vector-effect="non-scaling-stroke"/>'
        f"{guides}</svg>"
        f'<div class="chart-axis"><span>{esc(_axis_label(start))}</span>'
        f"<span>{esc(_axis_label(end))}</span></div></figure>"
    )


def _axis_label(at: float) -> str:
    if abs(at) < 1e-9:
        return "0"
    return ("+" if at > 0 else "\u2212") + seconds(abs(at))


def charts_html(
    serieses: Sequence[Series], start: float, end: float, marks: Sequence[tuple[float, str]]
) -> str:
    """Every chart, in a grid; an explanation when there is nothing to draw."""
    if not serieses:
        return (
            '<p class="none">No request was tracked (gRPC, aiohttp and ASGI servers are, '
            "under <code>drainwatch run</code>).</p>"
        )
    return (
        '<div class="charts">'
        + "".join(chart_svg(s, start, end, marks) for s in serieses)
        + "</div>"
    )


def report_charts(report: Mapping[str, Any]) -> str:
    """In flight through the drain of ``report``: from 5 s before the signal to its end."""
    serieses = report_series(report)
    end = number(report.get("shutdown_seconds")) or 0.0
    start = min((s.points[0][0] for s in serieses), default=0.0)
    start = min(start, 0.0)
    marks: list[tuple[float, str]] = [(0.0, "shutdown began (time zero)")]
    drain = number(report.get("drain_seconds"))
    if drain is not None:
        marks.append((drain, f"drain over at +{seconds(drain)}"))
    return charts_html(serieses, start, max(end, start + 0.001), marks)


def live_charts(service: Mapping[str, Any], now: float) -> str:
    """In flight per method now and over the last five minutes (no shutdown yet)."""
    serieses = live_series(service, now)
    start = max(min((s.points[0][0] for s in serieses), default=0.0), -LIVE_WINDOW_SECONDS)
    return charts_html(serieses, min(start, -1.0), 0.0, [])
