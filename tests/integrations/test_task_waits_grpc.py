"""A task awaiting a real gRPC call waits for ``grpc``, whatever grpc awaits inside."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from drainwatch._task_tracker import TaskTracker

from tests.aio import run
from tests.integrations.grpc_helpers import aio_server


def test_a_task_awaiting_a_grpc_call_is_waiting_for_grpc() -> None:
    """A client call held by the server: the calling task's reason is grpc, with a stack."""

    async def scenario() -> dict[str, Any]:
        hold = asyncio.Event()

        async def pay(request: bytes, context: Any) -> bytes:
            await hold.wait()
            return request

        async with aio_server({"unary_unary": pay}, instrumented=False) as rig:
            caller = asyncio.create_task(rig.call("unary_unary", [b"x"]), name="caller")
            await asyncio.sleep(0.2)
            tracker = TaskTracker(asyncio.get_running_loop())
            sample = await asyncio.to_thread(tracker.sample, {}, time.time(), time.monotonic())
            hold.set()
            assert await caller == b"x"
        [entry] = [item for item in sample["top"] if item["task"] == "caller"]
        [site] = [site for site in sample["sites"] if site["tasks"][0]["name"] == "caller"]
        return {**entry, "stack": site["stack"]}

    found = run(scenario())
    assert found["reason"] == "grpc"
    assert any("AioRig.call" in frame for frame in found["stack"])
