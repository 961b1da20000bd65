"""Security defenses against real processes: who can reach the ingest socket, where UDP may
listen, a read-only HTTP surface, hostile names that stay data, and py-spy's locals."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from drainwatch._endpoint import Endpoint
from drainwatch.agent.config import Limits
from drainwatch.agent.http_api import build_app
from drainwatch.agent.state import State
from drainwatch.collectors.sdk_ingest import IngestError, UdpIngest
from prometheus_client import CollectorRegistry

from tests.processes import (
    AgentProcess,
    assert_promtool_clean,
    running_agent,
    short_tmpdir,
)

pytestmark = pytest.mark.e2e

OTHER_UID = 20002  # a user that is neither root nor the agent


def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(0.05)
    return found


# -- the ingest socket ----------------------------------------------------------------------------


def test_ingest_socket_is_0660_in_a_0750_directory_of_the_agent() -> None:
    """Only the agent's user and group may connect; only the agent may add or remove
    entries in the directory (whatever the umask)."""
    directory = Path(short_tmpdir()) / "ingest"
    with running_agent("--ingest", f"unix://{directory}/ingest.sock"):
        socket_mode = stat.S_IMODE(os.stat(directory / "ingest.sock").st_mode)
        directory_mode = stat.S_IMODE(os.stat(directory).st_mode)
    assert (socket_mode, directory_mode) == (0o660, 0o750)


def test_an_ingest_directory_owned_by_another_user_is_refused() -> None:
    """A socket directory someone else owns (pre-created in a shared /tmp) stops the agent
    with exit code 2 instead of handing that user the socket."""
    if os.geteuid() != 0:
        pytest.skip("creating a directory owned by another user needs root (CI runs as root)")
    directory = Path(short_tmpdir()) / "planted"
    directory.mkdir(mode=0o777)
    os.chown(directory, OTHER_UID, OTHER_UID)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "drainwatch", "agent", "--listen", "127.0.0.1:0"),
            *("--ingest", f"unix://{directory}/ingest.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"must belong to the agent's user (uid 0) or root, not uid {OTHER_UID}" in result.stderr
    assert not (directory / "ingest.sock").exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "not-an-address"])
def test_udp_ingest_binds_loopback_only_even_when_built_in_code(host: str) -> None:
    """The UDP listener itself refuses a non-loopback address (the config refuses it first)."""

    async def start() -> None:
        ingest = UdpIngest(Endpoint("udp", host=host, port=0), State(Limits(), None))
        await asyncio.wait_for(ingest.start(), 5)

    with pytest.raises(IngestError, match="UDP ingest must bind a loopback address"):
        asyncio.run(start())


# -- HTTP -----------------------------------------------------------------------------------------


def test_every_http_route_is_read_only() -> None:
    """The agent's routes answer GET (and HEAD) only: nothing can be changed over HTTP."""
    app = build_app(State(Limits(), None), CollectorRegistry(auto_describe=False), lambda: True)
    methods = {route.method for route in app.router.routes()}
    assert methods <= {"GET", "HEAD"}, methods


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_a_real_agent_refuses_writes_on_every_path(method: str) -> None:
    """Every path answers 405 to a write, with the request body never read into anything."""
    paths = ["/", "/metrics", "/healthz", "/readyz", "/api/v1/state", "/api/v1/report"]
    with running_agent() as agent:
        codes = []
        for path in [*paths, "/runbooks/inflight_at_exit", "/ui/page.css"]:
            request = urllib.request.Request(agent.url + path, data=b"x" * 4096, method=method)
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    codes.append(response.status)
            except urllib.error.HTTPError as error:
                codes.append(error.code)
                error.close()
    assert set(codes) == {405}, codes


# -- hostile names --------------------------------------------------------------------------------

HOSTILE = {
    "service": "svc<script>alert(1)</script>\x1b]0;owned\x07",
    "channel": '../../../../tmp/pwned"} 1\nfake_metric 1',
    "owner": "{0.__class__.__mro__}%s%n__import__('os').system('id')",
    "where": "\x1b[2J\u202eevil.py:1",
    "method": "/x.Y/Z<img src=x onerror=alert(1)>",
    "step": "$(touch /tmp/dw-step-pwned)`id`",
}


