"""The results table (console and Markdown) and ``docs/performance.md``."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .figure import Figure

_HEADER = ("Figure", "Baseline", "Candidate", "Ratio (median)", "Spread", "Budget", "Verdict")


@dataclass(frozen=True)
class Machine:
    cores: int
    cpu: str
    python: str
    system: str

    def describe(self) -> str:
        return (
            f"{self.cores} cores, {self.cpu}, Python {self.python} "
            f"({platform.python_implementation()}), {self.system}"
        )


def _cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown CPU"


def this_machine() -> Machine:
    return Machine(
        cores=os.cpu_count() or 1,
        cpu=_cpu_model(),
        python=platform.python_version(),
        system=f"{platform.system()} {platform.release()}",
    )


def _rows(figures: Sequence[Figure]) -> list[tuple[str, ...]]:
    return [
        (f.name, f.baseline, f.candidate, f.ratio, f.spread, f.budget, f.verdict) for f in figures
    ]


def console_table(figures: Sequence[Figure]) -> str:
    rows = [_HEADER, *_rows(figures)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_HEADER))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(figures: Sequence[Figure]) -> str:
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(figures)]
    return "\n".join(lines)


def _notes(figures: Sequence[Figure]) -> str:
    return "\n".join(f"{index}. **{f.name}**: {f.note}." for index, f in enumerate(figures, 1))


def performance_doc(figures: Sequence[Figure], command: str, machine: Machine, quick: bool) -> str:
    """The whole ``docs/performance.md``, from one run of the suite."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = " (quick mode: few iterations, a smoke test rather than a measurement)" if quick else ""
    return f"""# Performance

drainwatch's channels replace `asyncio.Queue` and `queue.Queue` in application hot paths, its
gRPC interceptors sit on every RPC, and the SDK reports to a sidecar agent. This page holds
the figures that keep them honest: each channel against the stdlib queue it replaces, the time
from `close()` to the agent's `/metrics`, what a missing agent costs, and what in-flight
tracking adds to a gRPC call, next to what OpenTelemetry's tracing adds. It is generated; do
not edit it by hand.

- Command (from the repository root, in the dev environment): `{command}`{mode}
- Machine: {machine.describe()}
- Date: {now}

## Results

{markdown_table(figures)}

Ratios are candidate / baseline (below 1 means the candidate is faster). "Spread" is the
interquartile range of the per-round ratios; for the added-time rows, of the per-round added
times.

## Method

Every ratio comes from rounds in which the baseline and the candidate are timed back to back
in the same process, alternating which goes first, so slow drift and noisy neighbours hit
both sides alike; the figure is the median of the per-round ratios and the spread its
interquartile range. Timings use `time.perf_counter_ns`, each side is warmed up first, and
the cyclic garbage collector is off while a sample runs. The channel micro-benchmarks run
with reporting disabled, since their hot paths never touch the reporter; figure 5 measures
the reporting path. The close latency is not a ratio: it is measured end to end with real
processes and judged on its p99.

The gRPC figures time a unary call on loopback (a raw-bytes method whose handler returns the
request at once) against three servers running side by side in one server process: no
interceptor, drainwatch's, OpenTelemetry's. The bench process is the client and calls the
three in turn, call by call (A B C, C B A, ...; the first server rotates from round to
round), timing every call, so a noisy neighbour's slice of CPU lands on all three alike; a
server's figure for a round is its mean call latency, and "added time" is that minus the
baseline's in the same round. Timing a block of calls per server instead, one server at a
time, gave spreads of 0.03 to 0.30 over six runs, against 0.01 to 0.04 interleaved in the
same period. The server runs in its own process, as it would in production. Measured both
ways on this 2-core machine, neither placement was consistently steadier (median
interquartile width of the per-round ratios over seven paired sync runs 0.07 with a separate
process, 0.04 in the bench process; over four aio runs 0.03 both ways), so the figure uses
the placement that charges the interceptor what production would: in one process the
server's work competes with the client's for the GIL (sync) or runs on the client's event
loop (aio). The server process runs with reporting off and its cyclic garbage collector on
(a collection is charged to the calls whose allocations trigger it); the client's collector
is off during a round.

{_notes(figures)}

Run `python -m bench --quick` for a smoke run (under a minute, never fails on noise) and
`python -m bench` for these figures; the full run exits 1 when a budget is missed.
"""


def write_doc(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
