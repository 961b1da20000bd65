"""``python -m bench.grpc_instructions``: its arguments, and a real count under valgrind
(``scripts/test`` installs it)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.processes import run_bench_tool


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bench_tool("grpc_instructions", *args, timeout=600)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--calls", "0", "sync"], "--calls must be at least 1, got 0"),
        (["--calls", "-5", "aio"], "--calls must be at least 1, got -5"),
        (["--calls", "lots", "sync"], "invalid int value: 'lots'"),
        (["threaded"], "invalid choice: 'threaded'"),
        ([], "the following arguments are required: kind"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(args: list[str], expected: str) -> None:
    result = run_tool(*args)
    assert result.returncode == 2
    assert expected in result.stderr
    assert result.stdout == ""


@pytest.mark.skipif(
    shutil.which("valgrind") is None, reason="needs valgrind (apt-get install valgrind)"
)
def test_counts_what_drainwatch_adds_per_sync_call() -> None:
    result = run_tool("sync", "--calls", "50")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["baseline", "drainwatch", "added"]
    assert all(line.split()[2] == "instructions/call" for line in lines[:2])
    baseline, drainwatch = (float(line.split()[1].replace(",", "")) for line in lines[:2])
    # A sync server runs some 350k instructions per unary call; counting it adds a few
    # thousand.
    assert 100_000 < baseline < drainwatch < baseline * 1.1
