"""Property-based fuzzing (hypothesis) of every input surface, with structure-aware inputs:
near-valid datagrams, YAML documents of known keys with odd values and tags, py-spy dumps of
odd shape, hostile query strings against a real agent's HTTP server."""

from __future__ import annotations

import copy
import json
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from drainwatch.agent.config import KNOWN_KEYS, ConfigError, build_config
from drainwatch.agent.config_layers import parse_layer
from drainwatch.agent.page_html import esc
from drainwatch.agent.state_json import state_document
from drainwatch.agent.status_page import build_page
from drainwatch.collectors.decode_values import MAX_STRING_CHARS
from drainwatch.collectors.sdk_decode import decode_datagram
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fuzz import targets
from tests.fuzz.make_seeds import _datagrams
from tests.processes import AgentProcess, running_agent

# Every example runs the whole agent path: keep the count modest, and never time one out
# on a loaded machine.
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
HOSTILE_TEXT = st.sampled_from(
    [
        "<script>alert(1)</script>",
        '"><img src=x onerror=alert(1)>',
        "../../../../etc/passwd",
        "{0.__class__}",
        "%s%n%x",
        "__import__('os').system('id')",
        "\x1b]0;owned\x07\x1b[2J",
        'a"b\\c\nd',
        "\u202eevil",
        "",
        "x" * (MAX_STRING_CHARS + 1),
    ]
) | st.text(min_size=1, max_size=MAX_STRING_CHARS)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside a JSON document."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def _replace(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return document


@st.composite
def near_valid_datagrams(draw: st.DrawFn) -> bytes:
    """A real SDK datagram with a few values replaced: by odd JSON, hostile text, deletions."""
    document = json.loads(draw(st.sampled_from(_datagrams())))
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(document))
        path = draw(st.sampled_from(paths))
        if path and isinstance(path[-1], str) and draw(st.booleans()):
            parent = document
            for step in path[:-1]:
                parent = parent[step]
            del parent[path[-1]]
            continue
        replacement = draw(JSON_VALUES | HOSTILE_TEXT)
        document = _replace(document, path, copy.deepcopy(replacement))
    return json.dumps(document, allow_nan=False).encode()


@SETTINGS
@given(near_valid_datagrams())
def test_whatever_the_decoder_accepts_the_whole_agent_handles(data: bytes) -> None:
    """Decode, apply, and build /metrics, the JSON API and the page: only Rejected may raise."""
    targets.datagram(data)


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes_as_a_datagram_never_crash_the_agent(data: bytes) -> None:
    """Arbitrary bytes are refused with a reason or handled; nothing else comes out."""
    targets.datagram(data)


@SETTINGS
@given(name=HOSTILE_TEXT, service=HOSTILE_TEXT)
def test_hostile_names_are_escaped_in_the_page_and_cut_in_labels(name: str, service: str) -> None:
    """A channel and service named by an attacker appear escaped in the page, never raw."""
    document = json.loads(_datagrams()[1])
    document["service"] = service
    for record in document["records"]:
        if record.get("type") == "channel":
            record["name"] = name
    targets.datagram(json.dumps(document).encode())
    agent = targets._AGENT
    page = build_page(agent.page)[1]
    for value in (name, service):
        if re.search(r"<[A-Za-z/!?]", value):
            assert value not in page  # a tag-like name never reaches the markup as is
    assert "<script>alert" not in page and "<img src=x onerror" not in page
    json.dumps(state_document(agent.state, None))
    assert esc("<a>") == "&lt;a&gt;"


YAML_SCALARS = st.sampled_from(
    [
        "1",
        "-1",
        "1e999",
        ".nan",
        "true",
        "null",
        "~",
        '""',
        "0x10",
        "127.0.0.1:9469",
        "udp://10.0.0.1:9",
        "unix:///tmp/x.sock",
        "[1, 2]",
        "{a: 1}",
        "!!python/object:os.system id",
        "!!binary aGVsbG8=",
        "!!set {a, b}",
        "!custom x",
        "&a [*a]",
        '"\\ud800"',
        '"\\x1b[2J"',
        "'" + "x" * 5000 + "'",
    ]
)


