"""The status page in a real browser (headless Debian chromium) after real drains: the
post-mortem's broken gRPC service shut down by SIGTERM with 10 payments in flight under
``drainwatch run``, and a service whose names are HTML, both reporting to a real agent."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from drainwatch.agent.loadgen import GrpcBurst, free_port, wait_for_port
from playwright.sync_api import ConsoleMessage, Page

from tests.browser import DESKTOP, PHONE, assert_not_blank, chromium
from tests.processes import AgentProcess, run_target, short_tmpdir

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PAYMENTS = ROOT / "examples" / "services" / "payments_grpc_aio.py"
METHOD = "/payments.Payments/Pay"
IN_FLIGHT = 10
BUDGET_SECONDS = 20
BROKEN = "payments-broken"
HOSTILE = '<img src=x onerror="window.pwned=1">&amp;<b>orders</b>'
HOSTILE_CHANNEL = "<script>window.pwned=2</script>"
BROKEN_RULES = {
    "health_closed_before_business",
    "readiness_not_failed_first",
    "inflight_at_exit",
    "exited_before_stop_completed",
}

HOSTILE_TARGET = f"""
    import drainwatch

    held = drainwatch.ThreadChannel({HOSTILE_CHANNEL!r}, maxsize=10)
    for item in range(3):
        held.put(item)
    held.close()  # closed with 3 items still buffered: residual at close
    empty = drainwatch.ThreadChannel("audit")
    empty.close()
    for _ in range(2):
        try:
            empty.get_nowait()  # read after close
        except drainwatch.ChannelClosed:
            pass
    drainwatch.flush()
"""
COORDINATED = "orders-coordinated"
COORDINATED_TARGET = """
    import asyncio

    import drainwatch


    async def stopped() -> None:
        await asyncio.sleep(0.05)


    async def main() -> None:
        coordinator = drainwatch.ShutdownCoordinator(propagation_wait=0.1, cancel_tasks=False)
        coordinator.add("health", stopped, role="health")
        coordinator.add("db", stopped)
        coordinator.add("grpc", stopped, depends_on=["db"])
        coordinator.add("worker", stopped, depends_on=["db"])
        coordinator.install()
        await coordinator.shutdown()
        drainwatch.flush()


    asyncio.run(main())
