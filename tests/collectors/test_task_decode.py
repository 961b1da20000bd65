"""``loop`` and ``threads`` records: what the SDK really sends is accepted by the decoder and
the published schema; broken, hostile and oversized ones are refused by both."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
import weakref
from collections.abc import Callable
from importlib import resources
from typing import Any

import drainwatch
import jsonschema
import pytest
from drainwatch._protocol import Packer
from drainwatch._thread_tracker import ThreadTracker
from drainwatch._tracking import LoopWatch, exact_waits
from drainwatch.collectors.sdk_decode import SCHEMA, decode_datagram

Record = dict[str, Any]


def _schema() -> dict[str, Any]:
    text = resources.files("drainwatch").joinpath("protocol/v1.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def real_records() -> list[Record]:
    """A loop record (parked tasks, a stall with its stack) and a threads record."""
    drainwatch.configure(enabled=False)

    async def exercise() -> Record:
        idle: drainwatch.Channel[int] = drainwatch.Channel("idle")
        waiters = [asyncio.create_task(idle.get(), name=f"waiter-{i}") for i in range(3)]
        lock = asyncio.Lock()
        await lock.acquire()
        locked = asyncio.create_task(lock.acquire(), name="locked")
        watch = LoopWatch(asyncio.get_running_loop(), 1, 0.05)
        watch.lag.start()
        await asyncio.sleep(0.1)
        stall = threading.Timer(0.12, watch.lag.check)
        stall.start()
        time.sleep(0.2)  # blocked: the timer thread reads the stack meanwhile
        await asyncio.sleep(0.1)
        futures, _ = exact_waits([weakref.ref(idle)])
        record = watch.record(futures, time.time(), time.monotonic())
        watch.lag.stop()
        for task in [*waiters, locked]:
            task.cancel()
        await asyncio.gather(*waiters, locked, return_exceptions=True)
        return record

    loop_record = asyncio.run(asyncio.wait_for(exercise(), 10))
    jobs: drainwatch.ThreadChannel[int] = drainwatch.ThreadChannel("jobs")
    worker = threading.Thread(target=jobs.get, name="worker", daemon=True)
    worker.start()
    time.sleep(0.05)
    _, stamps = exact_waits([weakref.ref(jobs)])
    threads_record = ThreadTracker().sample(stamps, time.time(), time.monotonic(), settled=False)
    jobs.put(1)
    worker.join(5)
    return [loop_record, threads_record]


def _datagram(records: list[Record]) -> bytes:
    [(datagram, _)] = Packer("checkout").pack(records)
    return datagram


def test_real_loop_and_threads_records_match_the_decoder_and_the_schema() -> None:
    """Records built by the SDK from real tasks, a real stall and a real thread pass both."""
    records = real_records()
    loop_record, threads_record = records
    assert loop_record["stalls"] and loop_record["stalls"][0]["stack"]
    assert loop_record["blocked"]["channel_receive"] == 3
    assert loop_record["blocked"]["lock"] == 1
    assert threads_record["top"][0]["target"] == "jobs"
    datagram = _datagram(records)
    jsonschema.validate(json.loads(datagram), _schema())
    decoded = decode_datagram(datagram)
    assert decoded.rejected == {}
    assert [record["type"] for record in decoded.records] == ["loop", "threads"]


def _set(path: str, value: object) -> Callable[[Record], None]:
    def change(record: Record) -> None:
        *parents, last = path.split(".")
        target: Any = record
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value

    return change


def _drop(key: str) -> Callable[[Record], None]:
    return lambda record: record.pop(key)


LOOP_BREAKAGES: dict[str, Callable[[Record], None]] = {
    "id zero": _set("id", 0),
    "id text": _set("id", "1"),
    "running text": _set("running", "yes"),
    "no lag": _drop("lag"),
    "lag count off": _set("lag.count", 999),
    "negative lag max": _set("lag_max", -1),
    "wait beyond 1e9 s": _set("top.0.wait", 1e10),
    "reason with spaces": _set("top.0.reason", "channel receive"),
    "reason too long": _set("top.0.reason", "a" * 33),
    "task name too long": _set("top.0.task", "t" * 1025),
    "empty task name": _set("top.0.task", ""),
    "target a number": _set("top.0.target", 7),
    "since before 2000": _set("top.0.since", 1.0),
    "blocked count negative": _set("blocked.channel_receive", -1),
    "blocked reason uppercase": _set("blocked", {"LOCK": 1}),
    "too many sites": lambda record: record.update(
        sites=[{**record["sites"][0], "stack": [], "tasks": []}] * 65
    ),
    "site count zero": _set("sites.0.count", 0),
    "stack of numbers": _set("sites.0.stack", [1, 2]),
    "too many stalls": lambda record: record.update(stalls=record["stalls"] * 17),
    "ongoing text": _set("stalls.0.ongoing", "no"),
    "truncated text": _set("truncated", "yes"),
}
THREADS_BREAKAGES: dict[str, Callable[[Record], None]] = {
    "no top": _drop("top"),
    "ident negative": _set("top.0.ident", -1),
    "ident beyond 64 bits": _set("top.0.ident", 2**64),
    "native id text": _set("top.0.native_id", "12"),
    "too many threads": lambda record: record.update(top=record["top"] * 65),
    "waiting not a map": _set("waiting", ["queue_get"]),
    "stack not a list": _set("top.0.stack", "Queue.get (queue.py:171)"),
}


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return real_records()


@pytest.mark.parametrize("breakage", sorted(LOOP_BREAKAGES))
def test_broken_loop_records_are_refused_by_decoder_and_schema(
    records: list[Record], breakage: str
) -> None:
    """A loop record with a wrong, hostile or oversized field is a schema rejection."""
    record = copy.deepcopy(records[0])
    LOOP_BREAKAGES[breakage](record)
    # A JSON Schema cannot say that a histogram's count is the sum of its buckets.
    _assert_refused(record, schema_too=breakage != "lag count off")


@pytest.mark.parametrize("breakage", sorted(THREADS_BREAKAGES))
def test_broken_threads_records_are_refused_by_decoder_and_schema(
    records: list[Record], breakage: str
) -> None:
    """A threads record with a wrong, hostile or oversized field is a schema rejection."""
    record = copy.deepcopy(records[1])
    THREADS_BREAKAGES[breakage](record)
    _assert_refused(record)


def _assert_refused(record: Record, schema_too: bool = True) -> None:
    message = {
        "v": 1,
        "service": "checkout",
        "instance": "abc",
        "pid": 42,
        "seq": 1,
        "time": time.time(),
        "dropped": 0,
        "records": [record],
    }
    decoded = decode_datagram(json.dumps(message).encode())
    assert decoded.records == [] and decoded.rejected == {SCHEMA: 1}
    if schema_too:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(message, _schema())


def test_fields_a_newer_sdk_adds_are_ignored(records: list[Record]) -> None:
    """Unknown fields and a reason this agent does not know are accepted (forward compatible)."""
    loop_record = copy.deepcopy(records[0])
    loop_record["future_field"] = {"anything": [1, 2]}
    loop_record["blocked"]["new_reason"] = 2
    decoded = decode_datagram(_datagram([loop_record]))
    assert decoded.rejected == {} and len(decoded.records) == 1
