"""``python -m tests.fuzz [--seconds S] [TARGET ...]``: coverage-guided fuzzing with atheris.

Each target runs in its own process for ``--seconds`` (default 5), starting from its seeds
in ``tests/fuzz/corpus/<target>/`` plus a working corpus in a temporary directory (or
``--work DIR``, kept between runs), so the repository is never written to. Prints one line
per target: executions, new inputs found, crashes. An input that crashes a target is kept
in the work directory as ``crash-*``; add it to the target's corpus once fixed, and
``tests/fuzz/test_corpus.py`` replays it on every test run.

Exit code 0: no crash; 1: a target crashed (its output is printed); 2: usage error.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tests.fuzz.targets import TARGETS

CORPUS: Final = Path(__file__).resolve().parent / "corpus"
# Datagrams go up to 64 KiB; the other inputs are small files.
_MAX_LEN: Final = {
    "datagram": 66_000,
    "config": 8192,
    "pyspy": 65_536,
    "query": 1024,
    "lint_python": 16_384,
    "lint_manifest": 16_384,
}
_STAT: Final = re.compile(r"stat::(\w+):\s+(\d+)")


@dataclass(frozen=True)
class RunResult:
    target: str
    seconds: float
    executions: int
    new_inputs: int
    crashed: bool
    output: str


def run_target(target: str, seconds: int, work: Path) -> RunResult:
    corpus = work / target
    corpus.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.atheris_target",
            target,
            f"-max_total_time={seconds}",
            f"-max_len={_MAX_LEN[target]}",
            "-timeout=10",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
            f"-artifact_prefix={work}/{target}-",
            str(corpus),
            str(CORPUS / target),
        ],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=seconds + 120,
        check=False,
    )
    output = completed.stdout + completed.stderr
    stats = {name: int(value) for name, value in _STAT.findall(output)}
    return RunResult(
        target,
        time.monotonic() - started,
        stats.get("number_of_executed_units", 0),
        stats.get("new_units_added", 0),
        completed.returncode != 0,
        output,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=", ".join(TARGETS))
    parser.add_argument("--seconds", type=int, default=5, help="per target (default 5)")
    parser.add_argument("--work", type=Path, help="working corpus and crashes (default: temp)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.targets if name not in TARGETS]
    if unknown or args.seconds < 1:
        parser.error(f"targets are {', '.join(TARGETS)} and --seconds >= 1: {unknown}")
    work = args.work or Path(tempfile.mkdtemp(prefix="drainwatch-fuzz-"))
    crashed = []
    for target in args.targets or list(TARGETS):
        result = run_target(target, args.seconds, work)
        print(
            f"{target:<9} {result.executions:>10} executions in {result.seconds:5.1f} s, "
            f"{result.new_inputs} new inputs, {'CRASH' if result.crashed else 'no crash'}",
            flush=True,
        )
        if result.crashed:
            crashed.append(result)
    for result in crashed:
        print(f"\n== {result.target} crashed; inputs kept in {work}\n{result.output[-6000:]}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
