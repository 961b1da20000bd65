"""The gRPC integration against real grpcio servers and clients on loopback.

In-flight counting and outcomes for the four RPC kinds in the sync and the aio server,
every handler style grpc accepts, pass-through of results and statuses, listener events
from ``instrument_server`` and health status from ``instrument_health_servicer``.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import drainwatch
import grpc  # type: ignore[import-untyped, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, unused-ignore]
import pytest
from drainwatch import _inflight, _runtime, _shutdown
from drainwatch.agent.loadgen import free_port
from drainwatch.integrations import grpc as drainwatch_grpc
from grpc_health.v1 import (  # type: ignore[import-untyped, unused-ignore]
    health,
    health_pb2,
    health_pb2_grpc,
)

from tests.aio import run

from .grpc_helpers import (
    AIO_WAYS,
    KINDS,
    SERVICE,
    SYNC_WAYS,
    AioRig,
    SyncRig,
    active,
    aio_server,
    generic_handler,
    listener,
    method,
    method_handlers,
    outcomes,
    stats,
    sync_server,
    until,
    wait_until,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
REQUESTS = [b"\x00pay\xff", b"\x01\x02", b""]


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with a silent reporter, no shutdown under way and no RPC counted."""
    drainwatch.configure(enabled=False)
    _shutdown.STATE.reset()
    monkeypatch.setattr(_inflight, "REGISTRY", _inflight.InflightRegistry())
    monkeypatch.delenv(drainwatch_grpc.HEALTH_PORTS_ENV, raising=False)
    try:
        yield
    finally:
        _runtime.shutdown()
        drainwatch.configure(enabled=False)
        _shutdown.STATE.reset()


def internal_errors() -> int:
    return _runtime.current().internal_errors


# -- sync handlers ---------------------------------------------------------------------------------


def sync_behaviors(hold: threading.Event | None = None) -> dict[str, Any]:
    """One handler per kind; each waits for ``hold`` (if given) before its last response."""

    def wait() -> None:
        if hold is not None:
            assert hold.wait(5.0)

    def pay(request: bytes, context: Any) -> bytes:
        wait()
        return request[::-1] + b"!"

    def listing(request: bytes, context: Any) -> Iterator[bytes]:
        yield request
        wait()
        yield request + b"\x00"

    def upload(requests: Iterator[bytes], context: Any) -> bytes:
        data = b"|".join(requests)
        wait()
        return data

    def chat(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for request in requests:
            yield request * 2
        wait()
        yield b"end"

    return {
        "unary_unary": pay,
        "unary_stream": listing,
        "stream_unary": upload,
        "stream_stream": chat,
    }


def finish(kind: str, started: Any) -> Any:
    """The result of an RPC that ``SyncRig.start_call`` started."""
    if kind.endswith("_unary"):
        return started.result(timeout=5.0)
    return list(started)


@pytest.mark.parametrize("way", SYNC_WAYS)
@pytest.mark.parametrize("kind", KINDS)
def test_sync_rpc_is_active_until_its_last_response_then_ok(kind: str, way: str) -> None:
    """A sync RPC of each kind, counted each way, counts as active while held (a stream
    until its generator is exhausted, long after the handler function returned) and then
    as ok."""
    hold = threading.Event()
    with sync_server(sync_behaviors(hold), way=way) as rig:
        started = rig.start_call(kind, REQUESTS)
        assert wait_until(lambda: active(kind) == 1)
        assert outcomes(kind) == {}
        hold.set()
        finish(kind, started)
        assert wait_until(lambda: outcomes(kind) == {"ok": 1})
        assert active(kind) == 0
        record = stats(kind)
        assert record is not None
        assert record["duration"]["count"] == 1


@pytest.mark.parametrize("way", SYNC_WAYS)
def test_sync_results_are_identical_with_and_without_the_interceptor(way: str) -> None:
    """Responses and streamed items of every kind are byte-identical, whichever way the
    server is counted."""
    results = {}
    for instrumented in (False, True):
        with sync_server(sync_behaviors(), instrumented=instrumented, way=way) as rig:
            results[instrumented] = [rig.call(kind, REQUESTS) for kind in KINDS]
    assert results[True] == results[False]
    assert results[True][0] == b"\xffyap\x00!"
    assert results[True][3] == [b"\x00pay\xff" * 2, b"\x01\x02" * 2, b"", b"end"]


def sync_failing_behaviors() -> dict[str, Any]:
    def pay(request: bytes, context: Any) -> bytes:
        if request == b"raise":
            raise ValueError("card number is invalid")
        if request == b"abort":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "card declined")
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("no such payment")
        return b""

    def listing(request: bytes, context: Any) -> Iterator[bytes]:
        yield b"first"
        if request == b"abort":
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota")
        raise RuntimeError("ledger went away")

    def upload(requests: Iterator[bytes], context: Any) -> bytes:
        raise KeyError(b"".join(requests))

    return {"unary_unary": pay, "unary_stream": listing, "stream_unary": upload}


def sync_statuses(rig: SyncRig) -> list[tuple[Any, str, list[bytes]]]:
    """Code, details and items received for each failing call."""
    seen = []
    for kind, request in [
        ("unary_unary", b"raise"),
        ("unary_unary", b"abort"),
        ("unary_unary", b"set_code"),
        ("unary_stream", b"raise"),
        ("unary_stream", b"abort"),
        ("stream_unary", b"raise"),
    ]:
        items: list[bytes] = []
        with pytest.raises(grpc.RpcError) as caught:
            sync_failing_call(rig, kind, request, items)
        seen.append((caught.value.code(), caught.value.details(), items))
    return seen


def sync_failing_call(rig: SyncRig, kind: str, request: bytes, items: list[bytes]) -> None:
    """Make a call expected to fail, keeping what it streamed before failing in ``items``."""
    if kind == "unary_stream":
        items.extend(rig.channel.unary_stream(method(kind))(request, timeout=5.0))
    else:
        rig.call(kind, [request])