"""


@dataclass
class Site:
    agent: AgentProcess
    state_dir: str


async def _drain(agent: AgentProcess, service: str, variant: str, request_ms: int) -> None:
    """Run the example payment service, put 10 payments in flight, SIGTERM it, wait."""
    port, health_port = free_port(), free_port()
    command = [
        *(sys.executable, "-m", "drainwatch", "run", "--service", service),
        *("--endpoint", agent.endpoint, "--", sys.executable, str(PAYMENTS)),
        *("--port", str(port), "--health-port", str(health_port), "--shutdown", variant),
        *("--propagation", "0.3"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert await wait_for_port("127.0.0.1", port), "the payment service did not start"
        assert await wait_for_port("127.0.0.1", health_port), "its health port did not open"
        burst = GrpcBurst(f"127.0.0.1:{port}", METHOD, str(request_ms).encode(), IN_FLIGHT)
        burst.start()
        await asyncio.to_thread(_wait_in_flight, agent, service)
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)
        await burst.outcomes()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _wait_in_flight(agent: AgentProcess, service: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        samples = agent.scrape()
        active = sum(
            value
            for labels, value in samples.all("drainwatch_inflight_requests")
            if labels.get("service") == service
        )
        if active >= IN_FLIGHT:
            return
        time.sleep(0.05)
    raise AssertionError(f"the agent never saw {IN_FLIGHT} requests in flight")


def _complete_report(agent: AgentProcess, service: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status, _, body = agent.get(f"/api/v1/report?service={service}")
        reports = json.loads(body)["reports"] if status == 200 else []
        if reports and reports[0]["complete"]:
            return dict(reports[0])
        time.sleep(0.1)
    raise AssertionError(f"no complete drain report for {service}")


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """One agent (with a state dir) that saw the broken drain and the hostile names."""
    state_dir = short_tmpdir()
    agent = AgentProcess("--drain-budget", str(BUDGET_SECONDS), "--state-dir", state_dir)
    try:
        hostile = run_target(HOSTILE_TARGET, agent.endpoint, service=HOSTILE)
        assert hostile.returncode == 0, hostile.stderr
        coordinated = run_target(COORDINATED_TARGET, agent.endpoint, service=COORDINATED)
        assert coordinated.returncode == 0, coordinated.stderr
        asyncio.run(asyncio.wait_for(_drain(agent, BROKEN, "broken", 2500), 90))
        report = _complete_report(agent, BROKEN)
        assert {v["rule"] for v in report["violations"]} >= BROKEN_RULES, report
        yield Site(agent, state_dir)
    finally:
        agent.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def _open(page: Page, url: str) -> list[str]:
    """Load ``url``; return the console errors (CSP violations show up there)."""
    errors: list[str] = []

    def collect(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", collect)
    page.on("pageerror", lambda error: errors.append(str(error)))
    response = page.goto(url)
    assert response is not None and response.status == 200
    return errors


def _service(page: Page, name: str) -> Any:
    sections = page.locator("section.service")
    for index in range(sections.count()):
        section = sections.nth(index)
        if section.locator(".service-name").inner_text() == name:
            return section
    raise AssertionError(f"no section for {name!r} on the page")


def test_after_a_real_broken_drain_the_page_shows_waterfall_violations_inflight_and_channels(
    site: Site, tmp_path: Path
) -> None:
    """At 1400x1000: the service, an SVG waterfall with each violation marked and linked to
    its runbook, the in-flight chart peaking at 10, the channel table; a non-blank screenshot."""
    with chromium() as browser:
        page = browser.new_page(viewport=DESKTOP)
        errors = _open(page, site.agent.url + "/")
        broken = _service(page, BROKEN)
        waterfall = broken.locator("section.shutdown svg.waterfall")
        assert waterfall.count() == 1
        rows = waterfall.locator("g.row")
        assert rows.count() >= 4
        marked = set(
            waterfall.locator("g.violation").evaluate_all("gs => gs.map(g => g.dataset.rule)")
        )
        assert marked >= BROKEN_RULES
        for rule in BROKEN_RULES:
            link = waterfall.locator(f'g.violation[data-rule="{rule}"] a')
            assert link.get_attribute("href") == f"/runbooks/{rule}"
        chart = broken.locator("section.inflight figure.inflight-chart")
        assert chart.count() == 1
        assert METHOD in chart.locator("figcaption .method").inner_text()
        assert "peak 10" in chart.locator("figcaption .figures").inner_text()
        assert chart.locator("svg.inflight path.line").get_attribute("d")
        hostile = _service(page, HOSTILE)
        table = hostile.locator("table.channels")
        assert table.locator("tbody tr").count() == 2
        assert hostile.locator("table.channels td.bad").count() >= 2
        assert page.evaluate("document.scrollingElement.scrollWidth") <= DESKTOP["width"]
        screenshot = page.screenshot(full_page=True)
        (tmp_path / "status-1400x1000.png").write_bytes(screenshot)
        assert_not_blank(screenshot)
        assert errors == []


def test_a_service_name_containing_html_is_shown_as_text(site: Site) -> None:
    """Service and channel names that are HTML are shown verbatim and never run or render."""
    with chromium() as browser:
        page = browser.new_page(viewport=DESKTOP)
        _open(page, site.agent.url + "/")
        hostile = _service(page, HOSTILE)
        assert hostile.locator("table.channels tbody th").first.get_attribute("title") in (
            HOSTILE_CHANNEL,
            "audit",
        )
        names = hostile.locator("table.channels tbody th").evaluate_all(
            "cells => cells.map(c => c.title)"
        )
        assert sorted(names) == sorted([HOSTILE_CHANNEL, "audit"])
        assert page.evaluate("typeof window.pwned") == "undefined"
        assert page.locator('img[src="x"]').count() == 0
        assert page.locator("section.service b").count() == 0
        assert page.locator("main script").count() == 0


def test_the_channel_table_sorts_by_a_column_both_ways(site: Site) -> None:
    """Clicking "Residual at close" puts the largest first; clicking again reverses."""
    with chromium() as browser:
        page = browser.new_page(viewport=DESKTOP)
        _open(page, site.agent.url + "/")
        table = _service(page, HOSTILE).locator("table.channels")
        header = table.locator("thead th", has_text="Residual at close")
        header.locator("button").click()
        assert header.get_attribute("aria-sort") == "descending"
        first = table.locator("tbody tr").first.locator("th").get_attribute("title")
        assert first == HOSTILE_CHANNEL
        header.locator("button").click()
        assert header.get_attribute("aria-sort") == "ascending"
        assert table.locator("tbody tr").first.locator("th").get_attribute("title") == "audit"


def test_a_violation_link_opens_its_runbook_served_by_the_agent(site: Site) -> None:
    """The waterfall's marker for inflight_at_exit leads to that runbook, offline."""
    with chromium() as browser:
        page = browser.new_page(viewport=DESKTOP)
        _open(page, site.agent.url + "/")
        marker = _service(page, BROKEN).locator(
            'section.shutdown svg.waterfall g.violation[data-rule="inflight_at_exit"] circle'
        )
        marker.click()
        page.wait_for_url("**/runbooks/inflight_at_exit")
        assert "# `inflight_at_exit`" in page.locator("article.runbook").inner_text()


