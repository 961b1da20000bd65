"""The status page without a browser: what it renders from the API documents (escaping,
odd and oversized input, the waterfall's geometry, the topology's order) and its HTTP
surface (query string, security headers, stylesheet and script, runbooks)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from drainwatch.agent.http_api import build_app
from drainwatch.agent.page_sections import MAX_ROWS, TASK_FIELDS
from drainwatch.agent.page_topology import stop_levels
from drainwatch.agent.page_waterfall import PLOT_END, PLOT_START, axis_for, tick_label
from drainwatch.agent.report_store import DrainReports
from drainwatch.agent.status_page import (
    CONTENT_SECURITY_POLICY,
    TASKS_KEY,
    PageSources,
    build_page,
)
from drainwatch.agent.verdicts import RULES
from prometheus_client import CollectorRegistry

from tests.agent.shutdowns import SIGTERM, T0, FakeTime, SdkProcess, make_state
from tests.aio import run

EVIL = "<x-evil onload=\"alert('1')\">&amp;</x-evil>"
ESCAPED = "&lt;x-evil onload=&quot;alert(&#x27;1&#x27;)&quot;&gt;&amp;amp;&lt;/x-evil&gt;"


def _stack() -> list[str]:
    return [f"{EVIL} ({EVIL}.py:1)", "handler (app.py:7)"]


def _wait(name_key: str) -> dict[str, Any]:
    return {
        name_key: EVIL,
        "reason": EVIL,
        "site": EVIL,
        "waiting_on": EVIL,
        "blocked_seconds": 12.5,
        "stack": _stack(),
    }


def hostile_documents() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """State, report and task documents with a hostile string in every text field."""
    channel = {
        "name": EVIL,
        "depth": 3,
        "capacity": 10,
        "closed": T0 + 1,
        "drained": None,
        "residual": 3,
        "read_after_close": 2,
        "send_after_close": 1,
        "double_close": 1,
        "waiters": {"send": 1, "receive": 2},
        "oldest_wait": {"send": 0.5, "receive": 7.0},
        "health_score": 20.0,
    }
    topology = {
        "components": [
            {"name": EVIL, "depends_on": [f"{EVIL}-db"], "role": EVIL},
            {"name": f"{EVIL}-db", "depends_on": [], "role": "business"},
        ]
    }
    instance = {
        "pid": 42,
        "first_seen": T0,
        "connected": True,
        "shutdown": {"phase": "draining", "topology": topology},
        "requests": [
            {
                "protocol": EVIL,
                "method": EVIL,
                "inflight_series": [[T0 - 10, 1], [T0 - 5, 4]],
            }
        ],
    }
    state = {
        "agent": {"version": EVIL},
        "services": [{"name": EVIL, "channels": [channel], "instances": [instance]}],
    }
    step = {
        "name": EVIL,
        "kind": "listener",
        "role": EVIL,
        "port": 8080,
        "started": T0 + 0.1,
        "finished": None,
        "start_offset": 0.1,
        "end_offset": None,
        "duration": None,
        "ok": None,
        "detail": EVIL,
    }
    report = {
        "service": EVIL,
        "pid": 42,
        "phase": EVIL,
        "complete": False,
        "killed": True,
        "signal": {"name": EVIL, "at": T0},
        "started": T0,
        "budget_seconds": 30.0,
        "drain_seconds": 2.0,
        "shutdown_seconds": 3.0,
        "steps": [
            step,
            {**step, "name": EVIL, "kind": EVIL, "finished": T0 + 1, "end_offset": 1.0},
        ],
        "inflight_at_exit": {EVIL: 3},
        "requests": [{"protocol": EVIL, "method": EVIL, "inflight_series": [[T0, 3], [T0 + 2, 0]]}],
        "violations": [
            {"rule": EVIL, "explanation": EVIL, "at": T0 + 1, "offset": 1.0, "runbook": EVIL},
            {"rule": "inflight_at_exit", "explanation": EVIL, "at": T0 + 2, "offset": 2.0},
        ],
        "verdict": EVIL,
        "source": EVIL,
        TASK_FIELDS.report_key: [_wait(TASK_FIELDS.name)],
        "outside": {
            "blocked_threads": [_wait("thread")],
            "last_words": [
                {
                    "reason": EVIL,
                    "pid": 42,
                    "captured_at": T0 + 3,
                    "stale": True,
                    "note": EVIL,
                    "threads": [{"thread": EVIL, "reason": EVIL, "stack": _stack()}],
                }
            ],
            "sampler": {"unavailable": {EVIL: EVIL}},
        },
    }
    tasks = {"services": [{"name": EVIL, "tasks": [_wait(TASK_FIELDS.name)]}]}
    return state, {"reports": [report]}, tasks


def _sources(
    state: dict[str, Any], reports: dict[str, Any], tasks: dict[str, Any] | None = None
) -> PageSources:
    return PageSources(
        state=lambda _: state,
        reports=lambda _: reports,
        tasks=(lambda: tasks) if tasks is not None else None,
        clock=lambda: T0 + 5,
    )


def test_every_hostile_string_is_escaped_wherever_it_is_shown() -> None:
    """No text from a document reaches the page as markup: each one shows escaped."""
    state, reports, tasks = hostile_documents()
    status, page = build_page(_sources(state, reports, tasks))
    assert status == 200
    assert "<x-evil" not in page and "</x-evil" not in page
    assert page.count(ESCAPED) >= 25
    for section in ("waterfall", "inflight", "channels", "tasks", "threads", "topology", "history"):
        part = re.search(rf'class="(?:part )?{section}.*?</section>', page, re.S)
        assert part is not None and "&lt;x-evil" in part.group(0), section


def test_a_rule_the_agent_does_not_know_is_shown_but_never_linked() -> None:
    """Only the eight rules link to /runbooks/RULE; the report's own runbook field is unused."""
    state, reports, _ = hostile_documents()
    _, page = build_page(_sources(state, reports))
    links = set(re.findall(r'href="(/runbooks/[^"]*)"', page))
    assert links <= {f"/runbooks/{rule}" for rule in RULES}
    assert "/runbooks/inflight_at_exit" in links


