"""Health probes against real HTTP and gRPC servers, the runner's bookkeeping, the probe
metrics, the ``--probe-http``/``--probe-grpc`` parsers and the outside liveness verdict."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, unused-ignore]
import pytest
from aiohttp import web
from drainwatch.collectors.liveness_verdict import liveness_failed_during_drain
from drainwatch.collectors.probe_metrics import ProbeCollector
from drainwatch.collectors.probe_specs import (
    GrpcProbeSpec,
    HttpProbeSpec,
    ProbeSpecError,
    parse_grpc_probe_spec,
    parse_probe_spec,
)
from drainwatch.collectors.probes import (
    GrpcHealthProbe,
    HttpProbe,
    ProbeOutcome,
    ProbeRunner,
    ProbeStatus,
    Transition,
    probe_from_spec,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.aio import run, until

T = TypeVar("T")
FAST = 0.03  # seconds between checks in tests


def status_of(runner: ProbeRunner, name: str) -> ProbeStatus:
    status = runner.status(name)
    assert status is not None
    return status


class HttpTarget:
    """A real aiohttp server on 127.0.0.1 whose status and delay a test switches."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _health(self, request: web.Request) -> web.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text="health")

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/broken")

    async def _broken(self, request: web.Request) -> web.Response:
        return web.Response(status=500)

    async def open(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/moved", self._redirect)
        app.router.add_get("/broken", self._broken)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, path: str = "/healthz") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@asynccontextmanager
async def http_target() -> AsyncIterator[HttpTarget]:
    target = HttpTarget()
    await target.open()
    try:
        yield target
    finally:
        await target.close()


