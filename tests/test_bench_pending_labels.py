"""``python -m bench.pending_labels``: its arguments, and a real run that checks the records
count every request it holds."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.processes import run_bench_tool


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bench_tool("pending_labels", *args, timeout=120)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--routes", "0"], "--routes must be at least 1, got 0"),
        (["--in-flight", "10", "-3"], "--in-flight must be at least 1, got -3"),
        (["--routes", "many"], "argument --routes: invalid int value: 'many'"),
    ],
)
def test_bad_arguments_are_refused_with_the_rule(args: list[str], expected: str) -> None:
    done = run_tool(*args)
    assert done.returncode == 2
    assert expected in done.stderr


def test_a_run_holds_requests_and_times_the_read_of_each_kind() -> None:
    """Routed and unrouted requests held at two counts: one line each, with positive times
    (the tool exits non-zero when the records miss a held request)."""
    done = run_tool("--routes", "3", "--in-flight", "5", "40")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4
    pattern = re.compile(
        r"^(routed|unrouted) .* +(5|40) in flight, 3 routes: +([0-9.]+) ms per read, "
        r"+([0-9.]+) µs per request$"
    )
    for line, (kind, count) in zip(
        lines,
        [("routed", "5"), ("routed", "40"), ("unrouted", "5"), ("unrouted", "40")],
        strict=True,
    ):
        match = pattern.match(line)
        assert match is not None, line
        assert (match.group(1), match.group(2)) == (kind, count)
        assert float(match.group(3)) > 0
