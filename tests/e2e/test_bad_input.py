"""Hostile datagrams and broken configuration against a real agent process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.processes import Samples, run_target, running_agent, short_tmpdir
from tests.records import channel_record

pytestmark = pytest.mark.e2e

HEALTHY = """
import drainwatch
ch = drainwatch.Channel("steady")
ch.put_nowait(1)
ch.close()
drainwatch.flush(timeout=2)
"""


def _envelope(**overrides: object) -> dict[str, object]:
    message: dict[str, object] = {
        "v": 1,
        "service": "intruder",
        "instance": "feedface",
        "pid": 4242,
        "seq": 1,
        "time": time.time(),
        "dropped": 0,
        "records": [],
    }
    message.update(overrides)
    return message


def _bad_datagrams() -> dict[str, list[bytes]]:
    good_channel = channel_record(name="steady", capacity=0, sent=10**6)
    wrong_typed = dict(good_channel, sent="lots")
    negative = dict(good_channel, received=-5)
    bool_count = dict(good_channel, depth=True)
    with_nan = _envelope(records=[good_channel], time="TIME")
    nan_time = json.dumps(with_nan).replace('"TIME"', "NaN")
    assert "NaN" in nan_time
    return {
        "malformed": [
            b"\xff\xfe not utf8",
            b"{not json",
            b"[1, 2, 3]",
            b"null",
            b"[" * 20_000 + b"]" * 20_000,
            nan_time.encode(),
        ],
        "oversized": [b'{"v":1,"pad":"' + b"x" * 70_000 + b'"}'],
        "unsupported_version": [
            json.dumps(_envelope(v=2, records=[good_channel])).encode(),
            json.dumps(_envelope(v="1")).encode(),
        ],
        "schema": [
            json.dumps(_envelope(pid="me")).encode(),
            json.dumps(_envelope(records="none")).encode(),
            json.dumps(_envelope(records=[wrong_typed, negative, bool_count])).encode(),
        ],
        "unknown_type": [json.dumps(_envelope(records=[{"type": "exploit"}])).encode()],
    }


def _rejected(samples_text: str) -> dict[str, float]:
    return {
        labels["reason"]: value
        for labels, value in Samples(samples_text).all("drainwatch_agent_events_rejected_total")
    }


def test_hostile_datagrams_are_counted_by_reason_and_change_nothing_else() -> None:
    """Malformed, oversized, wrong-version and wrong-typed input is counted, never applied."""
    with running_agent() as agent:
        run_target(HEALTHY, agent.endpoint, service="steady-svc")
        before = agent.wait_for("drainwatch_channel_closed_timestamp_seconds", service="steady-svc")
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sender.connect(agent.socket_path)
        expected: dict[str, int] = {}
        for reason, datagrams in _bad_datagrams().items():
            for datagram in datagrams:
                try:
                    sender.send(datagram)
                except OSError:
                    # The kernel refuses a message larger than the socket buffer: not sent.
                    continue
                weight = 3 if reason == "schema" and b"lots" in datagram else 1
                expected[reason] = expected.get(reason, 0) + weight
        sender.close()
        deadline = time.monotonic() + 10
        while _rejected(agent.scrape().text) != {
            **dict.fromkeys(_rejected(before.text), 0.0),
            **{k: float(v) for k, v in expected.items()},
        }:
            assert time.monotonic() < deadline, (_rejected(agent.scrape().text), expected)
            time.sleep(0.05)
        after = agent.scrape()
        status, _, _ = agent.get("/healthz")
    assert status == 200
    assert after.value("drainwatch_channel_sent_total", channel="steady") == 1
    assert after.all("drainwatch_channel_sent_total") == before.all("drainwatch_channel_sent_total")
    assert after.value("drainwatch_agent_events_received_total") == before.value(
        "drainwatch_agent_events_received_total"
    )


def test_udp_ingest_accepts_reports_and_counts_garbage() -> None:
    """The UDP transport works end to end and garbage on it is counted, not applied."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with running_agent("--ingest", f"udp://127.0.0.1:{port}") as agent:
        result = run_target(HEALTHY, f"udp://127.0.0.1:{port}", service="udp-svc")
        assert result.returncode == 0, result.stderr
        samples = agent.wait_for("drainwatch_channel_closed_timestamp_seconds", service="udp-svc")
        assert (
            samples.value(
                "drainwatch_channel_residual_items_at_close", service="udp-svc", channel="steady"
            )
            == 1
        )
        garbage = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        garbage.sendto(b"\x00\x01garbage", ("127.0.0.1", port))
        garbage.close()
        deadline = time.monotonic() + 5
        while _rejected(agent.scrape().text).get("malformed") != 1.0:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def _run_agent(
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drainwatch", "agent", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "listen: 127.0.0.1:9469\nlimits:\n  max_servces: 10\n",
            ':3: unknown key "limits.max_servces"; did you mean "max_services"',
        ),
        (
            "listen: 127.0.0.1:9469\nretention_seconds: forever\n",
            ':2: "retention_seconds" must be a number of seconds from 1 to 86400: "forever"',
        ),
        (
            "ingest:\n  - udp://10.1.2.3:9470\n",
            ':1: "ingest" must be a loopback address; 10.1.2.3 is not',
        ),
        ("listen: [unclosed\n", ":2:1: invalid YAML"),
        ("- just\n- a list\n", ":1: the top level must be a mapping"),
        ("log_level: chatty\n", ':1: "log_level" must be one of debug, info, warning, error'),
        (
            "limits:\n  max_label_length: 4\n",
            ':2: "limits.max_label_length" must be a whole number from 16 to 1024: 4',
        ),
        ("listen: 1\nlisten: 2\n", ':2: key "listen" is given twice'),
    ],
)
def test_bad_config_file_exits_2_naming_file_line_and_key(content: str, expected: str) -> None:
    """A broken YAML config stops the agent with exit code 2 and a message that pins it."""
    path = Path(short_tmpdir()) / "agent.yaml"
    path.write_text(content)
    result = _run_agent("--config", str(path))
    assert result.returncode == 2, result.stderr
    assert f"config file {path}{expected}" in result.stderr, result.stderr


