"""Fuzz targets: one function per input surface, taking raw bytes.

A target returns normally for every input the product handles as designed (accepted, or
refused with its documented error) and raises anything else: a crash for atheris, a failed
example for hypothesis, a failed replay for ``test_corpus.py``.

- ``datagram``: decode an SDK datagram; when accepted, apply it to an agent state and build
  everything that state feeds (the /metrics exposition, /api/v1/state, /api/v1/report and
  the status page). Only ``Rejected`` may come out of the decoder; nothing after it may fail.
- ``config``: a YAML config file through the agent's loader and validation; only
  ``ConfigError`` may come out.
- ``pyspy``: ``py-spy dump --json`` output through the parser and the wait classifier; never
  raises, and bounds what it keeps.
- ``query``: a query string against the agent's HTTP handlers (``/api/v1/state``,
  ``/api/v1/report``, ``/``); the answer is 200, 400 or 404, never a server error.
- ``lint_python`` and ``lint_manifest``: a Python file and a Kubernetes manifest through
  ``drainwatch lint``'s entry point (``lint_paths``), which promises never to raise for a
  file's content: a file it cannot read is one DW001 problem. Present when the tree has
  ``drainwatch.agent.lint``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from drainwatch.agent.config import ConfigError, Limits, build_config
from drainwatch.agent.config_layers import parse_layer
from drainwatch.agent.http_api import build_app
from drainwatch.agent.metrics import StateCollector
from drainwatch.agent.report_store import DrainReports
from drainwatch.agent.state import State
from drainwatch.agent.state_json import state_document
from drainwatch.agent.status_page import PageSources, build_page
from drainwatch.collectors.kernel_waits import classify_thread
from drainwatch.collectors.pyspy import MAX_FRAMES, MAX_TEXT, MAX_THREADS, parse_dump
from drainwatch.collectors.sdk_decode import Rejected, decode_datagram
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

# Small caps so a long run keeps the reused state small (and reaches the caps' code).
FUZZ_LIMITS: Final = Limits(
    max_services=8,
    max_channels_per_service=16,
    max_channels_total=32,
    max_instances_per_service=4,
    max_channel_objects_per_instance=16,
    max_methods_per_instance=8,
    max_methods_total=16,
    max_label_length=32,
)
_RESET_EVERY: Final = 2000


class _Agent:
    """The agent's state and what is built from it, reused across inputs (and rebuilt
    every few thousand, so one input's leftovers meet the next one's, but not forever)."""

    def __init__(self) -> None:
        self.runs = 0
        self._build()

    def _build(self) -> None:
        self.state = State(FUZZ_LIMITS, "fuzz")
        self.reports = DrainReports(self.state, 30.0)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StateCollector(self.state, self.reports))
        self.page = PageSources(
            state=lambda service: state_document(self.state, service),
            reports=lambda service: self.reports.document(service, True),
        )

    def tick(self) -> None:
        self.runs += 1
        if self.runs % _RESET_EVERY == 0:
            self._build()


_AGENT = _Agent()


def datagram(data: bytes) -> None:
    try:
        decoded = decode_datagram(data)
    except Rejected:
        return
    agent = _AGENT
    agent.tick()
    agent.state.apply(decoded)
    if decoded.envelope.seq % 7 == 0:
        agent.state.disconnected(decoded.envelope.instance)
    exposition = generate_latest(agent.registry).decode()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            for value in sample.labels.values():
                if len(value) > FUZZ_LIMITS.max_label_length:
                    raise AssertionError(f"label value over the cap: {value!r}")
    json.dumps(state_document(agent.state, None))
    json.dumps(agent.reports.document(None, True))
    build_page(agent.page)


def config(data: bytes) -> None:
    try:
        build_config([parse_layer("fuzz.yaml", data)])
    except ConfigError as error:
        if "fuzz.yaml" not in str(error):
            raise AssertionError(f"a config error that does not name the file: {error}") from None


def pyspy(data: bytes) -> None:
    parsed = parse_dump(data)
    if len(parsed.threads) > MAX_THREADS:
        raise AssertionError("more threads kept than MAX_THREADS")
    for thread in parsed.threads:
        if len(thread.frames) > MAX_FRAMES:
            raise AssertionError("more frames kept than MAX_FRAMES")
        for frame in thread.frames:
            if len(frame.name) > MAX_TEXT or len(frame.filename) > MAX_TEXT:
                raise AssertionError("a frame text over MAX_TEXT")
        classify_thread(thread, 4242, None)


def _query_app() -> tuple[web.Application, asyncio.AbstractEventLoop]:
    state = State(FUZZ_LIMITS, "fuzz")
    app = build_app(state, CollectorRegistry(auto_describe=False), lambda: True)
    return app, asyncio.new_event_loop()


_QUERY_APP, _QUERY_LOOP = _query_app()
_PATHS: Final = ("/api/v1/state", "/api/v1/report", "/", "/api/v1/tasks")


def query(data: bytes) -> None:
    if not data:
        return
    path = _PATHS[data[0] % len(_PATHS)]
    text = data[1:].decode("latin-1")
    try:
        request = make_mocked_request("GET", f"{path}?{text}", app=_QUERY_APP)
    except ValueError:
        return  # not a request line aiohttp would have parsed off the wire
    handler = _handler(path)
    response = _QUERY_LOOP.run_until_complete(handler(request))
    if response.status not in (200, 400, 404):
        raise AssertionError(f"{path}?{text!r} answered {response.status}")


def _handler(path: str) -> Callable[[web.Request], asyncio.Future[web.StreamResponse]]:
    for resource in _QUERY_APP.router.resources():
        info = resource.get_info()
        if info.get("path") == path:
            for route in resource:
                if route.method == "GET":
                    return route.handler  # type: ignore[return-value]
    raise LookupError(path)


def _lint_file(suffix: str) -> Callable[[bytes], None]:
    """A target that lints ``data`` saved as one file with ``suffix``."""
    # Imported by name: the module is not in every tree (LINT_AVAILABLE decides).
    lint_paths: Callable[[list[str]], Any] = importlib.import_module(
        "drainwatch.agent.lint"
    ).lint_paths
    directory = tempfile.mkdtemp(prefix="drainwatch-fuzz-lint-")
    path = os.path.join(directory, f"input{suffix}")

    def lint(data: bytes) -> None:
        with open(path, "wb") as handle:
            handle.write(data)
        result = lint_paths([path])
        for finding in result.problems:
            if finding.code != "DW001":
                raise AssertionError(f"a problem that is not DW001: {finding}")
        if result.files != 1:
            raise AssertionError(f"{result.files} files linted, expected 1")

    return lint


LINT_AVAILABLE: Final = importlib.util.find_spec("drainwatch.agent.lint") is not None

TARGETS: Final[dict[str, Callable[[bytes], None]]] = {
    "datagram": datagram,
    "config": config,
    "pyspy": pyspy,
    "query": query,
    **(
        {"lint_python": _lint_file(".py"), "lint_manifest": _lint_file(".yaml")}
        if LINT_AVAILABLE
        else {}
    ),
}
# Targets whose code is not part of every tree: their corpus is replayed only when present.
OPTIONAL_TARGETS: Final = frozenset({"lint_python", "lint_manifest"})
