"""The agent's status page at ``/``: each service's phase, the last shutdown's waterfall,
requests in flight through it, channels, blocked tasks and threads, the shutdown topology
and the recent drains; plus the runbooks it links (``/runbooks/RULE``) and its stylesheet
and script (``/ui/...``).

The page is server-rendered HTML with inline SVG, built from the same documents the JSON
API serves (``/api/v1/state``, ``/api/v1/report?all=1``, and the task dump when the agent
has one): it shows nothing the API does not. It loads nothing from elsewhere (no CDN, no
font), and a Content-Security-Policy allows only the agent's own script and stylesheet.
A small script sorts tables and refreshes the page in place: every second while a drain
is in progress, every 2 s otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from aiohttp import web

from .page_charts import live_charts, report_charts
from .page_html import clock, esc, items, mapping, number, seconds, text
from .page_sections import (
    TASK_FIELDS,
    channels_table,
    history_section,
    tasks_section,
    threads_section,
)
from .page_topology import topology_of, topology_svg
from .page_waterfall import violations_list, waterfall_svg
from .query_params import query_error
from .report_store import DrainReports
from .state import State
from .state_json import state_document
from .verdicts import RULES

DRAINING_REFRESH_MS: Final = 1000
IDLE_REFRESH_MS: Final = 2000
ACTIVE_PHASES: Final = frozenset({"signalled", "draining", "stopping"})
PAGE_PARAMETERS: Final = frozenset({"service"})
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC: Final = {"page.css": "text/css", "page.js": "text/javascript"}

Document = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PageSources:
    """The documents the page is built from: what ``/api/v1/state?service=``,
    ``/api/v1/report?all=1&service=`` and the task dump (``TASK_FIELDS.api_path``) serve."""

    state: Callable[[str | None], Document]
    reports: Callable[[str | None], Document]
    tasks: Callable[[], Document | None] | None = None
    clock: Callable[[], float] = time.time


TasksDump = Callable[[], Document]
TASKS_KEY: Final[web.AppKey[TasksDump]] = web.AppKey("page_tasks")
SOURCES_KEY: Final = web.AppKey("page_sources", PageSources)


# -- the page ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceView:
    name: str
    state: Document  # the service's entry in /api/v1/state ({} when only reports know it)
    reports: Sequence[Document]  # newest first
    live_tasks: Sequence[Document]

    @property
    def latest(self) -> Document | None:
        return self.reports[0] if self.reports else None

    @property
    def phase(self) -> str:
        instances = items(self.state.get("instances"))
        if instances:
            newest = max(instances, key=lambda item: number(item.get("first_seen")) or 0.0)
            shutdown = mapping(newest.get("shutdown"))
            if shutdown.get("exited") is not None or newest.get("connected") is False:
                return "stopped"
            return text(shutdown.get("phase"), "running")
        latest = self.latest
        return text(latest.get("phase"), "unknown") if latest is not None else "unknown"

    @property
    def draining(self) -> bool:
        latest = self.latest
        return self.phase in ACTIVE_PHASES or (
            latest is not None and latest.get("complete") is False
        )


def _services(state: Document, reports: Document, tasks: Document | None) -> list[ServiceView]:
    by_state = {text(s.get("name"), "?"): s for s in items(state.get("services"))}
    by_reports: dict[str, list[Document]] = {}
    for report in items(reports.get("reports")):
        by_reports.setdefault(text(report.get("service"), "?"), []).append(report)
    by_tasks = {
        text(s.get("name"), "?"): items(s.get("tasks"))
        for s in items((tasks or {}).get("services"))
    }
    return [
        ServiceView(name, by_state.get(name, {}), by_reports.get(name, []), by_tasks.get(name, []))
        for name in sorted(by_state.keys() | by_reports.keys())
    ]


def _summary(view: ServiceView) -> str:
    latest = view.latest
    processes = items(view.state.get("instances"))
    pids = ", ".join(
        str(item.get("pid")) for item in processes[:5] if isinstance(item.get("pid"), int)
    )
    facts = [
        f"{len(processes)} process{'es' if len(processes) != 1 else ''}"
        + (f" (pid {pids})" if pids else "")
    ]
    if latest is not None:
        signal = mapping(latest.get("signal"))
        began = number(latest.get("started"))
        facts.append(
            f"last shutdown {text(signal.get('name'), 'without a signal')} at {clock(began)}"
        )
        budget = number(latest.get("budget_seconds"))
        drain = number(latest.get("drain_seconds"))
        used = (
            f" ({100 * drain / budget:.0f}% of the {seconds(budget)} budget)"
            if drain is not None and budget
            else ""
        )
        total = seconds(number(latest.get("shutdown_seconds")))
        facts.append(f"drain {seconds(drain)}{used}, shutdown {total}")
        cut = mapping(latest.get("inflight_at_exit"))
        left = {k: v for k, v in cut.items() if isinstance(v, int) and v > 0}
        if left:
            facts.append("in flight at exit: " + ", ".join(f"{k} {v}" for k, v in left.items()))
        if latest.get("killed") is True:
            facts.append("killed (no exit record)")
    return '<p class="summary">' + " \u00b7 ".join(esc(fact) for fact in facts) + "</p>"


def _section(title: str, body: str, css: str) -> str:
    return f'<section class="part {css}"><h3>{esc(title)}</h3>{body}</section>'


def _service_html(index: int, view: ServiceView, now: float) -> str:
    latest = view.latest
    phase = view.phase
    verdict = text(latest.get("verdict"), "") if latest is not None else ""
    verdict_css = "ok" if verdict == "OK" else "bad"
    badges = f'<span class="badge phase phase-{esc(phase)}">{esc(phase)}</span>'
    if verdict:
        badges += f'<span class="badge verdict {verdict_css}">{esc(verdict)}</span>'
    if latest is not None:
        progress = "" if latest.get("complete") is not False else " (in progress)"
        shutdown = (
            f'<div class="waterfall-wrap">{waterfall_svg(latest)}</div>{violations_list(latest)}'
        )
        shutdown_title = f"Last shutdown{progress}"
        inflight = report_charts(latest)
        inflight_title = "In flight through the drain"
        origin = number(latest.get("started"))
    else:
        shutdown = '<p class="none">No shutdown seen yet.</p>'
        shutdown_title = "Last shutdown"
        inflight = live_charts(view.state, now)
        inflight_title = "In flight (last minutes)"
        origin = None
    closed_note = " (closed at: from the last shutdown's start)" if origin is not None else ""
    parts = [
        _section(shutdown_title, shutdown, "shutdown"),
        _section(inflight_title, inflight, "inflight"),
        _section(
            "Channels" + closed_note,
            channels_table(view.state, origin, f"channels-{index}"),
            "channels",
        ),
        _section("Blocked tasks", tasks_section(latest, view.live_tasks), "tasks"),
        _section("Blocked threads and last words", threads_section(latest), "threads"),
        _section(
            "Shutdown topology",
            topology_svg(topology_of(view.state), latest, f"arrow-{index}"),
            "topology",
        ),
        _section("Recent drains", history_section(view.reports, index), "history"),
    ]
    return (
        f'<section class="service" id="service-{index}" data-phase="{esc(phase)}">'
        f'<h2><span class="service-name">{esc(view.name)}</span>{badges}</h2>'
        f"{_summary(view)}{''.join(parts)}</section>"
    )


def build_page(sources: PageSources, service: str | None = None) -> tuple[int, str]:
    """(HTTP status, HTML) of the page, for every service or only ``service``."""
    state = sources.state(service)
    reports = sources.reports(service)
    tasks = sources.tasks() if sources.tasks is not None else None
    views = [view for view in _services(state, reports, tasks) if service in (None, view.name)]
    now = sources.clock()
    draining = any(view.draining for view in views)
    agent = mapping(state.get("agent"))
    nav = "".join(
        f'<a href="#service-{index}" class="phase-{esc(view.phase)}">{esc(view.name)}</a>'
        for index, view in enumerate(views)
    )
    if views:
        body = "".join(_service_html(index, view, now) for index, view in enumerate(views))
        status = 200
    elif service is not None:
        body = f'<p class="none">The agent knows no service named "{esc(service)}".</p>'
        status = 404
    else:
        body = (
            '<p class="none">No service has reported yet. Run one under '
            "<code>drainwatch run</code> or with the SDK pointed at this agent.</p>"
        )
        status = 200
    refresh = DRAINING_REFRESH_MS if draining else IDLE_REFRESH_MS
    title = f"drainwatch \u00b7 {service}" if service else "drainwatch"
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title>"
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/ui/page.css">'
        '<script src="/ui/page.js" defer></script>'
        '</head><body><header class="top"><h1>drainwatch</h1>'
        f'<span class="agent">agent {esc(text(agent.get("version"), "?"))}</span>'
        f'<span id="live" class="live{" draining" if draining else ""}">'
        f"{'drain in progress: ' if draining else ''}updated {esc(clock(now)[11:])}</span>"
        f'</header><nav class="services">{nav}</nav>'
        f'<main id="content" data-refresh-ms="{refresh}" data-draining="{str(draining).lower()}">'
        f"{body}</main>"
        '<footer>JSON: <a href="/api/v1/state">/api/v1/state</a> \u00b7 '
        '<a href="/api/v1/report?all=1">/api/v1/report</a> \u00b7 '
        '<a href="/metrics">/metrics</a> \u00b7 runbooks: '
        + " ".join(f'<a href="/runbooks/{rule}">{rule}</a>' for rule in RULES)
        + "</footer></body></html>"
    )
    return status, page


# -- HTTP -------------------------------------------------------------------------------------


def _html(status: int, page: str) -> web.Response:
    return web.Response(
        text=page,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers=SECURITY_HEADERS,
    )


def _error_page(status: int, message: str) -> web.Response:
    return _html(
        status,
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>drainwatch</title>'
        '<link rel="stylesheet" href="/ui/page.css"></head><body><main>'
        f'<p class="error">{esc(message)}</p><p><a href="/">Back to the status page</a></p>'
        "</main></body></html>",
    )


async def status_page(request: web.Request) -> web.Response:
    error = query_error(request, PAGE_PARAMETERS)
    if error is not None:
        return _error_page(400, error)
    sources = request.app[SOURCES_KEY]
    loop = asyncio.get_running_loop()
    status, page = await loop.run_in_executor(
        None, build_page, sources, request.query.get("service")
    )
    return _html(status, page)


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = _STATIC.get(name)
    if content_type is None:
        raise web.HTTPNotFound
    body = (resources.files(__package__) / "page_static" / name).read_text(encoding="utf-8")
    return web.Response(
        text=body,
        content_type=content_type,
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
    )


async def runbook(request: web.Request) -> web.Response:
    """``/runbooks/RULE``: the runbook shipped with the agent, for the eight rules only."""
    rule = request.match_info["rule"]
    if rule not in RULES:
        return _error_page(
            404, f"no runbook named {rule[:80]!r}; the rules are: {', '.join(RULES)}"
        )
    markdown = (resources.files(__package__) / "runbooks" / f"{rule}.md").read_text(
        encoding="utf-8"
    )
    return _html(
        200,
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>runbook: {esc(rule)}</title><link rel="stylesheet" href="/ui/page.css"></head>'
        f'<body><header class="top"><h1>drainwatch</h1><a href="/">status page</a></header>'
        f'<main><article class="runbook" id="runbook"><pre>{esc(markdown)}</pre></article></main>'
        "</body></html>",
    )


def add_page_routes(app: web.Application, state: State, reports: DrainReports) -> None:
    """Serve the status page at ``/`` from ``state`` and ``reports``, and from the task dump
    when the app holds one under ``TASKS_KEY`` (looked up on each request)."""

    def tasks() -> Document | None:
        dump = app.get(TASKS_KEY)
        return dump() if dump is not None else None

    app[SOURCES_KEY] = PageSources(
        state=lambda service: state_document(state, service),
        reports=lambda service: reports.document(service, True),
        tasks=tasks,
    )
    app.router.add_get("/", status_page)
    app.router.add_get("/ui/{name}", static_file)
    app.router.add_get("/runbooks/{rule}", runbook)


__all__ = ["TASK_FIELDS", "PageSources", "add_page_routes", "build_page"]
