"""Instructions per call of one server variant, counted by callgrind.

Timings on a shared machine wander by a percent or more from run to run; instruction
counts repeat within about 0.5 %, so they tell whether a change to a per-request path helps
before a timed run says by how much. ``instructions_per_call`` runs a bench target (a
module that prints ``ready <port>...`` once it serves, one port per variant, and stops
when its stdin closes) under ``valgrind --tool=callgrind``, drives warm-up calls to one
variant's port, zeroes the counters (``callgrind_control -z``), drives the measured calls,
dumps the counters and divides. Used by ``bench.http_instructions`` and
``bench.grpc_instructions``; by hand only, as it needs valgrind (``apt-get install
valgrind``) and takes about a minute per variant.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Final

_REPO_ROOT: Final = Path(__file__).resolve().parent.parent
WARMUP_CALLS: Final = 300
MEASURED: Final[tuple[str, ...]] = ("baseline", "drainwatch")
_STOP_TIMEOUT_SECONDS: Final = 60

Send = Callable[[int, int], None]
"""``(first, count)``: make ``count`` calls, numbered from ``first``, one after the other."""
Connect = Callable[[int], AbstractContextManager[Send]]
"""A client of the port given, open for the warm-up and the measured calls alike."""
PerCall = Callable[[str, str, int], float]
"""``(kind, variant, calls)``: a variant's instructions per call."""


def instructions_per_call(
    target: Sequence[str], variant_index: int, connect: Connect, calls: int
) -> float:
    """The instructions ``python -m <target...>`` runs per call to its ``variant_index``th
    port, over ``calls`` calls after ``WARMUP_CALLS``."""
    with tempfile.TemporaryDirectory() as directory:
        dump = Path(directory) / "callgrind.out"
        server = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={dump}",
                sys.executable,
                "-m",
                *target,
            ],
            cwd=_REPO_ROOT,
            # Fixed string hashes: dict and type-cache layouts repeat from run to run.
            env={**os.environ, "PYTHONHASHSEED": "0"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            if server.stdout is None or server.stdin is None:
                raise RuntimeError("the server's pipes are missing")  # pragma: no cover
            fields = server.stdout.readline().split()
            if fields[:1] != ["ready"] or len(fields) <= 1 + variant_index:
                raise RuntimeError(f"{' '.join(target)} did not start: {fields!r}")
            pid = str(server.pid)
            with connect(int(fields[1 + variant_index])) as send:
                send(0, WARMUP_CALLS)
                subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
                send(WARMUP_CALLS, calls)
                subprocess.run(
                    ["callgrind_control", "-d", "measured", pid], check=True, capture_output=True
                )
            server.stdin.close()
            server.wait(timeout=_STOP_TIMEOUT_SECONDS)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        dumps = sorted(Path(directory).glob("callgrind.out.*"))
        if not dumps:
            raise RuntimeError("callgrind wrote no dump of the measured calls")
        summary = re.search(r"^summary: (\d+)$", dumps[0].read_text(), re.MULTILINE)
        if summary is None:
            raise RuntimeError(f"no summary line in {dumps[0].name}")
        return int(summary.group(1)) / calls


def tool_main(
    argv: Sequence[str], *, prog: str, kinds: Sequence[str], unit: str, per_call: PerCall
) -> int:
    """A tool's command line: ``KIND [--<unit>s N]``; prints each variant's instructions
    per ``unit``, then what drainwatch adds."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("kind", choices=kinds)
    flag = f"--{unit}s"
    parser.add_argument(
        flag, type=int, default=1000, dest="calls", metavar="N", help=f"measured {unit}s (>= 1)"
    )
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error(f"{flag} must be at least 1, got {args.calls}")
    counts = {variant: per_call(args.kind, variant, args.calls) for variant in MEASURED}
    for variant, count in counts.items():
        print(f"{variant:<12} {count:>10,.0f} instructions/{unit}")
    added = counts["drainwatch"] - counts["baseline"]
    print(f"{'added':<12} {added:>+10,.0f} ({added / counts['baseline']:+.1%})")
    return 0