def _mutations(document: Any) -> Iterator[Any]:
    """Copies of ``document`` with one field replaced by a value of the wrong kind."""
    odd_values: list[Any] = [None, "text", -1, 1e308, True, [], {}, [[None]], {"x": [1]}]
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*path, key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, (*path, index))

    walk(document, ())
    for path in paths[1:]:
        for odd in odd_values:
            mutated = copy.deepcopy(document)
            node = mutated
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = odd
            yield mutated


def test_documents_with_fields_of_the_wrong_kind_still_render() -> None:
    """Any field of the state, report or task documents may be missing or odd: the page
    renders (the documents are the agent's own, but saved reports come from disk)."""
    state, reports, tasks = hostile_documents()
    rendered = 0
    for odd_state in _mutations(state):
        assert build_page(_sources(odd_state, reports, tasks))[0] in (200, 404)
        rendered += 1
    for odd_reports in _mutations(reports):
        assert build_page(_sources(state, odd_reports, tasks))[0] in (200, 404)
        rendered += 1
    for odd_tasks in _mutations(tasks):
        assert build_page(_sources(state, reports, odd_tasks))[0] in (200, 404)
        rendered += 1
    assert rendered > 1000


def test_oversized_documents_are_cut_to_a_bounded_page() -> None:
    """10,000 channels and kilobyte-long names: at most MAX_ROWS rows, names clipped."""
    long_name = "n" * 5000
    channels = [{"name": f"{long_name}{i}", "depth": i} for i in range(10_000)]
    state = {"services": [{"name": long_name, "channels": channels, "instances": []}]}
    _, page = build_page(_sources(state, {"reports": []}))
    assert page.count('<tr><th scope="row"') == MAX_ROWS
    assert f"{10_000 - MAX_ROWS} more not shown" in page
    assert len(page) < 3_000_000


