"""Alternating baseline/candidate timing and the statistics reported for it.

A figure is the median of per-round ratios, each round timing the baseline and the
candidate back to back (in ABBA order, so a slow drift favours neither side). The garbage
collector is paused while a sample runs: a collection landing in one side's sample would
otherwise be charged to it.
"""

from __future__ import annotations

import gc
import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

Sample = Callable[[], float]
"""Runs one timed sample and returns its cost in nanoseconds per operation."""


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collect now, then keep the cyclic collector off until the block ends."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True)
class Comparison:
    """Medians of ``rounds`` alternating samples; ``ratio`` is candidate / baseline."""

    baseline_ns: float
    candidate_ns: float
    ratio: float
    ratio_q1: float
    ratio_q3: float
    rounds: int


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile); all three equal for a single value."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = math.ceil(fraction * len(ordered))
    return ordered[min(len(ordered), max(rank, 1)) - 1]


def _timed(sample: Sample) -> float:
    with gc_paused():
        return sample()


def alternate(baseline: Sample, candidate: Sample, rounds: int, warmup: int = 2) -> Comparison:
    """Time ``rounds`` baseline/candidate pairs, alternating which side goes first."""
    if rounds < 1:
        raise ValueError(f'"rounds" must be at least 1: {rounds!r}')
    for _ in range(warmup):
        _timed(baseline)
        _timed(candidate)
    baselines: list[float] = []
    candidates: list[float] = []
    ratios: list[float] = []
    for index in range(rounds):
        if index % 2 == 0:
            base = _timed(baseline)
            cand = _timed(candidate)
        else:
            cand = _timed(candidate)
            base = _timed(baseline)
        baselines.append(base)
        candidates.append(cand)
        ratios.append(cand / base)
    q1, median, q3 = quartiles(ratios)
    return Comparison(
        baseline_ns=statistics.median(baselines),
        candidate_ns=statistics.median(candidates),
        ratio=median,
        ratio_q1=q1,
        ratio_q3=q3,
        rounds=rounds,
    )
