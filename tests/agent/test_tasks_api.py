"""``GET /api/v1/tasks`` and ``drainwatch tasks``: the document, bad queries, bad agents, and
drain reports that keep what was alive at the deadline across a restart."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from drainwatch.agent.http_api import build_app
from drainwatch.agent.report_json import ReportFormatError, report_from_json
from drainwatch.agent.report_store import DrainReports
from drainwatch.agent.tasks_cli import render, run_tasks
from prometheus_client import CollectorRegistry

from tests.agent.shutdowns import T0, FakeTime, SdkProcess, make_state
from tests.records import loop_record, task_wait, thread_wait, threads_record


async def _get(state: Any, path: str) -> tuple[int, Any]:
    app = build_app(state, CollectorRegistry(), lambda: True)
    async with TestClient(TestServer(app)) as client:
        response = await client.get(path)
        return response.status, await response.json()


def get(state: Any, path: str) -> tuple[int, Any]:
    return asyncio.run(asyncio.wait_for(_get(state, path), 10))


def test_tasks_endpoint_serves_each_service_and_filters_by_name(clock: FakeTime) -> None:
    """/api/v1/tasks lists every service's processes; ?service= keeps one."""
    state, feed = make_state(clock)
    feed.send("a", [loop_record(1, task_wait("consumer", "channel_receive", 3.0, "idle"))])
    feed.send("b", [threads_record(thread_wait("worker", "queue_get", 2.0))], service="cart")
    status, body = get(state, "/api/v1/tasks")
    assert status == 200
    assert [service["name"] for service in body["services"]] == ["cart", "checkout"]
    status, body = get(state, "/api/v1/tasks?service=checkout")
    [service] = body["services"]
    [instance] = service["instances"]
    assert instance["loops"][0]["top"][0]["target"] == "idle"
    assert get(state, "/api/v1/tasks?service=%3Cscript%3E")[1]["services"] == []


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("?bogus=1", "unknown query parameter 'bogus'; this endpoint takes: service"),
        ("?service=a&service=b", '"service" may be given once'),
        ("?service=" + "s" * 5000, '"service" must be 1 to 256 characters'),
        ("?service=", '"service" must be 1 to 256 characters'),
        ("?" + "x" * 300 + "=1", "unknown query parameter"),
    ],
)
def test_tasks_endpoint_refuses_bad_queries_with_a_reason(
    clock: FakeTime, query: str, reason: str
) -> None:
    """Unknown, repeated, empty or oversized parameters get a 400 naming the problem."""
    state, _ = make_state(clock)
    status, body = get(state, "/api/v1/tasks" + query)
    assert status == 400
    assert body["error"].startswith(reason)
    assert len(body["error"]) < 400  # a hostile name is not echoed whole


def test_render_groups_tasks_and_names_each_process() -> None:
    """The command's text: service, process, loop, grouped tasks with stacks, threads."""
    consumers = [task_wait(f"consumer-{i}", "channel_receive", 42.0, "idle") for i in range(3)]
    loop = loop_record(1, *consumers)
    loop["sites"] = [
        {
            **loop["sites"][0],
            "count": 3,
            "tasks": [{"name": f"consumer-{i}", "wait": 42.0, "age": 42.0} for i in range(3)],
        }
    ]
    document = {
        "now": T0,
        "services": [
            {
                "name": "checkout",
                "instances": [
                    {
                        "instance": "abc",
                        "pid": 42,
                        "connected": True,
                        "loops": [{**loop, "sampled_at": T0 - 0.5}],
                        "threads": threads_record(thread_wait("worker", "queue_get", 5.0)),
                    }
                ],
                "pyspy_threads": threads_record(thread_wait("worker", "queue_get", 4.0)),
            }
        ],
    }
    text = render(document)
    assert "service checkout" in text
    assert "  pid 42  instance abc  (connected, sampled 0.5s ago)" in text
    assert (
        '      3 tasks [channel_receive "idle", 42s]: "consumer-0", "consumer-1", "consumer-2"'
        in text
    )
    assert "        consumer-0_body (app.py:12)" in text
    assert "    threads (sdk): 2, 1 waiting" in text
    assert "  threads (py-spy): 2, 1 waiting" in text
    assert render({"services": []}).startswith("No task or thread reported yet")