def test_no_service_and_an_unknown_service_say_so() -> None:
    """An empty agent explains how to report; an unknown ``service`` is a 404, escaped."""
    empty = _sources({"services": []}, {"reports": []})
    status, page = build_page(empty)
    assert status == 200 and "No service has reported yet" in page
    status, page = build_page(empty, EVIL)
    assert status == 404 and ESCAPED in page and "<x-evil" not in page


def test_violations_sit_on_the_axis_where_they_happened() -> None:
    """A violation at +2 s of a 10 s shutdown is drawn a fifth of the way along its axis."""
    report = {
        "started": T0,
        "budget_seconds": 10.0,
        "shutdown_seconds": 10.0,
        "steps": [],
        "violations": [{"rule": "inflight_at_exit", "offset": 2.0}],
    }
    axis, budget_shown = axis_for(report)
    assert budget_shown
    fifth = PLOT_START + (PLOT_END - PLOT_START) * 2.0 / 10.6  # the axis runs 6% past the end
    assert axis.x(2.0) == pytest.approx(fifth)
    _, page = build_page(
        _sources({"services": []}, {"reports": [{**report, "service": "s", "complete": True}]})
    )
    expected = f"{fifth:.2f}%"
    assert f'<line class="violation-line" x1="{expected}"' in page


def test_a_budget_far_beyond_a_short_shutdown_is_left_off_the_axis() -> None:
    """A 0.3 s shutdown against a 30 s budget is drawn at full width, without the budget."""
    axis, budget_shown = axis_for({"budget_seconds": 30.0, "shutdown_seconds": 0.3, "steps": []})
    assert not budget_shown
    assert axis.end == pytest.approx(0.3 * 1.06)


@pytest.mark.parametrize(
    ("at", "step", "label"),
    [(0.0, 0.001, "0"), (0.002, 0.001, "+2 ms"), (0.25, 0.05, "+250 ms"), (1.5, 0.5, "+1.5 s")],
)
def test_axis_labels_carry_the_decimals_their_step_needs(
    at: float, step: float, label: str
) -> None:
    """Tick labels never round two ticks to the same text."""
    assert tick_label(at, step) == label


def test_the_topology_stops_dependents_first_and_health_last_even_with_a_cycle() -> None:
    """grpc before db (it uses db); health after every business component; a cycle is
    drawn as one last column instead of failing."""
    components: list[dict[str, Any]] = [
        {"name": "db", "depends_on": [], "role": "business"},
        {"name": "grpc", "depends_on": ["db", "ghost"], "role": "business"},
        {"name": "health", "depends_on": [], "role": "health"},
        {"name": "a", "depends_on": ["b"], "role": "business"},
        {"name": "b", "depends_on": ["a"], "role": "business"},
    ]
    assert stop_levels(components) == [["grpc"], ["db"], ["a", "b"], ["health"]]


def test_live_in_flight_adds_up_the_processes_of_a_service() -> None:
    """Before any shutdown, the chart is the sum over the service's processes."""
    process = {
        "first_seen": T0,
        "requests": [{"protocol": "grpc", "method": "/m", "inflight_series": [[T0, 2]]}],
    }
    other = {
        **process,
        "requests": [{"protocol": "grpc", "method": "/m", "inflight_series": [[T0 + 1, 3]]}],
    }
    state = {"services": [{"name": "s", "channels": [], "instances": [process, other]}]}
    _, page = build_page(_sources(state, {"reports": []}))
    assert "peak 5" in page and "In flight (last minutes)" in page


# -- HTTP -------------------------------------------------------------------------------------


def _drained_reports(sdk: SdkProcess, clock: FakeTime) -> DrainReports:
    state, feed = make_state(clock)
    reports = DrainReports(state, 30.0, clock=clock)
    requests = sdk.start("grpc", "/pay.Payments/Charge", 2)
    sdk.at(1).note_signal(SIGTERM)
    feed.send("a", sdk.records(), service="checkout")
    sdk.finish(requests)
    sdk.exit(2)
    feed.send("a", sdk.records(), service="checkout")
    state.disconnected("a")
    return reports