@asynccontextmanager
async def grpc_target(
    *handlers: Any,
) -> AsyncIterator[tuple[grpc.aio.Server, health.aio.HealthServicer, int]]:
    """A real grpc.aio server with the standard health servicer (or ``handlers``)."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    if handlers:
        server.add_generic_rpc_handlers(handlers)
    else:
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield server, servicer, port
    finally:
        await server.stop(None)


@asynccontextmanager
async def running(runner: ProbeRunner) -> AsyncIterator[ProbeRunner]:
    async with runner:
        yield runner


# -- HTTP --------------------------------------------------------------------------------------


def test_http_probe_records_up_503_refused_and_recovery_in_order() -> None:
    """200 -> 503 -> closed listener -> 200 again gives three transitions, in time order."""

    async def body() -> None:
        began = time.time()
        async with http_target() as target:
            probe = HttpProbe("liveness", target.url(), timeout=1.0)
            async with running(ProbeRunner([probe], interval=FAST, fast_interval=FAST)) as runner:
                await until(lambda: status_of(runner, "liveness").ok is True)
                target.status = 503
                await until(lambda: status_of(runner, "liveness").ok is False)
                await target.close()
                await until(lambda: status_of(runner, "liveness").detail == "connection refused")
                failing = status_of(runner, "liveness")
                assert failing.last_error == "connection refused"
                assert failing.consecutive_failures >= 2
                target.status = 200
                await target.open()  # same port
                await until(lambda: status_of(runner, "liveness").ok is True)
                status = status_of(runner, "liveness")
        assert [(t.ok, t.detail) for t in status.transitions] == [
            (True, "HTTP 200"),
            (False, "HTTP 503"),
            (True, "HTTP 200"),
        ]
        times = [t.at for t in status.transitions]
        assert began <= times[0] < times[1] < times[2] <= time.time()
        assert status.last_change == times[2]
        assert status.consecutive_failures == 0
        assert status.last_error == "connection refused"  # kept after the recovery
        assert status.failures >= 2 and status.checks > status.failures
        assert (status.kind, status.target, status.port) == ("http", target.url(), target.port)

    run(body())


def test_http_probe_that_outlasts_its_timeout_fails_with_the_reason() -> None:
    """A handler slower than the timeout is a failure 'timed out after 0.2 s', not a hang."""

    async def body() -> None:
        async with http_target() as target:
            target.delay = 3.0
            probe = HttpProbe("readiness", target.url(), timeout=0.2)
            runner = ProbeRunner([probe], interval=FAST, fast_interval=FAST)
            began = time.monotonic()
            [status] = await runner.check_all()
            took = time.monotonic() - began
            await runner.stop()
        assert (status.ok, status.detail) == (False, "timed out after 0.2 s")
        assert (status.failures, status.consecutive_failures) == (1, 1)
        assert status.last_error == "timed out after 0.2 s"
        assert status.last_duration is not None and 0.15 < status.last_duration < 1.0
        assert took < 1.0

    run(body())


def test_http_redirect_counts_as_success_and_is_not_followed() -> None:
    """A 302 is success (as for the kubelet) even though its target answers 500."""

    async def body() -> None:
        async with http_target() as target:
            moved = HttpProbe("liveness", target.url("/moved"))
            broken = HttpProbe("broken", target.url("/broken"))
            try:
                outcomes = (await moved.check(), await broken.check())
            finally:
                await moved.close()
                await broken.close()
        assert outcomes == (ProbeOutcome(True, "HTTP 302"), ProbeOutcome(False, "HTTP 500"))

    run(body())


# -- gRPC --------------------------------------------------------------------------------------


def test_grpc_probe_follows_serving_not_serving_and_a_stopped_server() -> None:
    """SERVING -> NOT_SERVING -> server stopped: two transitions, then UNAVAILABLE failures."""

    async def body() -> None:
        async with grpc_target() as (server, servicer, port):
            service = "payments.Payments"
            await servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
            spec = parse_grpc_probe_spec(f"grpc_health=127.0.0.1:{port}/{service}")
            probe = probe_from_spec(spec, timeout=1.0)
            whole = probe_from_spec(parse_grpc_probe_spec(f"server=127.0.0.1:{port}"))
            unknown = GrpcHealthProbe("unknown", f"127.0.0.1:{port}", "nope.Nope")
            runner = ProbeRunner([probe, whole, unknown], interval=FAST, fast_interval=FAST)
            async with running(runner):
                await until(lambda: status_of(runner, "grpc_health").ok is True)
                await until(lambda: status_of(runner, "unknown").ok is False)
                await servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
                await until(lambda: status_of(runner, "grpc_health").ok is False)
                await server.stop(None)
                await until(
                    lambda: (status_of(runner, "grpc_health").detail or "")[:11] == "UNAVAILABLE"
                )
                await until(lambda: status_of(runner, "server").ok is False)
                status = status_of(runner, "grpc_health")
                server_status = status_of(runner, "server")
                unknown_status = status_of(runner, "unknown")
        assert [(t.ok, t.detail) for t in status.transitions] == [
            (True, "SERVING"),
            (False, "NOT_SERVING"),
        ]
        assert status.transitions[0].at < status.transitions[1].at
        assert (status.kind, status.target, status.port) == (
            "grpc",
            f"127.0.0.1:{port}/payments.Payments",
            port,
        )
        assert server_status.transitions[0].detail == "SERVING"
        assert (server_status.last_error or "").startswith("UNAVAILABLE")
        assert unknown_status.transitions[0].ok is False
        assert (unknown_status.transitions[0].detail or "").startswith("NOT_FOUND")

    run(body())


def test_grpc_probe_times_out_and_rejects_a_malformed_answer() -> None:
    """A slow Check fails as 'timed out after 0.2 s'; garbage bytes fail as malformed."""

    async def slow(request: bytes, context: Any) -> bytes:
        await asyncio.sleep(3.0)
        return b""

    async def garbage(request: bytes, context: Any) -> bytes:
        return b"\x08"  # a tag with no value

    async def body() -> tuple[ProbeOutcome, ProbeOutcome, float]:
        for handler in (slow, garbage):
            generic = grpc.method_handlers_generic_handler(
                "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(handler)}
            )
            async with grpc_target(generic) as (_, _, port):
                probe = GrpcHealthProbe("grpc_health", f"127.0.0.1:{port}", timeout=0.2)
                began = time.monotonic()
                outcome = await probe.check()
                took = time.monotonic() - began
                if handler is slow:
                    timed_out, slow_took = outcome, took
                else:
                    malformed = outcome
        return timed_out, malformed, slow_took

    timed_out, malformed, took = run(body())
    assert timed_out == ProbeOutcome(False, "timed out after 0.2 s")
    assert took < 1.0
    assert malformed == ProbeOutcome(False, "malformed HealthCheckResponse")


# -- the runner --------------------------------------------------------------------------------


class ScriptedProbe:
    """A probe whose outcomes a test scripts; it can also raise."""

    kind = "http"
    target = "scripted"
    port = 0
    timeout = 0.5

    def __init__(self, name: str, outcomes: list[ProbeOutcome | Exception]) -> None:
        self.name = name
        self.outcomes = outcomes
        self.calls = 0

    async def check(self) -> ProbeOutcome:
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def close(self) -> None:
        return None


def test_set_fast_from_another_thread_checks_at_once_and_then_often() -> None:
    """With a 60 s interval, set_fast(True) from a thread re-checks now and every 30 ms."""

    async def body() -> tuple[int, int, int]:
        probe = ScriptedProbe("liveness", [ProbeOutcome(True, "HTTP 200")])
        async with running(ProbeRunner([probe], interval=60.0, fast_interval=FAST)) as runner:
            await until(lambda: probe.calls == 1)
            await asyncio.sleep(0.1)
            slow_calls = probe.calls
            thread = threading.Thread(target=runner.set_fast, args=(True,))
            thread.start()
            await asyncio.to_thread(thread.join, 2.0)
            await until(lambda: probe.calls >= slow_calls + 4)
            runner.set_fast(False)
            await asyncio.sleep(FAST * 2)
            after = probe.calls
            await asyncio.sleep(0.2)
            assert runner.fast is False
            return slow_calls, after, probe.calls

    slow_calls, after, final = run(body())
    assert slow_calls == 1
    assert final == after  # back to one check a minute


def test_transitions_are_bounded_and_errors_become_failures() -> None:
    """Only the latest transitions are kept (the total is counted); a raising probe is a
    failure with the error's text and the runner keeps checking."""
    flips: list[ProbeOutcome | Exception] = [
        ProbeOutcome(index % 2 == 0, f"HTTP {200 if index % 2 == 0 else 503}") for index in range(6)
    ]
    flips.append(RuntimeError("boom"))
    flips.append(ProbeOutcome(True, "HTTP 200"))

    async def body() -> ProbeStatus:
        probe = ScriptedProbe("liveness", flips)
        clock = iter(float(second) for second in range(1000, 2000))
        runner = ProbeRunner([probe], FAST, FAST, max_transitions=3, clock=lambda: next(clock))
        async with running(runner):
            await until(lambda: probe.calls >= len(flips))
            return status_of(runner, "liveness")

    status = run(body())
    assert status.transitions_total == 7
    kept = [(t.at, t.ok, t.detail) for t in status.transitions]
    assert kept == [
        (1004.0, True, "HTTP 200"),
        (1005.0, False, "HTTP 503"),
        (1007.0, True, "HTTP 200"),
    ]
    assert status.last_error == "probe error: RuntimeError: boom"


