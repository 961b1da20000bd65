"""``python -m bench.http_instructions`` and ``python -m bench.grpc_instructions``: their
arguments, and a real count under valgrind (``scripts/test`` installs it)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.processes import run_bench_tool


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_bench_tool(tool, *args, timeout=600)


@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        (
            "http_instructions",
            ["--requests", "0", "aiohttp"],
            "--requests must be at least 1, got 0",
        ),
        ("http_instructions", ["--requests", "many", "aiohttp"], "invalid int value: 'many'"),
        ("http_instructions", ["asgi", "--calls", "5"], "unrecognized arguments: --calls 5"),
        ("http_instructions", ["flask"], "invalid choice: 'flask'"),
        ("http_instructions", [], "the following arguments are required: kind"),
        ("grpc_instructions", ["--calls", "0", "sync"], "--calls must be at least 1, got 0"),
        ("grpc_instructions", ["--calls", "-5", "aio"], "--calls must be at least 1, got -5"),
        ("grpc_instructions", ["--calls", "lots", "sync"], "invalid int value: 'lots'"),
        ("grpc_instructions", ["threaded"], "invalid choice: 'threaded'"),
        ("grpc_instructions", [], "the following arguments are required: kind"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(
    tool: str, args: list[str], expected: str
) -> None:
    result = run_tool(tool, *args)
    assert result.returncode == 2
    assert expected in result.stderr
    assert result.stdout == ""


@pytest.mark.skipif(
    shutil.which("valgrind") is None, reason="needs valgrind (apt-get install valgrind)"
)
@pytest.mark.parametrize(
    ("tool", "args", "unit", "smallest_baseline", "at_most_added"),
    [
        # An aiohttp request runs some 230k instructions; counting it adds a few thousand.
        ("http_instructions", ["aiohttp", "--requests", "50"], "request", 50_000, 0.2),
        # A sync server runs some 345k instructions per unary call; counting it, about 5k.
        ("grpc_instructions", ["sync", "--calls", "50"], "call", 100_000, 0.1),
    ],
)
def test_counts_what_drainwatch_adds_per_call(
    tool: str, args: list[str], unit: str, smallest_baseline: int, at_most_added: float
) -> None:
    result = run_tool(tool, *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["baseline", "drainwatch", "added"]
    assert all(line.split()[2] == f"instructions/{unit}" for line in lines[:2])
    baseline, drainwatch = (float(line.split()[1].replace(",", "")) for line in lines[:2])
    assert smallest_baseline < baseline < drainwatch < baseline * (1 + at_most_added)
