"""``python -m bench.http_instructions``: its arguments, and a real count under valgrind
(``scripts/test`` installs it)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.processes import run_bench_tool


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bench_tool("http_instructions", *args, timeout=600)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--requests", "0", "aiohttp"], "--requests must be at least 1, got 0"),
        (["--requests", "many", "aiohttp"], "invalid int value: 'many'"),
        (["flask"], "invalid choice: 'flask'"),
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
def test_counts_what_drainwatch_adds_per_aiohttp_request() -> None:
    result = run_tool("aiohttp", "--requests", "50")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["baseline", "drainwatch", "added"]
    baseline, drainwatch = (float(line.split()[1].replace(",", "")) for line in lines[:2])
    # An aiohttp request runs some 200k instructions; counting it adds a few thousand.
    assert 50_000 < baseline < drainwatch < baseline * 1.2
