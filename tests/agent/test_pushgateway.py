"""Pushing the final metrics: a real Pushgateway keeps one group per service and pod, a
recording server sees a valid exposition, and failures come back as reasons, never raised."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest
from aiohttp import web
from drainwatch.agent.pushgateway import (
    DEFAULT_JOB,
    PushgatewayError,
    grouping_key,
    parse_job,
    parse_pushgateway_url,
    push_final,
)
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from tests.aio import run

T = TypeVar("T")
PUSHGATEWAY = shutil.which("prometheus-pushgateway")


def final_metrics(liveness: float = 0.0) -> CollectorRegistry:
    """What an agent with two services would push: probe results and a counter each."""
    registry = CollectorRegistry(auto_describe=False)
    probe = Gauge(
        "drainwatch_probe_success", "Last probe result.", ["service", "probe"], registry=registry
    )
    probe.labels("checkout", "liveness").set(liveness)
    probe.labels("payments", "liveness").set(1)
    violations = Counter(
        "drainwatch_shutdown_violations", "Violations.", ["service", "rule"], registry=registry
    )
    violations.labels("checkout", "inflight_at_exit").inc()
    return registry


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def pushgateway() -> Iterator[str]:
    """A real Pushgateway (Debian's prometheus-pushgateway) on a free loopback port."""
    if PUSHGATEWAY is None:
        pytest.skip("needs the Debian package prometheus-pushgateway (apt-get install it)")
    port = free_port()
    process = subprocess.Popen(
        [
            PUSHGATEWAY,
            f"--web.listen-address=127.0.0.1:{port}",
            "--persistence.file=",
            "--log.level=error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, "the Pushgateway exited at start"
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "the Pushgateway did not become ready"
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def test_real_pushgateway_keeps_one_group_per_service_and_pod(pushgateway: str) -> None:
    """Two pods of checkout and one of payments push; each series is there once, under its
    own grouping key, and a second push of a group replaces it."""

    async def body() -> list[bool]:
        pushes = [
            (final_metrics(0.0), grouping_key("checkout", "checkout-7d9f-abc")),
            (final_metrics(1.0), grouping_key("checkout", "checkout-7d9f/xyz")),
            (final_metrics(), grouping_key("payments", "checkout-7d9f-abc")),
            (final_metrics(1.0), grouping_key("checkout", "checkout-7d9f-abc")),  # replaces
        ]
        return [
            (await push_final(pushgateway, DEFAULT_JOB, registry, key, timeout=5.0)).ok
            for registry, key in pushes
        ]

    assert run(body()) == [True, True, True, True]
    found = samples(scrape(pushgateway))

    def series(service: str, pod: str, probe: str = "liveness") -> float | None:
        labels = {"job": "drainwatch", "service": service, "instance": pod, "probe": probe}
        return found.get(("drainwatch_probe_success", tuple(sorted(labels.items()))))

    assert series("checkout", "checkout-7d9f-abc") == 1.0  # the second push won
    assert series("checkout", "checkout-7d9f/xyz") == 1.0
    assert series("payments", "checkout-7d9f-abc") == 1.0
    pushed = [key for key in found if key[0].startswith("drainwatch_")]
    # each group holds only its own service; no creation-time series were pushed
    assert len([key for key in pushed if key[0] == "drainwatch_probe_success"]) == 3
    assert not [key for key in pushed if key[0].endswith("_created")]
    violations = [key for key in pushed if key[0] == "drainwatch_shutdown_violations_total"]
    assert len(violations) == 2  # checkout's two pods; payments has none
    groups = [dict(labels) for name, labels in found if name == "push_time_seconds"]
    assert {(g["service"], g["instance"]) for g in groups} == {
        ("checkout", "checkout-7d9f-abc"),
        ("checkout", "checkout-7d9f/xyz"),
        ("payments", "checkout-7d9f-abc"),
    }


def test_real_pushgateway_refusal_comes_back_as_the_reason(pushgateway: str) -> None:
    """A push the Pushgateway refuses (two series that its job label makes identical) is
    'HTTP 400' with its explanation, not an exception."""

    async def body() -> tuple[bool, str]:
        first = await push_final(pushgateway, "drainwatch", final_metrics(), {"service": "a"})
        assert first.ok
        clash = CollectorRegistry(auto_describe=False)
        jobs = Gauge("drainwatch_clash", "Series told apart only by job.", ["job"], registry=clash)
        jobs.labels("one").set(1)
        jobs.labels("two").set(2)
        result = await push_final(pushgateway, "drainwatch", clash, {"service": "b"})
        return result.ok, result.reason

    ok, reason = run(body())
    assert not ok
    assert reason.startswith("HTTP 400: pushed metrics are invalid or inconsistent")


@asynccontextmanager
async def recording_server(
    delay: float = 0.0,
) -> AsyncIterator[tuple[str, list[tuple[str, str, str]]]]:
    """A real HTTP server that records (method, path, body) and answers like a Pushgateway."""
    seen: list[tuple[str, str, str]] = []

    async def push(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, (await request.read()).decode()))
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", push)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/prefix/", seen
    finally:
        await runner.cleanup()


def test_push_is_a_put_of_one_group_in_exposition_format() -> None:
    """The request is PUT /metrics/job/<job>/instance/<i>/service/<s> under the URL's prefix,
    and its body parses as exposition format holding only that service's series."""

    async def body() -> list[tuple[str, str, str]]:
        async with recording_server() as (url, seen):
            base = parse_pushgateway_url(url)
            result = await push_final(
                base, "drainwatch", final_metrics(), grouping_key("checkout", "pod-1")
            )
            assert result.ok and result.reason == ""
            assert str(result).startswith("job=drainwatch service=checkout instance=pod-1: pushed")
            return seen

    [(method, path, text)] = run(body())
    assert (method, path) == (
        "PUT",
        "/prefix/metrics/job/drainwatch/instance/pod-1/service/checkout",
    )
    pushed = samples(text)
    assert pushed == {
        ("drainwatch_probe_success", (("probe", "liveness"), ("service", "checkout"))): 0.0,
        (
            "drainwatch_shutdown_violations_total",
            (("rule", "inflight_at_exit"), ("service", "checkout")),
        ): 1.0,
    }


def test_a_slow_pushgateway_times_out_without_blocking_the_loop() -> None:
    """A Pushgateway that takes 3 s: the push gives up after about 0.3 s with the reason,
    and a ticker on the loop never waits more than 200 ms meanwhile."""

    async def body() -> tuple[bool, str, float, float]:
        async with recording_server(delay=3.0) as (url, _):
            gaps: list[float] = []

            async def tick() -> None:
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.01)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            ticker = asyncio.create_task(tick())
            began = time.monotonic()
            result = await push_final(
                url.rstrip("/"), "drainwatch", final_metrics(), {"service": "checkout"}, timeout=0.3
            )
            took = time.monotonic() - began
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            return result.ok, result.reason, took, max(gaps)

    ok, reason, took, worst_gap = run(body())
    assert (ok, reason) == (False, "timed out after 0.3 s")
    assert took < 1.5
    assert worst_gap < 0.2  # a blocked loop would show the whole 0.3 s


def test_an_absent_pushgateway_is_connection_refused() -> None:
    """Nothing listening: the result says 'connection refused' at once."""
    result = run(
        push_final(
            f"http://127.0.0.1:{free_port()}",
            "drainwatch",
            final_metrics(),
            {"service": "checkout"},
        )
    )
    assert (result.ok, result.reason) == (False, "connection refused")
    assert result.seconds < 1.0


def test_grouping_key_defaults_to_this_host() -> None:
    """In Kubernetes the host name is the pod's name: pods get separate groups."""
    assert grouping_key("checkout") == {"service": "checkout", "instance": socket.gethostname()}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "pushgateway:9091",
            '--pushgateway must be an http:// or https:// URL with a host: "pushgateway:9091"; '
            "for example http://pushgateway.monitoring.svc:9091",
        ),
        (
            "http://user:pw@gw:9091",
            '--pushgateway must be a URL without credentials: "http://user:pw@gw:9091"; the URL '
            "is logged, and pushes carry no login: put the Pushgateway on a network only the "
            "cluster reaches",
        ),
        (
            "http://gw:99999",
            '--pushgateway must be a URL with a port from 1 to 65535: "http://gw:99999"; '
            "for example http://pushgateway.monitoring.svc:9091",
        ),
        (
            "http://gw:9091/?x=1",
            "--pushgateway must be a base URL without a query, a fragment or port 0: "
            '"http://gw:9091/?x=1"; for example http://pushgateway.monitoring.svc:9091',
        ),
        (
            "http://gw\n:9091",
            "--pushgateway must be a URL without spaces or control characters: "
            "'http://gw\\n:9091'; for example http://pushgateway.monitoring.svc:9091",
        ),
    ],
)
def test_bad_pushgateway_urls_name_the_flag_rule_value_and_fix(value: str, message: str) -> None:
    """Each bad URL gets one exact message."""
    with pytest.raises(PushgatewayError, match=f"^{re.escape(message)}$"):
        parse_pushgateway_url(value)


def test_urls_and_jobs_that_are_accepted() -> None:
    """A trailing slash is dropped; a path prefix is kept; job names are trimmed."""
    assert parse_pushgateway_url("https://gw.example:9091/push/") == "https://gw.example:9091/push"
    assert parse_job(" drainwatch-final ") == "drainwatch-final"
    with pytest.raises(
        PushgatewayError,
        match=re.escape(
            "--pushgateway-job must be a job name of 1 to 128 printable characters without "
            'spaces: "a b"; the default is "drainwatch"'
        ),
    ):
        parse_job("a b")