class _Answer(http.server.BaseHTTPRequestHandler):
    body = b""
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def answering(status: int, body: bytes) -> Iterator[str]:
    """An HTTP server that answers every GET with ``status`` and ``body``."""
    handler = type("Handler", (_Answer,), {"status": status, "body": body})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (200, b"<html>not json</html>", "did not answer with JSON"),
        (200, b'{"reports": []}', "answered without a service list"),
        (200, b"[1, 2]", "answered without a service list"),
        (400, b'{"error": "\\"service\\" may be given once"}', "refused the request (HTTP 400)"),
        (500, b"x" * 100_000, "refused the request (HTTP 500)"),
    ],
)
def test_the_command_names_what_is_wrong_with_the_agent_it_asked(
    status: int, body: bytes, message: str
) -> None:
    """Anything but a tasks document is exit code 2 with a message saying what came back."""
    out, err = io.StringIO(), io.StringIO()
    with answering(status, body) as url:
        code = run_tasks(url, None, False, timeout=5, out=out, err=err)
    assert code == 2 and out.getvalue() == ""
    assert message in err.getvalue()
    assert len(err.getvalue()) < 1000


@pytest.mark.parametrize(
    ("agent", "message"),
    [
        ("127.0.0.1:9469", "--agent must be an http:// URL"),
        ("ftp://127.0.0.1:9469", "--agent must be an http:// URL"),
        ("http://127.0.0.1:1", "cannot reach the agent at http://127.0.0.1:1"),
    ],
)
def test_the_command_refuses_a_bad_agent_url_and_an_absent_agent(agent: str, message: str) -> None:
    """A malformed --agent or nobody listening: exit code 2 and the next step."""
    err = io.StringIO()
    assert run_tasks(agent, None, False, timeout=2, out=io.StringIO(), err=err) == 2
    assert message in err.getvalue()


def test_a_report_with_the_tasks_at_the_deadline_and_stalls_reads_back_from_its_json(
    clock: FakeTime, sdk: SdkProcess
) -> None:
    """Saved reports keep tasks_at_deadline and the shutdown's loop stalls (not the ones
    before it); a malformed field is named."""
    state, feed = make_state(clock)
    reports = DrainReports(state, budget_seconds=1.0, clock=clock)
    sdk.at(0).note_signal(15)
    stall = {"at": T0 + 0.2, "seconds": 0.5, "ongoing": False, "stack": ["slow (app.py:3)"]}
    early = {"at": T0 - 9, "seconds": 0.5, "ongoing": False, "stack": ["boot (app.py:1)"]}
    task = task_wait("stuck", "lock", 2.0)
    feed.send("a", [*sdk.records(), loop_record(1, task, stalls=[early, stall], stalls_total=2)])
    clock.now = T0 + 2
    reports.refresh()
    [report] = reports.reports()
    assert [item["stack"] for item in report.loop_stalls] == [["slow (app.py:3)"]]
    saved = json.loads(json.dumps(report.to_json()))
    restored = report_from_json(saved)
    assert restored.tasks_at_deadline == saved["tasks_at_deadline"]
    assert restored.tasks_at_deadline is not None
    assert [dict(item) for item in restored.loop_stalls] == saved["loop_stalls"]
    with pytest.raises(ReportFormatError, match="tasks_at_deadline: expected an object"):
        report_from_json({**saved, "tasks_at_deadline": ["x"]})
    del saved["tasks_at_deadline"]  # saved before the field existed
    assert report_from_json(saved).tasks_at_deadline is None