def test_probe_names_must_be_unique() -> None:
    """Two probes named alike are refused with both flags named in the message."""
    probes = [ScriptedProbe("liveness", []), ScriptedProbe("liveness", [])]
    with pytest.raises(
        ProbeSpecError,
        match=re.escape(
            'probe names must be unique across --probe-http and --probe-grpc: "liveness" '
            "given more than once; rename one"
        ),
    ):
        ProbeRunner(probes)


def test_collector_exports_probe_success_with_service_and_probe_labels() -> None:
    """drainwatch_probe_success{service,probe} and its companions, parsed back from text."""

    async def body() -> ProbeRunner:
        up = ScriptedProbe("liveness", [ProbeOutcome(True, "HTTP 200")])
        down = ScriptedProbe("readiness", [ProbeOutcome(False, "HTTP 503")])
        runner = ProbeRunner([up, down], clock=lambda: 1234.5)
        await runner.check_all()
        await runner.check_all()
        return runner

    runner = run(body())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProbeCollector(runner, "checkout"))
    samples = {
        (sample.name, sample.labels.get("probe"), sample.labels.get("result")): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if sample.labels.get("service") == "checkout"
    }
    assert samples[("drainwatch_probe_success", "liveness", None)] == 1.0
    assert samples[("drainwatch_probe_success", "readiness", None)] == 0.0
    assert samples[("drainwatch_probe_consecutive_failures", "readiness", None)] == 2.0
    assert samples[("drainwatch_probe_last_change_timestamp_seconds", "liveness", None)] == 1234.5
    assert samples[("drainwatch_probe_checks_total", "readiness", "failure")] == 2.0
    assert samples[("drainwatch_probe_checks_total", "liveness", "success")] == 2.0
    assert samples[("drainwatch_probe_transitions_total", "liveness", None)] == 1.0