async def _fetch(
    reports: DrainReports, path: str, tasks: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], str]:
    app = build_app(reports._state, CollectorRegistry(), lambda: True, reports)
    if tasks is not None:
        app[TASKS_KEY] = lambda: tasks
    async with TestClient(TestServer(app)) as client:
        response = await client.get(path)
        return response.status, dict(response.headers), await response.text()


def test_the_page_is_served_with_a_strict_content_security_policy(
    sdk: SdkProcess, clock: FakeTime
) -> None:
    """``/`` is HTML built from the agent's state and reports, locked to its own assets."""
    status, headers, page = run(_fetch(_drained_reports(sdk, clock), "/"))
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "checkout" in page and '<svg class="waterfall"' in page
    assert "peak 2" in page
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page), "nothing loads from elsewhere"


def test_the_tasks_dump_is_rendered_when_the_agent_has_one(
    sdk: SdkProcess, clock: FakeTime
) -> None:
    """A task dump under TASKS_KEY is shown for its service with reason and duration."""
    dump = {
        "services": [
            {
                "name": "checkout",
                "tasks": [
                    {
                        TASK_FIELDS.name: "consumer-0",
                        TASK_FIELDS.reason: "channel_receive",
                        TASK_FIELDS.target: "orders",
                        TASK_FIELDS.seconds: 42.0,
                        TASK_FIELDS.stack: ["consume (app.py:9)"],
                    }
                ],
            }
        ]
    }
    _, _, page = run(_fetch(_drained_reports(sdk, clock), "/", dump))
    assert "consumer-0" in page and "channel_receive" in page and "42.00 s" in page


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("?bogus=1", "unknown query parameter &#x27;bogus&#x27;; this endpoint takes: service"),
        ("?service=a&service=b", "&quot;service&quot; may be given once"),
        ("?service=" + "s" * 300, "&quot;service&quot; must be 1 to 256 characters"),
        ("?service=", "&quot;service&quot; must be 1 to 256 characters"),
        ("?%3Cx-evil%3E=1", "unknown query parameter &#x27;&lt;x-evil&gt;&#x27;"),
    ],
)
def test_a_bad_query_string_gets_a_400_page_naming_the_problem(
    sdk: SdkProcess, clock: FakeTime, query: str, reason: str
) -> None:
    """Unknown, repeated, empty, oversized and hostile parameters are refused, escaped."""
    status, headers, page = run(_fetch(_drained_reports(sdk, clock), "/" + query))
    assert status == 400 and reason in page
    assert "<x-evil" not in page
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_one_service_can_be_shown_alone(sdk: SdkProcess, clock: FakeTime) -> None:
    """``?service=NAME`` shows that service; another name is a 404 page."""
    reports = _drained_reports(sdk, clock)
    status, _, page = run(_fetch(reports, "/?service=checkout"))
    assert status == 200 and page.count('class="service"') == 1
    status, _, page = run(_fetch(reports, "/?service=nope"))
    assert status == 404 and "no service named" in page


@pytest.mark.parametrize(
    ("path", "status", "content_type"),
    [
        ("/ui/page.css", 200, "text/css"),
        ("/ui/page.js", 200, "text/javascript"),
        ("/ui/other.js", 404, None),
        ("/ui/..%2Fstatus_page.py", 404, None),
        ("/runbooks/inflight_at_exit", 200, "text/html"),
        ("/runbooks/..%2F..%2Fpyproject.toml", 404, "text/html"),
        ("/runbooks/%3Cx-evil%3E", 404, "text/html"),
        ("/runbooks/" + "r" * 5000, 404, "text/html"),
    ],
)
def test_assets_and_runbooks_are_served_by_name_and_nothing_else(
    sdk: SdkProcess, clock: FakeTime, path: str, status: int, content_type: str | None
) -> None:
    """Only the page's two assets and the eight runbooks exist; other names are 404."""
    got, headers, body = run(_fetch(_drained_reports(sdk, clock), path))
    assert got == status
    if content_type is not None:
        assert headers["Content-Type"].startswith(content_type)
    assert "<x-evil" not in body
    if path.startswith("/runbooks/inflight_at_exit"):
        assert "# `inflight_at_exit`" in body and "## Fix" in body
