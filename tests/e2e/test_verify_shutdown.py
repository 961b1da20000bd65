"""``drainwatch verify-shutdown`` as a CI job runs it: a real command line, real services
(grpc.aio, sync gRPC, aiohttp, FastAPI under uvicorn) with good and broken shutdowns, a
real SIGTERM, real load and probes, and the exit code and JSON it leaves behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from drainwatch.agent.loadgen import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "examples" / "services"
REQUEST_MS = 1500
PROPAGATION = "1.0"  # the services' propagation wait: longer than the accept window
ACCEPT_WINDOW = "0.4"


@dataclass(frozen=True)
class Kind:
    script: str
    grpc: bool
    health: str  # "http" (/healthz on the health port) or "grpc" (grpc.health.v1)
    stop_not_awaited: bool  # the broken variant starts a server stop nobody waits for


KINDS = {
    "grpc_aio": Kind("payments_grpc_aio.py", True, "http", True),
    "grpc_sync": Kind("payments_grpc_sync.py", True, "grpc", True),
    "aiohttp": Kind("orders_aiohttp.py", False, "http", False),
    "uvicorn": Kind("orders_fastapi.py", False, "http", False),
}


@dataclass
class Verified:
    code: int
    stdout: str
    stderr: str
    result: dict[str, Any]
    seconds: float

    def check(self, name: str) -> dict[str, Any]:
        return next(check for check in self.result["checks"] if check["name"] == name)

    @property
    def failed(self) -> set[str]:
        return {check["name"] for check in self.result["checks"] if check["status"] == "fail"}

    @property
    def rules(self) -> set[str]:
        report = self.result["drain_report"] or {}
        return {violation["rule"] for violation in report.get("violations", [])}


def verify(
    kind: Kind,
    variant: str,
    tmp_path: Path,
    *extra: str,
    service_args: tuple[str, ...] = (),
    request_ms: int = REQUEST_MS,
) -> Verified:
    port, health_port = free_port(), free_port()
    out = tmp_path / "result.json"
    if kind.grpc:
        load = [
            "--grpc",
            f"127.0.0.1:{port}",
            "--grpc-method",
            "/payments.Payments/Pay",
            "--grpc-request-text",
            str(request_ms),
        ]
    else:
        load = ["--http", f"http://127.0.0.1:{port}/orders/7?ms={request_ms}"]
    if kind.health == "grpc":
        health = ["--health-grpc", f"127.0.0.1:{health_port}"]
    else:
        health = [
            "--health-url",
            f"http://127.0.0.1:{health_port}/healthz",
            "--readiness-url",
            f"http://127.0.0.1:{health_port}/readyz",
        ]
    command = [
        sys.executable,
        "-m",
        "drainwatch",
        "verify-shutdown",
        *load,
        *health,
        "--concurrency",
        "4",
        "--signal-after",
        "1",
        "--accept-window",
        ACCEPT_WINDOW,
        "--budget",
        "15",
        "--json-out",
        str(out),
        *extra,
        "--",
        sys.executable,
        str(SERVICES / kind.script),
        "--port",
        str(port),
        "--health-port",
        str(health_port),
        "--shutdown",
        variant,
        "--propagation",
        PROPAGATION,
        *service_args,
    ]
    began = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=100, check=False)
    seconds = time.monotonic() - began
    result = json.loads(out.read_text()) if out.exists() else {}
    return Verified(done.returncode, done.stdout, done.stderr, result, seconds)


@pytest.mark.parametrize("name", list(KINDS))
def test_a_correct_shutdown_passes_every_check(name: str, tmp_path: Path) -> None:
    """Readiness off, propagation wait, an awaited stop, health last: exit 0, all checks
    pass, and the in-flight requests were really exercised."""
    run = verify(KINDS[name], "good", tmp_path)
    assert run.code == 0, run.stdout + run.stderr
    assert run.result["verdict"] == "pass"
    assert run.failed == set(), run.stdout
    assert run.check("in_flight_completed")["status"] == "pass"
    assert run.check("new_requests_accepted")["status"] == "pass"
    assert run.check("health_until_business_closed")["status"] == "pass"
    assert run.result["exit_code"] == 0 and not run.result["killed"]
    caught = [r for r in run.result["requests"] if r["start_offset"] < 0 < r["end_offset"]]
    assert len(caught) >= 4 and all(request["ok"] for request in caught), caught
    assert run.stdout.rstrip().endswith("verify-shutdown: PASS")
    assert "SIGTERM sent" in run.stderr  # progress while it runs


@pytest.mark.parametrize("name", list(KINDS))
def test_the_post_mortem_mistakes_fail_naming_the_violations(name: str, tmp_path: Path) -> None:
    """Health closed first and (for gRPC) a stop nobody awaited: exit 1, the failed checks
    and the agent's violations are named in the report with their fixes."""
    kind = KINDS[name]
    run = verify(kind, "broken", tmp_path)
    assert run.code == 1, run.stdout + run.stderr
    assert run.result["verdict"] == "fail"
    assert {"in_flight_completed", "health_until_business_closed", "no_violations"} <= run.failed, (
        run.stdout + run.stderr
    )
    expected = {"health_closed_before_business", "inflight_at_exit"}
    if kind.stop_not_awaited:
        expected.add("exited_before_stop_completed")
    assert expected <= run.rules, run.stdout
    for rule in expected:
        assert rule in run.stdout
    assert "what failed and the likely fix:" in run.stdout
    assert "docs/runbooks/health_closed_before_business.md" in run.stdout
    assert run.stdout.rstrip().splitlines()[-1].startswith("verify-shutdown: FAIL")