def test_missing_and_oversized_config_files_exit_2() -> None:
    """A config path that cannot be read, or a huge file, is refused with exit code 2."""
    missing = _run_agent("--config", "/nonexistent/drainwatch.yaml")
    assert missing.returncode == 2
    assert "cannot read it" in missing.stderr and "/nonexistent/drainwatch.yaml" in missing.stderr
    huge = Path(short_tmpdir()) / "huge.yaml"
    huge.write_text("# " + "x" * (2 << 20) + "\n")
    oversized = _run_agent("--config", str(huge))
    assert oversized.returncode == 2 and "larger than" in oversized.stderr


def test_bad_flag_and_environment_values_exit_2_naming_their_source() -> None:
    """Flags and environment variables are validated like the file, and named in the error."""
    flag = _run_agent("--ingest", "tcp://127.0.0.1:1")
    assert flag.returncode == 2 and "flag --ingest must start with unix:// or udp://" in flag.stderr
    env = _run_agent(env={"DRAINWATCH_AGENT_LOG_LEVEL": "loud"})
    assert env.returncode == 2
    assert "environment variable DRAINWATCH_AGENT_LOG_LEVEL" in env.stderr


def test_second_agent_on_the_same_socket_exits_2_and_leaves_the_first_running() -> None:
    """Starting an agent on a socket another agent serves is refused, not a takeover."""
    with running_agent() as first:
        second = _run_agent("--ingest", first.endpoint)
        assert second.returncode == 2
        assert "another agent already listens there" in second.stderr
        assert os.path.exists(first.socket_path)
        status, _, _ = first.get("/readyz")
        assert status == 200


def test_api_rejects_unknown_and_oversized_query_parameters() -> None:
    """The read-only API answers bad queries with 400 and a reason, and refuses writes."""
    with running_agent() as agent:
        run_target(HEALTHY, agent.endpoint, service="steady-svc")
        agent.wait_for("drainwatch_channel_closed_timestamp_seconds")
        ok_status, content_type, body = agent.get("/api/v1/state?service=steady-svc")
        unknown, _, unknown_body = agent.get("/api/v1/state?drop=tables")
        long_status, _, _ = agent.get("/api/v1/state?service=" + "x" * 5000)
        twice, _, _ = agent.get("/api/v1/state?service=a&service=b")
        request = urllib.request.Request(agent.url + "/api/v1/state", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        post_status = refused.value.code
        refused.value.close()
    assert ok_status == 200 and content_type.startswith("application/json")
    document = json.loads(body)
    assert [service["name"] for service in document["services"]] == ["steady-svc"]
    assert document["services"][0]["channels"][0]["residual"] == 1
    assert unknown == 400 and "unknown query parameter 'drop'" in unknown_body
    assert long_status == 400 and twice == 400
    assert post_status == 405
