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

drainwatch's channels replace `asyncio.Queue` and `queue.Queue` in application hot paths, and
the SDK reports to a sidecar agent. This page holds the figures that keep both honest: each
channel against the stdlib queue it replaces, the time from `close()` to the agent's
`/metrics`, and what a missing agent costs. It is generated; do not edit it by hand.

- Command (from the repository root, in the dev environment): `{command}`{mode}
- Machine: {machine.describe()}
- Date: {now}

## Results

{markdown_table(figures)}

Ratios are candidate / baseline (below 1 means the candidate is faster). "Spread" is the
interquartile range of the per-round ratios.

## Method

Every ratio comes from rounds in which the baseline and the candidate are timed back to back
in the same process, alternating which goes first, so slow drift and noisy neighbours hit
both sides alike; the figure is the median of the per-round ratios and the spread its
interquartile range. Timings use `time.perf_counter_ns`, each side is warmed up first, and
the cyclic garbage collector is off while a sample runs. The channel micro-benchmarks run
with reporting disabled, since their hot paths never touch the reporter; figure 5 measures
the reporting path. The close latency is not a ratio: it is measured end to end with real
processes and judged on its p99.

{_notes(figures)}

Run `python -m bench --quick` for a smoke run (under a minute, never fails on noise) and
`python -m bench` for these figures; the full run exits 1 when a budget is missed.
"""


def write_doc(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