@pytest.mark.parametrize("way", SYNC_WAYS)
def test_sync_errors_count_as_error_and_reach_the_client_unchanged(
    caplog: pytest.LogCaptureFixture, way: str
) -> None:
    """Raising, aborting and a non-OK code count as error, and the client sees exactly
    the status code, details and items it sees without drainwatch."""
    caplog.set_level(logging.CRITICAL, logger="grpc._server")  # grpc logs each exception
    seen = {}
    for instrumented in (False, True):
        with sync_server(sync_failing_behaviors(), instrumented=instrumented, way=way) as rig:
            seen[instrumented] = sync_statuses(rig)
    assert seen[True] == seen[False]
    assert seen[True][1][:2] == (grpc.StatusCode.FAILED_PRECONDITION, "card declined")
    assert seen[True][2][:2] == (grpc.StatusCode.NOT_FOUND, "no such payment")
    assert seen[True][3][2] == [b"first"]
    assert wait_until(lambda: outcomes("unary_unary") == {"error": 3})
    assert wait_until(lambda: outcomes("unary_stream") == {"error": 2})
    assert wait_until(lambda: outcomes("stream_unary") == {"error": 1})
    assert active("unary_unary") + active("unary_stream") + active("stream_unary") == 0


@pytest.mark.parametrize("way", SYNC_WAYS)
def test_sync_client_cancelling_a_stream_mid_way_counts_as_cancelled(way: str) -> None:
    """A client that cancels a server stream after the first item: cancelled, not ok."""
    proceed = threading.Event()
    contexts: list[Any] = []

    def listing(request: bytes, context: Any) -> Iterator[bytes]:
        contexts.append(context)
        yield b"1"
        assert proceed.wait(5.0)
        yield b"2"  # grpc cannot send it, stops iterating and drops the generator
        yield b"3"

    with sync_server({"unary_stream": listing}, way=way) as rig:
        responses = rig.start_call("unary_stream", [b"x"])
        assert next(responses) == b"1"
        responses.cancel()
        # grpc learns of the cancellation on its own thread, shortly after cancel()
        assert wait_until(lambda: not contexts[0].is_active())
        proceed.set()
        assert wait_until(lambda: outcomes("unary_stream") == {"cancelled": 1})
        assert active("unary_stream") == 0


@pytest.mark.parametrize("way", SYNC_WAYS)
def test_sync_rpcs_cut_by_stop_while_shutting_down_count_as_aborted_at_shutdown(way: str) -> None:
    """``server.stop(0)`` of an instrumented server cuts a held unary RPC and a held stream:
    both count as aborted_at_shutdown, and the client gets grpc's own status."""
    proceed = threading.Event()
    contexts: list[Any] = []

    def pay(request: bytes, context: Any) -> bytes:
        contexts.append(context)
        assert proceed.wait(5.0)
        return b"late"

    def listing(request: bytes, context: Any) -> Iterator[bytes]:
        contexts.append(context)
        yield b"1"
        assert proceed.wait(5.0)
        yield b"2"

    behaviors = {"unary_unary": pay, "unary_stream": listing}
    with sync_server(behaviors, observe_listeners=True, way=way) as rig:
        unary = rig.start_call("unary_unary", [b"x"])
        stream = rig.start_call("unary_stream", [b"x"])
        assert next(stream) == b"1"
        assert wait_until(lambda: active("unary_unary") == active("unary_stream") == 1)
        stopped = rig.server.stop(0)
        assert _shutdown.STATE.shutting_down
        # grpc marks the calls cancelled on its own thread, shortly after stop() returns
        assert wait_until(lambda: not any(context.is_active() for context in contexts))
        proceed.set()
        with pytest.raises(grpc.RpcError) as caught:
            unary.result(timeout=5.0)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert wait_until(lambda: outcomes("unary_unary") == {"aborted_at_shutdown": 1})
        assert wait_until(lambda: outcomes("unary_stream") == {"aborted_at_shutdown": 1})
        assert stopped.wait(5.0)


# A sync unary RPC on a pool thread that served the method before counts into that
# thread's shard directly, without the registry's start/finish: these tests serve from one
# thread, so that every RPC but the first takes that path.


def one_thread_unary(hold: threading.Event) -> dict[str, Any]:
    def pay(request: bytes, context: Any) -> bytes:
        if request == b"slow":
            time.sleep(0.02)  # past the first duration bucket (0.5 ms)
        elif request == b"hold":
            assert hold.wait(5.0)
        elif request == b"held_past_deadline":
            assert wait_until(lambda: not context.is_active())
        elif request == b"raise":
            raise ValueError("card number is invalid")
        elif request == b"abort":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "card declined")
        elif request == b"set_code":
            context.set_code(grpc.StatusCode.NOT_FOUND)
        return request

    return {"unary_unary": pay}


def unary_status(rig: SyncRig, request: bytes, timeout: float = 5.0) -> Any:
    try:
        rig.call("unary_unary", [request], timeout=timeout)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("way", SYNC_WAYS)
def test_sync_unary_rpcs_of_a_thread_that_served_before_count_every_outcome(
    caplog: pytest.LogCaptureFixture, way: str
) -> None:
    """Ok, error (raised, aborted, a code set) and cut by the deadline, each counted once
    with its duration, on the thread's own shard; the client sees grpc's own statuses."""
    caplog.set_level(logging.CRITICAL, logger="grpc._server")
    hold = threading.Event()
    with sync_server(one_thread_unary(hold), way=way, workers=1) as rig:
        codes = [unary_status(rig, request) for request in (b"ok", b"ok", b"slow")]
        codes += [unary_status(rig, request) for request in (b"raise", b"abort", b"set_code")]
        codes.append(unary_status(rig, b"held_past_deadline", timeout=0.3))
        assert wait_until(lambda: sum(outcomes("unary_unary").values()) == 7)
    assert codes == [grpc.StatusCode.OK] * 3 + [
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ]
    assert outcomes("unary_unary") == {"ok": 3, "error": 3, "cancelled": 1}
    record = stats("unary_unary")
    assert record is not None
    assert record["active"] == 0
    duration = record["duration"]
    assert duration["count"] == 7
    # The slow one and the one held past its deadline (0.3 s) are past the first bucket.
    assert sum(duration["counts"][1:]) == 2
    assert 0.3 <= duration["sum"] < 5.0
    # One thread served them all: one shard.
    assert len(_inflight.REGISTRY.stats("grpc", method("unary_unary")).shards) == 1