def test_a_drain_that_hangs_past_the_budget_is_killed_and_reported(tmp_path: Path) -> None:
    """Requests far longer than the budget and a grace period to match: SIGKILL at the
    budget, exit 1, and the hang is named as the budget check and the agent's rule."""
    run = verify(
        KINDS["grpc_aio"],
        "good",
        tmp_path,
        "--budget",
        "3",
        "--accept-window",
        "0",
        service_args=("--grace", "60"),
        request_ms=30_000,
    )
    assert run.code == 1, run.stdout + run.stderr
    assert run.result["killed"] is True
    budget = run.check("exited_within_budget")
    assert budget["status"] == "fail" and "killed with SIGKILL" in budget["summary"]
    assert "drain_exceeded_budget" in run.rules, run.stdout
    assert run.check("new_requests_accepted")["status"] == "skip"
    assert "still running after the 3 s budget" in run.stderr
    assert run.seconds < 40  # nowhere near the service's own 60 s grace


def test_a_command_that_exits_before_it_is_ready_is_a_start_error(tmp_path: Path) -> None:
    """A command that dies at start: exit 2 with its code and its last output."""
    script = tmp_path / "dies.py"
    script.write_text("import sys\nprint('cannot bind: address in use')\nsys.exit(3)\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "drainwatch",
            "verify-shutdown",
            "--http",
            f"http://127.0.0.1:{free_port()}/",
            "--",
            sys.executable,
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "exited with code 3 before it was ready" in done.stderr
    assert "cannot bind: address in use" in done.stderr


def test_a_command_that_never_listens_is_a_start_error(tmp_path: Path) -> None:
    """Nothing ever listens on the business port: exit 2 after --ready-timeout, saying
    what it waited for."""
    script = tmp_path / "idle.py"
    script.write_text("import time\ntime.sleep(60)\n")
    began = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "drainwatch",
            "verify-shutdown",
            "--http",
            f"http://127.0.0.1:{free_port()}/",
            "--ready-timeout",
            "1",
            "--",
            sys.executable,
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not ready within --ready-timeout 1 s" in done.stderr
    assert "business ports to listen" in done.stderr
    assert time.monotonic() - began < 30


LEAVES_A_CHILD = """
import http.server, signal, subprocess, sys, threading
child = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                          "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
open(sys.argv[2], "w").write(str(child.pid))
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
server.shutdown()
"""


def test_what_the_command_leaves_behind_is_killed(tmp_path: Path) -> None:
    """A child that ignores SIGTERM and outlives the command is killed with its group."""
    script = tmp_path / "leaves_a_child.py"
    script.write_text(LEAVES_A_CHILD)
    pid_file = tmp_path / "child.pid"
    port = free_port()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "drainwatch",
            "verify-shutdown",
            "--http",
            f"http://127.0.0.1:{port}/",
            "--signal-after",
            "0.5",
            "--accept-window",
            "0",
            "--",
            sys.executable,
            str(script),
            str(port),
            str(pid_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        status = (
            Path(f"/proc/{child}/status").read_text() if Path(f"/proc/{child}").exists() else ""
        )
        if "State:\tZ" in status:
            break  # killed, waiting for its (gone) parent's reaper
        time.sleep(0.05)
    status = Path(f"/proc/{child}/status").read_text() if Path(f"/proc/{child}").exists() else ""
    assert not status or "State:\tZ" in status, status