# -- parsing -----------------------------------------------------------------------------------


def test_http_specs_accept_any_host_and_default_the_port() -> None:
    """Loopback, the pod IP, a name, IPv6 and https (port 443 by default) are all accepted."""
    assert parse_probe_spec("liveness=http://127.0.0.1:8080/healthz") == HttpProbeSpec(
        "liveness", "http://127.0.0.1:8080/healthz", "127.0.0.1", 8080
    )
    assert parse_probe_spec("ready=https://10.1.2.3/readyz").port == 443
    assert parse_probe_spec(" live=http://app.default.svc/healthz ").port == 80
    assert parse_probe_spec("v6=http://[::1]:81/").host == "::1"


def test_grpc_specs_take_an_optional_service() -> None:
    """HOST:PORT and HOST:PORT/service, IPv6 in brackets."""
    assert parse_grpc_probe_spec("grpc_health=127.0.0.1:50051/payments.Payments") == (
        GrpcProbeSpec("grpc_health", "127.0.0.1:50051", "payments.Payments", "127.0.0.1", 50051)
    )
    assert parse_grpc_probe_spec("g=pod-ip:50051").service == ""
    assert parse_grpc_probe_spec("g=[::1]:50051/x").target == "[::1]:50051"


HTTP_EXAMPLE = "for example liveness=http://127.0.0.1:8080/healthz"
GRPC_EXAMPLE = "for example grpc_health=127.0.0.1:50051/payments.Payments"
NAME_RULE = "a NAME of letters, digits, '_', '.' or '-' (starting with a letter or '_', at most 64)"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("liveness", f'--probe-http must be NAME=URL: "liveness"; {HTTP_EXAMPLE}'),
        (42, f"--probe-http must be NAME=URL: 42; {HTTP_EXAMPLE}"),
        (
            "bad name=http://x/",
            "--probe-http must be NAME=URL without spaces or control characters: "
            f'"bad name=http://x/"; {HTTP_EXAMPLE}',
        ),
        (
            "x=http://a\x00\x1b[31m/",
            "--probe-http must be NAME=URL without spaces or control characters: "
            f'"x=http://a\\x00\\x1b[31m/"; {HTTP_EXAMPLE}',
        ),
        (
            "n" * 5000,
            "--probe-http must be NAME=URL of at most 2048 characters: "
            f'"{"n" * 80}" (cut, 5000 characters); {HTTP_EXAMPLE}',
        ),
        (
            "1st=http://x/",
            f'--probe-http must be {NAME_RULE}: "1st=http://x/"; the name is the probe label, '
            f"{HTTP_EXAMPLE}",
        ),
        (
            "live=grpc://127.0.0.1:50051",
            "--probe-http must be NAME=URL with an http:// or https:// URL: "
            f'"live=grpc://127.0.0.1:50051"; {HTTP_EXAMPLE}; for gRPC health use '
            "--probe-grpc NAME=HOST:PORT[/service]",
        ),
        (
            "live=http://user:secret@x/",
            '--probe-http must be a URL without credentials: "live=http://user:secret@x/"; '
            "the URL is shown in logs and metrics; probe a path that needs no login",
        ),
        (
            "live=http://x:99999/",
            "--probe-http must be NAME=URL with a valid host and a port from 1 to 65535: "
            f'"live=http://x:99999/"; {HTTP_EXAMPLE}',
        ),
        (
            "live=http:///healthz",
            "--probe-http must be a URL with a host name or an IP address: "
            f'"live=http:///healthz"; {HTTP_EXAMPLE}',
        ),
    ],
)
def test_bad_http_specs_name_the_flag_rule_value_and_fix(value: object, message: str) -> None:
    """Broken, hostile and oversized values give one exact message each."""
    with pytest.raises(ProbeSpecError, match=f"^{re.escape(message)}$"):
        parse_probe_spec(value)


