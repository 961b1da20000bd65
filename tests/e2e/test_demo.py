"""The README's first command: ``drainwatch demo`` runs an agent and the example end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import short_tmpdir

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_demo_shows_the_examples_mistakes_and_exits_with_once() -> None:
    """The demo shows the channel mistakes and judges a broken and a good payments drain."""
    socket_path = os.path.join(short_tmpdir(), "ingest.sock")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "drainwatch",
            "demo",
            "--once",
            "--listen",
            "127.0.0.1:0",
            "--ingest",
            f"unix://{socket_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
        env={**os.environ, "DEMO_SECONDS": "0.5"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {
        line.split()[0]: line.split()
        for line in result.stdout.splitlines()
        if line.startswith("orders-demo/")
    }
    assert set(rows) == {"orders-demo/audit", "orders-demo/orders", "orders-demo/payments"}
    audit, orders, payments = (
        rows["orders-demo/audit"],
        rows["orders-demo/orders"],
        rows["orders-demo/payments"],
    )
    header = next(
        line.split("  ") for line in result.stdout.splitlines() if line.startswith("channel")
    )
    assert [cell.strip() for cell in header if cell.strip()][:6] == [
        "channel",
        "depth",
        "sent",
        "received",
        "closed at",
        "residual",
    ]
    assert int(audit[5]) == int(audit[2]) > 0  # every audit entry left behind at close
    assert orders[6:9] == ["3", "2", "0"]  # read-after-close, send-after-close, double close
    assert payments[8] == "1"
    assert "Metrics: curl -s http://127.0.0.1:" in result.stdout
    broken, good = result.stdout.split("== 2. broken shutdown")[1].split("== 3. good shutdown")
    for rule in (
        "health_closed_before_business",
        "readiness_not_failed_first",
        "exited_before_stop_completed",
        "inflight_at_exit",
    ):
        assert f"x {rule}" in broken, broken
    assert "in flight at exit: grpc 10" in broken
    assert "clients saw: 10 OK" in good and "verdict: OK" in good, good


def test_demo_without_the_example_explains_what_to_do(tmp_path: Path) -> None:
    """Run outside the checkout with a wrong --example, the demo says how to fix it."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "drainwatch",
            "demo",
            "--once",
            "--example",
            str(tmp_path / "missing.py"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert "pass --example PATH" in result.stderr