def _hostile_datagram(now: float) -> bytes:
    from tests.records import channel_record, inflight_record

    channel = channel_record(
        1,
        HOSTILE["channel"],
        owner=HOSTILE["owner"],
        closed=now,
        closed_by=HOSTILE["owner"],
        closed_where=HOSTILE["where"],
        residual=2,
    )
    shutdown = {
        "type": "shutdown",
        "phase": "stopped",
        "signals": [{"signal": "SIGTERM", "at": now}],
        "steps": {
            HOSTILE["step"]: {
                "started": now,
                "finished": now + 1,
                "ok": False,
                "detail": HOSTILE["owner"],
            }
        },
        "ready": False,
        "ready_changed": now,
        "health": {},
        "listeners": {
            HOSTILE["step"]: {
                "role": "business",
                "port": 1,
                "opened": now - 1,
                "stop_started": now,
                "closed": now + 1,
            }
        },
        "exited": now + 2,
        "exit_code": 1,
    }
    message = {
        "v": 1,
        "service": HOSTILE["service"],
        "instance": "hostile",
        "pid": 4242,
        "seq": 1,
        "time": now,
        "dropped": 0,
        "records": [channel, inflight_record(method=HOSTILE["method"]), shutdown],
    }
    return json.dumps(message).encode()


def test_hostile_names_stay_data_in_metrics_json_page_files_terminal_and_log(
    tmp_path: Path,
) -> None:
    """Markup, escape sequences, paths, format strings and code in names are exported as
    exact label values, escaped in the page, never a path, never run, never raw on a tty."""
    state = tmp_path / "state"
    with running_agent("--state-dir", str(state)) as agent:
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sender.connect(agent.socket_path)
        sender.send(_hostile_datagram(time.time()))
        sender.close()
        samples = agent.wait_for("drainwatch_channel_residual_items_at_close")
        _until(lambda: list(state.glob("report-*.json")), 10, "the report on disk")
        _, _, page = agent.get("/")
        _, _, api = agent.get("/api/v1/report?all=1")
        report = subprocess.run(
            [sys.executable, "-m", "drainwatch", "report", "--agent", agent.url, "--all"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        log = agent.log()
    assert_promtool_clean(samples.text)
    [(labels, value)] = samples.all("drainwatch_channel_residual_items_at_close")
    assert value == 2
    assert (
        labels["service"] == HOSTILE["service"][:127] + "\u2026"
        or labels["service"] == HOSTILE["service"]
    )
    assert labels["channel"] == HOSTILE["channel"]
    assert samples.value("fake_metric") is None
    assert "<script>alert" not in page and "<img src=x onerror" not in page
    assert "\x1b" not in page
    assert json.loads(api)["reports"][0]["service"] == HOSTILE["service"]
    # The same values in the JSON API, escaped: no markup even if something renders it.
    assert "<" not in api and ">" not in api
    assert (
        sorted(path.name for path in state.iterdir() if not path.name.startswith("report-")) == []
    )
    assert not Path("/tmp/pwned").exists() and not Path("/tmp/dw-step-pwned").exists()
    assert report.returncode in (0, 1), report.stderr  # 1 = the report has violations
    for text in (report.stdout, report.stderr, log):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b" in report.stdout


# -- py-spy and locals ----------------------------------------------------------------------------

SECRET_HOLDER = """
import queue, threading, sys
secret_queue = queue.Queue()
def worker(password):
    token = password
    secret_queue.get()
threading.Thread(target=worker, args=(sys.argv[1],), name="holder", daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
"""


def _leaked(secret: str, *extra: str) -> bool:
    """Run a target holding ``secret`` in a local, let the agent sample it and report its
    exit; True if the secret shows anywhere the agent serves or keeps."""
    script = Path(short_tmpdir()) / "holder.py"
    script.write_text(textwrap.dedent(SECRET_HOLDER))
    state = Path(short_tmpdir()) / "state"
    target = subprocess.Popen(
        [sys.executable, str(script), secret],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert target.stdout is not None and target.stdout.readline().strip() == "ready"
        agent = AgentProcess(
            "--target-pid",
            str(target.pid),
            "--pyspy-interval",
            "0.3",
            "--state-dir",
            str(state),
            *extra,
        )
        try:
            agent.wait_for("drainwatch_thread_blocked_seconds", thread="holder", timeout=20)
            target.send_signal(signal.SIGKILL)
            target.wait(10)
            _until(lambda: json.loads(agent.get("/api/v1/report")[2])["reports"], 20, "a report")
            served = [
                agent.get(path)[2]
                for path in ("/api/v1/report?all=1", "/api/v1/state", "/", "/metrics")
            ]
            saved = [path.read_text() for path in state.glob("report-*.json")]
        finally:
            agent.stop()
    finally:
        if target.poll() is None:
            target.kill()
        target.wait(10)
        for stream in (target.stdin, target.stdout):
            if stream is not None:
                stream.close()
    return any(secret in text for text in [*served, *saved, agent.log()])


def test_pyspy_never_captures_locals_unless_enabled() -> None:
    """A secret in a blocked thread's local variable never reaches the agent's API, page,
    metrics, state dir or log by default; --pyspy-locals (the opt-in) is what brings it."""
    assert not _leaked("s3cr3t-" + secrets.token_hex(8))
    assert _leaked("s3cr3t-" + secrets.token_hex(8), "--pyspy-locals")