GRPC_FORM = "NAME=HOST:PORT[/service]"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "g=127.0.0.1",
            f"--probe-grpc must be {GRPC_FORM} with a port from 1 to 65535: "
            f'"g=127.0.0.1"; gRPC has no default port, {GRPC_EXAMPLE}',
        ),
        (
            "g=host:²",
            f"--probe-grpc must be {GRPC_FORM} with a port from 1 to 65535: "
            f'"g=host:²"; gRPC has no default port, {GRPC_EXAMPLE}',
        ),
        (
            "g=::1:50051",
            f"--probe-grpc must be {GRPC_FORM} with a host name, an IPv4 address or an [IPv6] "
            f'address: "g=::1:50051"; {GRPC_EXAMPLE}',
        ),
        (
            "g=grpc://127.0.0.1:50051",
            f"--probe-grpc must be {GRPC_FORM} without a scheme: "
            f'"g=grpc://127.0.0.1:50051"; {GRPC_EXAMPLE}',
        ),
        (
            "g=127.0.0.1:50051/",
            f"--probe-grpc must be {GRPC_FORM} with a service name of letters, digits, '_', '.' "
            "or '-' after the '/': \"g=127.0.0.1:50051/\"; e.g. /payments.Payments, or no '/' "
            "at all to check the server as a whole",
        ),
        (
            "g=127.0.0.1:50051/../../etc",
            f"--probe-grpc must be {GRPC_FORM} with a service name of letters, digits, '_', '.' "
            "or '-' after the '/': \"g=127.0.0.1:50051/../../etc\"; e.g. /payments.Payments, "
            "or no '/' at all to check the server as a whole",
        ),
    ],
)
def test_bad_grpc_specs_name_the_flag_rule_value_and_fix(value: str, message: str) -> None:
    """Missing ports, bare IPv6, schemes and odd service names each get an exact message."""
    with pytest.raises(ProbeSpecError, match=f"^{re.escape(message)}$"):
        parse_grpc_probe_spec(value)


def test_the_setting_name_in_errors_comes_from_the_caller() -> None:
    """Config passes the YAML path or 'flag --probe-http' so the message says where."""
    with pytest.raises(ProbeSpecError, match=r'^probes\.http\[0\] must be NAME=URL: "x"; '):
        parse_probe_spec("x", where="probes.http[0]")


# -- liveness_failed_during_drain ----------------------------------------------------------------


def fail(at: float, detail: str = "HTTP 503") -> Transition:
    return Transition(at, False, detail)


def up(at: float) -> Transition:
    return Transition(at, True, "HTTP 200")


@pytest.mark.parametrize(
    ("transitions", "window", "inflight", "violated", "at", "explanation"),
    [
        (
            [up(0), fail(12)],
            (10.0, 20.0),
            [(0, 0), (9, 3)],
            True,
            12.0,
            "liveness failed (HTTP 503) +2.000 s into the drain while 3 request(s) were in "
            "flight: the kubelet restarts or kills a container whose liveness fails, cutting "
            "the drain",
        ),
        ([up(0), fail(5)], (10.0, None), [(0, 2)], True, 10.0, "+0.000 s into the drain"),
        ([fail(11), up(12)], (10.0, 20.0), [(10, 0), (11.5, 1)], True, 11.5, "1 request(s)"),
        ([up(0), fail(20)], (10.0, 20.0), [(0, 5)], False, None, "did not fail"),
        ([fail(1), up(2)], (10.0, 20.0), [(0, 5)], False, None, "did not fail"),
        ([fail(15)], (10.0, 20.0), [(10, 4), (14, 0)], False, None, "nothing was in flight"),
        ([fail(15)], (10.0, None), [], False, None, "nothing was in flight"),
    ],
)
def test_liveness_failed_during_drain_needs_failure_and_requests_in_the_window(
    transitions: list[Transition],
    window: tuple[float, float | None],
    inflight: list[tuple[float, int]],
    violated: bool,
    at: float | None,
    explanation: str,
) -> None:
    """Only a liveness failure overlapping the drain while requests are in flight counts."""
    finding = liveness_failed_during_drain(transitions, window, inflight)
    assert (finding.violated, finding.at) == (violated, at)
    assert explanation in finding.explanation