@pytest.mark.parametrize("way", ["constructor", "interceptor"])
def test_sync_unary_drain_completes_when_the_last_rpc_of_a_thread_that_served_before_ends(
    way: str,
) -> None:
    """The drain step finishes when the held RPC ends, not before; an RPC that started
    during the drain counts as started during it."""
    hold = threading.Event()
    with sync_server(one_thread_unary(hold), way=way, workers=1) as rig:
        assert unary_status(rig, b"ok") == grpc.StatusCode.OK
        _shutdown.STATE.begin_shutdown()
        held = rig.start_call("unary_unary", [b"hold"])
        assert wait_until(lambda: active("unary_unary") == 1)
        drain = _shutdown.STATE.steps[_shutdown.DRAIN]
        time.sleep(0.05)
        assert drain.finished is None
        hold.set()
        assert held.result(timeout=5.0) == b"hold"
        assert wait_until(lambda: drain.finished is not None)
    assert drain.ok is True
    record = stats("unary_unary")
    assert record is not None
    assert record["started_during_drain"] == 1
    assert outcomes("unary_unary") == {"ok": 2}


def test_sync_unary_bookkeeping_failures_on_a_threads_own_shard_never_reach_the_rpc(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A shard that cannot be written leaves the response, and the handler's own error,
    as they are, and counts internal errors."""
    caplog.set_level(logging.CRITICAL, logger="grpc._server")
    with sync_server(one_thread_unary(threading.Event()), way="constructor", workers=1) as rig:
        assert unary_status(rig, b"ok") == grpc.StatusCode.OK
        (shard,) = _inflight.REGISTRY.stats("grpc", method("unary_unary")).shards.values()
        shard.counts = ()  # type: ignore[assignment]  # cannot be counted into
        before = internal_errors()
        assert rig.call("unary_unary", [b"echo"]) == b"echo"
        assert unary_status(rig, b"raise") == grpc.StatusCode.UNKNOWN
        assert internal_errors() == before + 2
        shard.started = None  # type: ignore[assignment]  # cannot be started either
        assert rig.call("unary_unary", [b"again"]) == b"again"
        assert internal_errors() == before + 3


# -- aio handlers ----------------------------------------------------------------------------------


def aio_behaviors(hold: asyncio.Event | None = None) -> dict[str, Any]:
    """Coroutine and async-generator handlers; each waits for ``hold`` before finishing."""

    async def wait() -> None:
        if hold is not None:
            await hold.wait()

    async def pay(request: bytes, context: Any) -> bytes:
        await wait()
        return request[::-1] + b"!"

    async def listing(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield request
        await wait()
        yield request + b"\x00"

    async def upload(requests: AsyncIterator[bytes], context: Any) -> bytes:
        data = b"|".join([request async for request in requests])
        await wait()
        return data

    async def chat(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request * 2
        await wait()
        yield b"end"

    return {
        "unary_unary": pay,
        "unary_stream": listing,
        "stream_unary": upload,
        "stream_stream": chat,
    }


def read_write_behaviors(hold: asyncio.Event | None = None) -> dict[str, Any]:
    """The same service written with ``context.read()``/``context.write()`` (grpc#28728):
    coroutine handlers that return None for streams and ignore the request iterator."""

    async def wait() -> None:
        if hold is not None:
            await hold.wait()

    async def listing(request: bytes, context: Any) -> None:
        await context.write(request)
        await wait()
        await context.write(request + b"\x00")

    async def upload(requests: Any, context: Any) -> bytes:
        parts = []
        while (request := await context.read()) is not grpc.aio.EOF:
            parts.append(request)
        await wait()
        return b"|".join(parts)

    async def chat(requests: Any, context: Any) -> None:
        while (request := await context.read()) is not grpc.aio.EOF:
            await context.write(request * 2)
        await wait()
        await context.write(b"end")

    behaviors = aio_behaviors(hold)
    behaviors.update(unary_stream=listing, stream_unary=upload, stream_stream=chat)
    return behaviors


async def held_rpc_counts(rig: AioRig, kind: str, hold: asyncio.Event) -> Any:
    call = asyncio.create_task(rig.call(kind, REQUESTS))
    assert await until(lambda: active(kind) == 1)
    assert outcomes(kind) == {}
    hold.set()
    result = await call
    assert await until(lambda: outcomes(kind) == {"ok": 1})
    assert active(kind) == 0
    return result


@pytest.mark.parametrize("way", AIO_WAYS)
@pytest.mark.parametrize("kind", KINDS)
def test_aio_rpc_is_active_until_it_ends_then_ok(kind: str, way: str) -> None:
    """An aio RPC of each kind (coroutine and async-generator handlers), counted each way,
    counts as active while held and then as ok."""

    async def scenario() -> None:
        hold = asyncio.Event()
        async with aio_server(aio_behaviors(hold), way=way) as rig:
            await held_rpc_counts(rig, kind, hold)

    run(scenario())


@pytest.mark.parametrize("way", AIO_WAYS)
@pytest.mark.parametrize("kind", ["unary_stream", "stream_unary", "stream_stream"])
def test_aio_read_write_style_handler_is_counted(kind: str, way: str) -> None:
    """Handlers using ``context.read()``/``context.write()`` and returning None count as
    active while held and ok afterwards, with the same results as generator handlers."""

    async def scenario() -> None:
        hold = asyncio.Event()
        async with aio_server(read_write_behaviors(hold), way=way) as rig:
            result = await held_rpc_counts(rig, kind, hold)
        async with aio_server(aio_behaviors(), instrumented=False) as plain:
            assert result == await plain.call(kind, REQUESTS)

    run(scenario())


@pytest.mark.parametrize("way", AIO_WAYS)
def test_aio_results_are_identical_with_and_without_the_interceptor(way: str) -> None:
    """Responses and streamed items of every kind and handler style are byte-identical,
    whichever way the server is counted."""

    async def scenario() -> None:
        results = {}
        for behaviors in (aio_behaviors, read_write_behaviors):
            for instrumented in (False, True):
                async with aio_server(behaviors(), instrumented=instrumented, way=way) as rig:
                    results[behaviors, instrumented] = [
                        await rig.call(kind, REQUESTS) for kind in KINDS
                    ]
        assert len({repr(result) for result in results.values()}) == 1
        assert results[aio_behaviors, True][1] == [b"\x00pay\xff", b"\x00pay\xff\x00"]

    run(scenario())


@pytest.mark.parametrize("way", AIO_WAYS)
def test_aio_sync_handlers_on_an_aio_server_are_counted(way: str) -> None:
    """Plain and generator functions that an aio server runs in its thread pool count too."""

    async def scenario() -> None:
        with ThreadPoolExecutor(4) as pool:
            async with aio_server(sync_behaviors(), thread_pool=pool, way=way) as rig:
                results = [await rig.call(kind, REQUESTS) for kind in KINDS]
        assert results[1] == [b"\x00pay\xff", b"\x00pay\xff\x00"]
        for kind in KINDS:
            assert await until(lambda kind=kind: outcomes(kind) == {"ok": 1})  # type: ignore[misc]
            assert active(kind) == 0

    run(scenario())


def aio_failing_behaviors() -> dict[str, Any]:
    async def pay(request: bytes, context: Any) -> bytes:
        if request == b"raise":
            raise ValueError("card number is invalid")
        if request == b"abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "card declined")
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("no such payment")
        return b""

    async def listing(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        if request == b"abort":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota")
        raise RuntimeError("ledger went away")

    async def chat(requests: Any, context: Any) -> None:
        await context.write(await context.read())
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")

    return {"unary_unary": pay, "unary_stream": listing, "stream_stream": chat}


async def aio_statuses(rig: AioRig) -> list[tuple[Any, str, list[bytes]]]:
    seen = []
    for kind, request in [
        ("unary_unary", b"raise"),
        ("unary_unary", b"abort"),
        ("unary_unary", b"set_code"),
        ("unary_stream", b"raise"),
        ("unary_stream", b"abort"),
        ("stream_stream", b"abort"),
    ]:
        items: list[bytes] = []
        with pytest.raises(grpc.RpcError) as caught:
            await aio_failing_call(rig, kind, request, items)
        seen.append((caught.value.code(), caught.value.details(), items))
    return seen


async def aio_failing_call(rig: AioRig, kind: str, request: bytes, items: list[bytes]) -> None:
    """Make a call expected to fail, keeping what it streamed before failing in ``items``."""
    if kind == "unary_unary":
        await rig.call(kind, [request])
        return
    name = method(kind)
    call = (
        rig.channel.unary_stream(name)(request, timeout=5.0)
        if kind == "unary_stream"
        else rig.channel.stream_stream(name)(iter([request]), timeout=5.0)
    )
    async for item in call:
        items.append(item)


@pytest.mark.parametrize("way", AIO_WAYS)
def test_aio_errors_count_as_error_and_reach_the_client_unchanged(
    caplog: pytest.LogCaptureFixture, way: str
) -> None:
    """Raising, ``await context.abort()`` and a non-OK code count as error, and the client
    sees exactly the status code, details and items it sees without drainwatch."""
    caplog.set_level(logging.CRITICAL, logger="grpc._cython.cygrpc")

    async def scenario() -> None:
        seen = {}
        for instrumented in (False, True):
            failing = aio_failing_behaviors()
            async with aio_server(failing, instrumented=instrumented, way=way) as rig:
                seen[instrumented] = await aio_statuses(rig)
        assert seen[True] == seen[False]
        assert seen[True][1][:2] == (grpc.StatusCode.FAILED_PRECONDITION, "card declined")
        assert seen[True][2][:2] == (grpc.StatusCode.NOT_FOUND, "no such payment")
        assert seen[True][5] == (grpc.StatusCode.PERMISSION_DENIED, "not yours", [b"abort"])
        assert outcomes("unary_unary") == {"error": 3}
        assert outcomes("unary_stream") == {"error": 2}
        assert outcomes("stream_stream") == {"error": 1}

    run(scenario())


@pytest.mark.parametrize("way", AIO_WAYS)
@pytest.mark.parametrize("style", ["async_generator", "read_write"])
def test_aio_client_cancelling_a_stream_mid_way_counts_as_cancelled(style: str, way: str) -> None:
    """A client that cancels a server stream after the first item: cancelled, and the
    handler itself sees the cancellation as it would without the interceptor."""
    handler_saw: list[str] = []

    async def generator(request: bytes, context: Any) -> AsyncIterator[bytes]:
        # Cut while grpc still sends the first item, the generator is closed at its yield
        # (GeneratorExit); cut later, it is cancelled in its sleep.
        try:
            yield b"1"
            await asyncio.sleep(30)
            yield b"2"
        except (asyncio.CancelledError, GeneratorExit):
            handler_saw.append("cancelled")
            raise

    async def writer(request: bytes, context: Any) -> None:
        # The client may read the item before write() has returned here: the cancellation
        # can land in either await.
        try:
            await context.write(b"1")
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            handler_saw.append("cancelled")
            raise

    async def scenario() -> None:
        behavior = generator if style == "async_generator" else writer
        async with aio_server({"unary_stream": behavior}, way=way) as rig:
            call = rig.channel.unary_stream(method("unary_stream"))(b"x")
            assert await call.read() == b"1"
            call.cancel()
            assert await until(lambda: outcomes("unary_stream") == {"cancelled": 1})
            assert active("unary_stream") == 0
        assert handler_saw == ["cancelled"]

    run(scenario())


def test_aio_generator_closed_by_grpc_mid_stream_counts_as_cancelled() -> None:
    """A handler that streams without pause is stopped by grpc at a ``yield``: when grpc
    drops its generator the RPC counts as cancelled and the handler's cleanup runs."""
    cleaned_up: list[int] = []

    async def flood(request: bytes, context: Any) -> AsyncIterator[bytes]:
        sent = 0
        try:
            while True:
                sent += 1
                yield b"x" * 1024
        finally:
            cleaned_up.append(sent)

    async def scenario() -> None:
        async with aio_server({"unary_stream": flood}) as rig:
            call = rig.channel.unary_stream(method("unary_stream"))(b"x")
            for _ in range(3):
                await call.read()
            call.cancel()
            assert await until(lambda: outcomes("unary_stream") == {"cancelled": 1})
            assert await until(lambda: len(cleaned_up) == 1)

    run(scenario())


@pytest.mark.parametrize("way", AIO_WAYS)
def test_aio_rpcs_cut_by_stop_while_shutting_down_count_as_aborted_at_shutdown(way: str) -> None:
    """``await server.stop(0)`` of an instrumented aio server cuts a held unary RPC and a
    held stream: both count as aborted_at_shutdown."""

    async def scenario() -> None:
        never = asyncio.Event()
        async with aio_server(aio_behaviors(never), observe_listeners=True, way=way) as rig:
            unary = asyncio.create_task(rig.call("unary_unary", [b"x"]))
            stream = asyncio.create_task(rig.call("unary_stream", [b"x"]))
            assert await until(lambda: active("unary_unary") == active("unary_stream") == 1)
            await rig.server.stop(0)
            for call in (unary, stream):
                with pytest.raises(grpc.RpcError):
                    await call
        assert outcomes("unary_unary") == {"aborted_at_shutdown": 1}
        assert outcomes("unary_stream") == {"aborted_at_shutdown": 1}

    run(scenario())


# -- interceptor mechanics ------------------------------------------------------------------------


def test_handlers_are_wrapped_once_per_method_and_rewrapped_when_replaced() -> None:
    """``intercept_service`` returns the same instrumented handler for every RPC of a
    method, and builds a new one when the server hands it a different handler."""
    interceptor = drainwatch_grpc.ServerInterceptor()
    handlers = sync_behaviors()
    first = grpc.unary_unary_rpc_method_handler(handlers["unary_unary"])
    second = grpc.unary_unary_rpc_method_handler(handlers["unary_unary"])
    details = _CallDetails(method("unary_unary"))
    one = interceptor.intercept_service(lambda _: first, details)
    assert one is not first
    assert interceptor.intercept_service(lambda _: first, details) is one
    assert interceptor.intercept_service(lambda _: second, details) is not one
    assert interceptor.intercept_service(lambda _: None, details) is None


class _CallDetails(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, name: str) -> None:
        self.method = name
        self.invocation_metadata = ()


@pytest.mark.parametrize("way", SYNC_WAYS)
def test_two_interceptors_count_each_rpc_once(way: str) -> None:
    """An RPC passing two drainwatch interceptors (explicit and ``drainwatch run``) is
    counted once, whichever way the server is counted."""
    twice = [drainwatch_grpc.ServerInterceptor()]
    with sync_server(sync_behaviors(), interceptors=twice, way=way) as rig:
        assert rig.call("unary_unary", [b"a"]) == b"a!"
        assert wait_until(lambda: outcomes("unary_unary") == {"ok": 1})


class _SpyInterceptor(drainwatch_grpc.ServerInterceptor):
    """drainwatch's interceptor, counting the RPCs that reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.calls += 1
        return super().intercept_service(continuation, details)


class _Recording(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self.seen: list[str] = []

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.seen.append(details.method)
        return continuation(details)


class _Denying(grpc.ServerInterceptor):  # type: ignore[misc]
    """Turns every RPC of ``unary_unary`` away with PERMISSION_DENIED, as auth would."""

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        if details.method != method("unary_unary"):
            return continuation(details)

        def deny(request: bytes, context: Any) -> bytes:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "who are you")
            return b""  # pragma: no cover  # abort() raises

        return grpc.unary_unary_rpc_method_handler(deny)


def test_instrument_server_moves_a_last_interceptor_to_the_handlers() -> None:
    """``instrument_server`` on a sync server whose last interceptor is drainwatch's counts
    every RPC (handlers given to ``grpc.server()``, generic and registered handlers added
    before and after) from the handlers: the interceptor no longer runs per RPC, the
    interceptors before it still do."""
    spy, recording = _SpyInterceptor(), _Recording()
    behaviors = sync_behaviors()
    with ThreadPoolExecutor(4) as pool:
        server = grpc.server(
            pool,
            handlers=[generic_handler({"unary_unary": behaviors["unary_unary"]})],
            interceptors=[recording, spy],
        )
        server.add_registered_method_handlers(
            SERVICE, method_handlers({"unary_stream": behaviors["unary_stream"]})
        )
        drainwatch_grpc.instrument_server(server)
        server.add_generic_rpc_handlers(
            (generic_handler({"stream_unary": behaviors["stream_unary"]}),)
        )
        server.add_registered_method_handlers(
            SERVICE, method_handlers({"stream_stream": behaviors["stream_stream"]})
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            rig = SyncRig(server, port, channel)
            results = [rig.call(kind, REQUESTS) for kind in KINDS]
        server.stop(None).wait(5.0)
    assert results[0] == b"\xffyap\x00!"
    for kind in KINDS:
        assert wait_until(lambda kind=kind: outcomes(kind) == {"ok": 1})  # type: ignore[misc]
    assert spy.calls == 0
    assert recording.seen == [method(kind) for kind in KINDS]


@pytest.mark.parametrize("way", ["constructor", "interceptor_first"])
def test_rpcs_a_later_interceptor_turns_away_are_counted(way: str) -> None:
    """With interceptors after drainwatch's (``server(interceptors=...)``, or drainwatch's
    first then ``instrument_server``), the count stays in front of them: an RPC they turn
    away counts as error (so ``instrument_server`` leaves that interceptor in place)."""
    spy = _SpyInterceptor()
    with ThreadPoolExecutor(4) as pool:
        if way == "constructor":
            server = drainwatch_grpc.server(pool, interceptors=[_Denying()])
        else:
            server = grpc.server(pool, interceptors=[spy, _Denying()])
            drainwatch_grpc.instrument_server(server)
        server.add_generic_rpc_handlers((generic_handler(sync_behaviors()),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(method("unary_unary"))(b"x", timeout=5.0)
            assert channel.stream_unary(method("stream_unary"))(iter([b"y"]), timeout=5.0)
        server.stop(None).wait(5.0)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert wait_until(lambda: outcomes("unary_unary") == {"error": 1})
    assert wait_until(lambda: outcomes("stream_unary") == {"ok": 1})
    if way == "interceptor_first":
        assert spy.calls == 2


def test_a_server_layout_drainwatch_does_not_know_keeps_its_interceptor() -> None:
    """Moving the count needs grpc's private server state as drainwatch knows it: anything
    else, or a failure half-way, leaves the interceptor counting and is no error for the
    caller (a failure is counted as an internal error)."""
    from drainwatch.integrations._grpc_registration import adopt_interceptor

    interceptor_type = drainwatch_grpc.ServerInterceptor
    assert adopt_interceptor(object(), interceptor_type) is None

    class BrokenLock:
        def __enter__(self) -> None:
            raise RuntimeError("lock")

        def __exit__(self, *exc: object) -> None:
            pass  # pragma: no cover

    class Pipeline:
        interceptors = (interceptor_type(),)

    class State:
        def __init__(self) -> None:
            self.lock = BrokenLock()
            self.interceptor_pipeline = Pipeline()
            self.generic_handlers: list[Any] = []
            self.registered_method_handlers: dict[str, Any] = {}

    class Server:
        def __init__(self) -> None:
            self._state = State()

    server = Server()
    before = internal_errors()
    assert adopt_interceptor(server, interceptor_type) is None
    assert isinstance(server._state.interceptor_pipeline, Pipeline)
    assert internal_errors() == before + 1


@pytest.mark.parametrize("way", AIO_WAYS)
def test_bookkeeping_failures_never_reach_the_rpc(
    monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    """A registry that raises on every call leaves RPCs working and counts internal errors."""

    class BrokenRegistry(_inflight.InflightRegistry):
        def start(self, stats: _inflight.MethodStats) -> float:
            raise RuntimeError("start")

        def finish(self, stats: _inflight.MethodStats, started: float, outcome: str) -> None:
            raise RuntimeError("finish")

    monkeypatch.setattr(_inflight, "REGISTRY", BrokenRegistry())
    before = internal_errors()
    with sync_server(sync_behaviors(), way=way) as rig:
        results = [rig.call(kind, REQUESTS) for kind in KINDS]
    assert results[0] == b"\xffyap\x00!"
    assert internal_errors() >= before + len(KINDS)

    async def scenario() -> list[Any]:
        async with aio_server(aio_behaviors(), way=way) as rig:
            return [await rig.call(kind, REQUESTS) for kind in KINDS]

    assert run(scenario())[3] == [b"\x00pay\xff" * 2, b"\x01\x02" * 2, b"", b"end"]


def test_importing_drainwatch_does_not_import_grpc_and_interceptors_start_reporting() -> None:
    """``import drainwatch`` leaves grpc unimported; constructing an interceptor starts
    the reporter."""
    code = "import sys, drainwatch; assert 'grpc' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    _runtime.shutdown()
    assert _runtime._reporter is None
    drainwatch_grpc.AioServerInterceptor()
    assert _runtime._reporter is not None


def test_convenience_constructors_prepend_the_interceptor_and_observe_listeners() -> None:
    """``server()`` and ``aio_server()`` count RPCs before the user's interceptors run and
    report their listeners."""
    seen: list[str] = []

    class Recording(grpc.ServerInterceptor):  # type: ignore[misc]
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            seen.append(details.method)
            return continuation(details)

    with ThreadPoolExecutor(4) as pool:
        server = drainwatch_grpc.server(pool, interceptors=[Recording()])
        server.add_generic_rpc_handlers((generic_handler(sync_behaviors()),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert channel.unary_unary(method("unary_unary"))(b"ab", timeout=5.0) == b"ba!"
        server.stop(None).wait(5.0)
    assert seen == [method("unary_unary")]
    assert wait_until(lambda: outcomes("unary_unary") == {"ok": 1})
    assert listener(f"grpc:{port}") is not None

    async def scenario() -> int:
        server = drainwatch_grpc.aio_server(role="health")
        server.add_generic_rpc_handlers((generic_handler(aio_behaviors()),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await channel.unary_unary(method("unary_unary"))(b"cd") == b"dc!"
        await server.stop(None)
        return int(port)

    aio_port = run(scenario())
    assert outcomes("unary_unary") == {"ok": 2}
    opened = listener(f"grpc:{aio_port}")
    assert opened is not None
    assert opened["role"] == "health"


def test_convenience_constructors_count_the_handlers_they_are_given() -> None:
    """``server(handlers=...)`` and ``aio_server(handlers=...)`` without interceptors count
    the RPCs of the handlers given to them as well as of those registered later."""
    behaviors = sync_behaviors()
    with ThreadPoolExecutor(4) as pool:
        server = drainwatch_grpc.server(
            pool, handlers=[generic_handler({"unary_unary": behaviors["unary_unary"]})]
        )
        server.add_generic_rpc_handlers((generic_handler({"unary_stream": listing_of(b"s")}),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            rig = SyncRig(server, port, channel)
            assert rig.call("unary_unary", [b"ab"]) == b"ba!"
            assert rig.call("unary_stream", [b"x"]) == [b"s"]
        server.stop(None).wait(5.0)
    assert wait_until(lambda: outcomes("unary_unary") == outcomes("unary_stream") == {"ok": 1})

    async def scenario() -> None:
        aio_behaviors_ = aio_behaviors()
        server = drainwatch_grpc.aio_server(
            handlers=[generic_handler({"unary_unary": aio_behaviors_["unary_unary"]})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await channel.unary_unary(method("unary_unary"))(b"cd") == b"dc!"
        await server.stop(None)

    run(scenario())
    assert outcomes("unary_unary") == {"ok": 2}


def test_counting_factory_passes_arguments_through_and_adds_no_interceptor_unless_asked() -> None:
    """``counting_factory`` (what ``drainwatch run`` installs) hands grpc every argument it
    was given, positional or keyword; with no interceptors the server's pipeline stays
    empty (the handlers count), with some ours goes first; wrapping twice counts once."""
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def recording_factory(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return grpc.server(*args, **kwargs)

    build = drainwatch_grpc.counting_factory(recording_factory, aio=False)
    twice = drainwatch_grpc.counting_factory(build, aio=False)
    with ThreadPoolExecutor(4) as pool:
        plain = twice(pool, options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=7)
        assert calls[-1][0] == (pool,)
        assert calls[-1][1] == {"options": [("grpc.so_reuseport", 0)], "maximum_concurrent_rpcs": 7}
        assert plain._state.interceptor_pipeline is None
        assert plain._state.maximum_concurrent_rpcs == 7

        class Recording(grpc.ServerInterceptor):  # type: ignore[misc]
            def intercept_service(self, continuation: Any, details: Any) -> Any:
                return continuation(details)

        theirs = Recording()
        intercepted = build(pool, None, [theirs])
        interceptors = intercepted._state.interceptor_pipeline.interceptors
        assert isinstance(interceptors[0], drainwatch_grpc.ServerInterceptor)
        assert interceptors[1:] == (theirs,)

        plain.add_generic_rpc_handlers((generic_handler(sync_behaviors()),))
        port = plain.add_insecure_port("127.0.0.1:0")
        plain.start()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert channel.unary_unary(method("unary_unary"))(b"ab", timeout=5.0) == b"ba!"
        plain.stop(None).wait(5.0)
        intercepted.stop(None).wait(5.0)
    assert wait_until(lambda: outcomes("unary_unary") == {"ok": 1})
    assert listener(f"grpc:{port}") is not None


def test_counting_factory_leaves_grpcs_own_errors_to_grpc() -> None:
    """A factory call grpc refuses raises grpc's own error, unchanged."""
    build = drainwatch_grpc.counting_factory(grpc.server, aio=False)
    with pytest.raises(TypeError):
        build()  # grpc.server() without its thread pool


def test_a_generic_handler_of_ones_own_is_asked_on_every_rpc() -> None:
    """A generic handler other than grpc's own dict of methods may answer differently from
    one RPC to the next: ``server()`` asks it on every RPC, and counts what it answers."""
    answers = [b"first", b"second"]

    class Rotating(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            if details.method != method("unary_unary"):
                return None
            answer = answers[0]
            return grpc.unary_unary_rpc_method_handler(lambda request, context: answer)

    with ThreadPoolExecutor(4) as pool:
        server = drainwatch_grpc.server(pool, handlers=[Rotating()])
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(method("unary_unary"))
            seen = [call(b"x", timeout=5.0)]
            answers.pop(0)
            seen.append(call(b"x", timeout=5.0))
        server.stop(None).wait(5.0)
    assert seen == [b"first", b"second"]
    assert wait_until(lambda: outcomes("unary_unary") == {"ok": 2})


def listing_of(item: bytes) -> Any:
    def listing(request: bytes, context: Any) -> Iterator[bytes]:
        yield item

    return listing


# -- listeners -------------------------------------------------------------------------------------


def test_sync_listener_opened_then_stop_started_then_closed() -> None:
    """A sync server's port is reported opened on start (business role), stop started at
    ``stop()``, closed once the returned event is set; ``wait_for_termination`` works."""
    with ThreadPoolExecutor(2) as pool:
        server = drainwatch_grpc.instrument_server(grpc.server(pool))
        server.add_generic_rpc_handlers((generic_handler(sync_behaviors()),))
        port = server.add_insecure_port("127.0.0.1:0")
        name = f"grpc:{port}"
        assert listener(name) is None
        server.start()
        opened = listener(name)
        assert opened is not None
        assert (opened["role"], opened["port"], opened["stop_started"]) == ("business", port, None)
        stopped = server.stop(0.5)
        record = listener(name)
        assert record is not None
        assert record["stop_started"] is not None
        assert _shutdown.STATE.record()["steps"][name]["detail"] == "grace=0.5"
        assert server.wait_for_termination(timeout=5.0) is False
        assert stopped.is_set()
        assert wait_until(lambda: (listener(name) or {}).get("closed") is not None)


def test_stopping_a_server_that_never_started_records_nothing() -> None:
    """Stopping a server that was never started (a failed startup's cleanup) reports no
    listener and does not mark the process as shutting down."""
    with ThreadPoolExecutor(1) as pool:
        server = drainwatch_grpc.instrument_server(grpc.server(pool))
        server.add_insecure_port("127.0.0.1:0")
        assert server.stop(None).wait(5.0)
    record = _shutdown.STATE.record()
    assert (record["listeners"], record["steps"], record["phase"]) == ({}, {}, "running")


def test_aio_listener_opened_then_stop_started_then_closed() -> None:
    """An aio server's port is reported opened after ``await start()``, stop started as
    soon as ``stop()`` is called and closed when the stop completes."""

    async def scenario() -> None:
        server = drainwatch_grpc.instrument_server(grpc.aio.server(), name_prefix="payments")
        server.add_generic_rpc_handlers((generic_handler(aio_behaviors()),))
        port = server.add_insecure_port("127.0.0.1:0")
        name = f"payments:{port}"
        await server.start()
        opened = listener(name)
        assert opened is not None
        assert (opened["role"], opened["port"]) == ("business", port)
        stopping = server.stop(1)
        assert (listener(name) or {}).get("stop_started") is not None
        assert (listener(name) or {}).get("closed") is None
        await stopping
        assert (listener(name) or {}).get("closed") is not None
        assert await server.wait_for_termination(timeout=1.0) is False

    run(scenario())


def test_aio_stop_cancelled_before_it_finished_records_no_close() -> None:
    """``create_task(server.stop(5))`` cancelled while an RPC still holds the server:
    the listener shows a stop that started and never completed."""

    async def scenario() -> None:
        hold = asyncio.Event()
        async with aio_server(aio_behaviors(hold), observe_listeners=True) as rig:
            name = f"grpc:{rig.port}"
            call = asyncio.create_task(rig.call("unary_unary", [b"x"]))
            assert await until(lambda: active("unary_unary") == 1)
            stopping = asyncio.create_task(rig.server.stop(5))
            await asyncio.sleep(0.05)
            stopping.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stopping
            record = listener(name)
            assert record is not None
            assert record["stop_started"] is not None
            assert record["closed"] is None
            hold.set()
            assert await call == b"x!"

    run(scenario())


def test_aio_stop_task_never_awaited_before_the_loop_ends_records_no_close() -> None:
    """The Go bug in Python: ``create_task(server.stop(5))`` never awaited, then the loop
    ends; the stop counts as started but the listener never as closed."""

    async def scenario() -> str:
        server = drainwatch_grpc.instrument_server(grpc.aio.server())
        server.add_generic_rpc_handlers((generic_handler(aio_behaviors()),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        asyncio.create_task(server.stop(5))  # noqa: RUF006  # the bug under test
        return f"grpc:{port}"

    name = run(scenario())
    record = listener(name)
    assert record is not None
    assert record["stop_started"] is not None
    assert record["closed"] is None


@pytest.mark.parametrize("built_by", ["instrument_server", "server"])
def test_health_only_server_gets_the_health_role(built_by: str) -> None:
    """A server whose only service is grpc.health.v1.Health is a health listener (also when
    drainwatch counts its RPCs from its handlers); an explicit ``role`` wins over that guess."""

    def build(pool: ThreadPoolExecutor, role: str | None = None) -> Any:
        if built_by == "server":
            return drainwatch_grpc.server(pool, role=role)
        return drainwatch_grpc.instrument_server(grpc.server(pool), role=role)

    with ThreadPoolExecutor(2) as pool:
        health_server = build(pool)
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), health_server)
        health_port = health_server.add_insecure_port("127.0.0.1:0")
        business = build(pool, role="business")
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), business)
        business_port = business.add_insecure_port("127.0.0.1:0")
        health_server.start()
        business.start()
        try:
            assert (listener(f"grpc:{health_port}") or {}).get("role") == "health"
            assert (listener(f"grpc:{business_port}") or {}).get("role") == "business"
        finally:
            health_server.stop(None).wait(5.0)
            business.stop(None).wait(5.0)