def test_the_page_fits_a_phone_sized_window(site: Site, tmp_path: Path) -> None:
    """At 390x844 nothing overflows the window sideways; wide tables scroll in their box."""
    with chromium() as browser:
        page = browser.new_page(viewport=PHONE, device_scale_factor=2, is_mobile=True)
        errors = _open(page, site.agent.url + "/")
        assert page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
        box = _service(page, BROKEN).locator("section.shutdown svg.waterfall").bounding_box()
        assert box is not None and box["width"] <= PHONE["width"]
        label_size = page.evaluate(
            "parseFloat(getComputedStyle("
            "document.querySelector('svg.waterfall text.label')).fontSize)"
        )
        assert label_size >= 10
        screenshot = page.screenshot(full_page=True)
        (tmp_path / "status-phone.png").write_bytes(screenshot)
        assert_not_blank(screenshot)
        assert errors == []


def test_drain_history_is_read_back_from_the_state_dir_by_a_new_agent(site: Site) -> None:
    """A new agent on a copy of the state dir lists the drain under recent drains, restored."""
    copy = short_tmpdir()
    shutil.copytree(site.state_dir, copy, dirs_exist_ok=True)
    agent = AgentProcess("--drain-budget", str(BUDGET_SECONDS), "--state-dir", copy)
    try:
        with chromium() as browser:
            page = browser.new_page(viewport=DESKTOP)
            _open(page, agent.url + "/")
            broken = _service(page, BROKEN)
            rows = broken.locator("table.history tbody tr")
            assert rows.count() >= 1
            assert "restored" in rows.first.inner_text()
            assert broken.locator("section.shutdown svg.waterfall g.violation").count() >= 4
    finally:
        agent.stop()
        shutil.rmtree(copy, ignore_errors=True)


def test_the_page_refreshes_itself_while_a_drain_is_in_progress(site: Site) -> None:
    """Opened before SIGTERM, the page shows the drain under way and then its end, without
    being reloaded."""
    service = "payments-watched"

    async def watch() -> None:
        drain = asyncio.create_task(_drain(site.agent, service, "good", 5000))
        await asyncio.to_thread(_watch_page, site.agent.url, service)
        await drain

    asyncio.run(asyncio.wait_for(watch(), 90))


def _watch_page(url: str, service: str) -> None:
    with chromium() as browser:
        page = browser.new_page(viewport=DESKTOP)
        deadline = time.monotonic() + 30
        while True:  # the service appears once it reports; wait for it there
            _open(page, url + "/")
            if page.locator(".service-name", has_text=service).count():
                break
            assert time.monotonic() < deadline, "the service never appeared"
            time.sleep(0.3)
        page.evaluate("window.notReloaded = true")
        section = f'section.service:has(.service-name:text-is("{service}"))'
        page.wait_for_selector(
            f'{section}[data-phase="draining"], {section}[data-phase="stopping"]', timeout=30_000
        )
        assert page.locator("#content").get_attribute("data-refresh-ms") == "1000"
        page.wait_for_selector(f'{section}[data-phase="stopped"] .badge.verdict.ok', timeout=30_000)
        assert page.evaluate("window.notReloaded") is True


def test_the_shutdown_topology_is_drawn_in_stop_order(site: Site) -> None:
    """A real ShutdownCoordinator's components: users of db left of db, health last, each
    node with its stop time from the shutdown it ran."""
    with chromium() as browser:
        page = browser.new_page(viewport=DESKTOP)
        _open(page, site.agent.url + "/")
        picture = _service(page, COORDINATED).locator("section.topology svg.topology")
        nodes = picture.locator("g.node")
        assert nodes.count() == 4
        x = {
            name: float(nodes.filter(has_text=name).locator("rect").get_attribute("x") or "nan")
            for name in ("grpc", "worker", "db", "health")
        }
        assert x["grpc"] == x["worker"] < x["db"] < x["health"]
        assert picture.locator("line.edge").count() == 2
        assert picture.locator("g.node.state-ok").count() == 4