@st.composite
def config_documents(draw: st.DrawFn) -> bytes:
    """YAML of known and unknown keys with odd scalars, tags, anchors and nesting."""
    keys = draw(st.lists(st.sampled_from([*KNOWN_KEYS, "unknown", "limits"]), max_size=6))
    lines = []
    for key in keys:
        value = draw(YAML_SCALARS)
        if "." in key:
            section, name = key.split(".", 1)
            lines.append(f"{section}:\n  {name}: {value}")
        else:
            lines.append(f"{key}: {value}")
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(["[" * 2000, "- " * 50 + "x", "? [a]\n: 1", "\t"])))
    return "\n".join(lines).encode()


@SETTINGS
@given(config_documents())
@example(b"listen: !!python/object:os.system id")
@example(b"listen: " + b"[" * 5000)
def test_any_config_file_is_loaded_or_refused_with_a_config_error(data: bytes) -> None:
    """Only ConfigError (naming the file) comes out of loading a config, whatever the YAML."""
    targets.config(data)


@SETTINGS
@given(config_documents())
def test_config_errors_show_values_safely(data: bytes) -> None:
    """An error message is bounded and shows no control character from the file."""
    try:
        build_config([parse_layer("fuzz.yaml", data)])
    except ConfigError as error:
        message = str(error)
        assert len(message) < 4000, message[:200]
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]", message), message


PYSPY_THREADS = st.lists(
    st.dictionaries(
        st.sampled_from(
            ["thread_id", "thread_name", "os_thread_id", "active", "owns_gil", "frames", "pid"]
        ),
        JSON_VALUES
        | st.lists(
            st.dictionaries(
                st.sampled_from(["name", "filename", "short_filename", "module", "line", "locals"]),
                JSON_VALUES,
            ),
            max_size=5,
        ),
    ),
    max_size=6,
)


@SETTINGS
@given(PYSPY_THREADS | JSON_VALUES)
def test_any_pyspy_output_parses_within_bounds(document: Any) -> None:
    """py-spy output of any shape parses (or is refused) within the caps, never raises."""
    targets.pyspy(json.dumps(document).encode())


@SETTINGS
@given(st.binary(max_size=512))
def test_any_query_string_is_answered_200_400_or_404(data: bytes) -> None:
    """The API and page handlers answer any query string, never with a server error."""
    targets.query(data)


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    with running_agent() as running:
        yield running


QUERY_PARTS = st.lists(
    st.tuples(
        st.sampled_from(["service", "all", "x", "", "service[]", "%00"]) | st.text(max_size=8),
        st.text(max_size=300) | HOSTILE_TEXT,
    ),
    max_size=3,
)


@settings(max_examples=60, deadline=None)
@given(path=st.sampled_from(["/api/v1/state", "/api/v1/report", "/"]), query=QUERY_PARTS)
def test_a_real_agent_answers_hostile_queries_without_a_server_error(
    agent: AgentProcess, path: str, query: list[tuple[str, str]]
) -> None:
    """Over real HTTP, any query gets 200, 400 or 404 and a body that is JSON or HTML."""
    status, content_type, body = agent.get(f"{path}?{urllib.parse.urlencode(query)}")
    assert status in (200, 400, 404), (status, body[:300])
    if path.startswith("/api/"):
        assert content_type.startswith("application/json")
        json.loads(body)
    else:
        assert content_type.startswith("text/html")
    assert "<script>alert" not in body


def test_the_real_datagrams_used_as_seeds_are_accepted() -> None:
    """The seeds are valid input (otherwise the fuzzers would start from refusals)."""
    for data in _datagrams():
        decoded = decode_datagram(data)
        assert decoded.records and not decoded.rejected