def test_health_ports_variable_forces_the_health_role(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ports listed in ``DRAINWATCH_HEALTH_PORTS`` are health listeners whatever they
    serve; an entry that is not a port is logged and ignored."""
    port = free_port()
    monkeypatch.setenv(drainwatch_grpc.HEALTH_PORTS_ENV, f" {port}, http ,")
    with ThreadPoolExecutor(2) as pool:
        server = drainwatch_grpc.instrument_server(grpc.server(pool), role="business")
        server.add_generic_rpc_handlers((generic_handler(sync_behaviors()),))
        assert server.add_insecure_port(f"127.0.0.1:{port}") == port
        other = server.add_insecure_port("127.0.0.1:0")
        server.start()
        server.stop(None).wait(5.0)
    assert (listener(f"grpc:{port}") or {}).get("role") == "health"
    assert (listener(f"grpc:{other}") or {}).get("role") == "business"
    assert "DRAINWATCH_HEALTH_PORTS" in caplog.text
    assert "'http'" in caplog.text


def test_instrument_server_rejects_what_it_cannot_instrument() -> None:
    """Anything but a grpc server is a TypeError naming its type, and a role other than
    business or health a ValueError naming the setting and the value."""
    with pytest.raises(TypeError, match=r"grpc.Server or grpc.aio.Server .*not object"):
        drainwatch_grpc.instrument_server(object())
    with ThreadPoolExecutor(1) as pool:
        server = grpc.server(pool)
        with pytest.raises(ValueError, match=r'"role" must be one of business, health .*\'web\''):
            drainwatch_grpc.instrument_server(server, role="web")
        server.stop(None).wait(5.0)


# -- health ----------------------------------------------------------------------------------------


def test_health_servicer_set_and_graceful_shutdown_are_recorded() -> None:
    """``set()`` records the status a real health server then serves;
    ``enter_graceful_shutdown()`` records every service NOT_SERVING and readiness off;
    later ``set()`` calls, ignored by the servicer, are not recorded either."""
    servicer = drainwatch_grpc.instrument_health_servicer(health.HealthServicer())
    with ThreadPoolExecutor(2) as pool:
        server = grpc.server(pool)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                check = health_pb2_grpc.HealthStub(channel).Check
                servicer.set(SERVICE, SERVING)
                request = health_pb2.HealthCheckRequest(service=SERVICE)
                assert check(request, timeout=5.0).status == SERVING
                assert _shutdown.STATE.record()["health"][SERVICE]["status"] == "SERVING"
                servicer.enter_graceful_shutdown()
                servicer.set(SERVICE, SERVING)  # ignored from now on
                assert check(request, timeout=5.0).status == NOT_SERVING
        finally:
            server.stop(None).wait(5.0)
    record = _shutdown.STATE.record()
    assert {service: h["status"] for service, h in record["health"].items()} == {
        SERVICE: "NOT_SERVING",
        "": "NOT_SERVING",
    }
    assert record["ready"] is False
    assert _shutdown.STATE.shutting_down


def test_aio_health_servicer_set_and_graceful_shutdown_are_recorded() -> None:
    """The asyncio health servicer's ``set()`` and ``enter_graceful_shutdown()`` are
    recorded the same way."""

    async def scenario() -> None:
        servicer = drainwatch_grpc.instrument_health_servicer(health.aio.HealthServicer())
        await servicer.set(SERVICE, SERVING)
        assert _shutdown.STATE.record()["health"][SERVICE]["status"] == "SERVING"
        await servicer.enter_graceful_shutdown()
        await servicer.set(SERVICE, SERVING)  # ignored from now on

    run(scenario())
    record = _shutdown.STATE.record()
    assert {service: h["status"] for service, h in record["health"].items()} == {
        SERVICE: "NOT_SERVING",
        "": "NOT_SERVING",
    }
    assert record["ready"] is False
