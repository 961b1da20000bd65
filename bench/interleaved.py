"""Servers timed call by call in turn, and the two figures made of it.

The gRPC and HTTP figures run three servers side by side (no instrumentation,
drainwatch's, OpenTelemetry's) and call them in turn, call by call (A B C, C B A, A B C,
... with the first server rotating from round to round), timing every call; a server's
figure for a round is its mean call latency. A noisy neighbour's slice of CPU then lands
on all three alike, where timing a block of calls per server would charge it to whichever
server was running.

Two figures per server kind: the round's drainwatch/baseline ratio (median over rounds),
and drainwatch's added time per call against OpenTelemetry's (medians over rounds of a
server's latency minus the baseline's in the same round).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .figure import Figure, ratio_figure
from .measure import Comparison, quartiles

VARIANTS = ("baseline", "drainwatch", "opentelemetry")
BASELINE = VARIANTS.index("baseline")
DRAINWATCH = VARIANTS.index("drainwatch")
OPENTELEMETRY = VARIANTS.index("opentelemetry")


def call_orders(round_index: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(forward, backward) order of the variants in a round: calls alternate between the
    two, and the first variant rotates from round to round."""
    first = round_index % len(VARIANTS)
    order = tuple((first + step) % len(VARIANTS) for step in range(len(VARIANTS)))
    return order, order[::-1]


def added_text(nanoseconds: float) -> str:
    return f"{nanoseconds / 1000:+.1f} µs"


def added(samples: Sequence[Sequence[float]], variant: int) -> list[float]:
    """Per round, ``variant``'s mean latency minus the baseline's, in ns."""
    return [
        candidate - baseline
        for candidate, baseline in zip(samples[variant], samples[BASELINE], strict=True)
    ]


def quartile_text(values: Sequence[float]) -> str:
    q1, _, q3 = quartiles(values)
    return f"{q1 / 1000:+.1f} to {q3 / 1000:+.1f} µs"


@dataclass(frozen=True)
class Labels:
    """How one server kind's figures are named and described."""

    overhead_name: str
    share_name: str
    baseline: str  # the uninstrumented server, e.g. "no interceptor"
    unit: str  # "call", "request"
    overhead_note: str  # what was timed, before the added time is stated
    share_note: str


def overhead_figure(samples: Sequence[Sequence[float]], labels: Labels, budget: float) -> Figure:
    """drainwatch against the baseline: the median of the per-round latency ratios."""
    baseline, drainwatch = samples[BASELINE], samples[DRAINWATCH]
    q1, ratio, q3 = quartiles([d / b for d, b in zip(drainwatch, baseline, strict=True)])
    comparison = Comparison(
        baseline_ns=statistics.median(baseline),
        candidate_ns=statistics.median(drainwatch),
        ratio=ratio,
        ratio_q1=q1,
        ratio_q3=q3,
        rounds=len(baseline),
    )
    extra = added(samples, DRAINWATCH)
    opentelemetry_ratio = statistics.median(
        [o / b for o, b in zip(samples[OPENTELEMETRY], baseline, strict=True)]
    )
    return ratio_figure(
        labels.overhead_name,
        comparison,
        baseline=labels.baseline,
        candidate="drainwatch",
        unit=labels.unit,
        budget=budget,
        note=(
            f"{labels.overhead_note}; drainwatch adds "
            f"{added_text(statistics.median(extra))} per {labels.unit} (interquartile range "
            f"{quartile_text(extra)}); OpenTelemetry's ratio in the same rounds is "
            f"{opentelemetry_ratio:.3f}"
        ),
    )


def share_figure(samples: Sequence[Sequence[float]], labels: Labels, budget: float) -> Figure:
    """drainwatch's added time over OpenTelemetry's (medians over rounds); a miss when
    OpenTelemetry added nothing measurable, since the share then means nothing."""
    drainwatch, opentelemetry = added(samples, DRAINWATCH), added(samples, OPENTELEMETRY)
    drainwatch_ns = statistics.median(drainwatch)
    opentelemetry_ns = statistics.median(opentelemetry)
    share = drainwatch_ns / opentelemetry_ns if opentelemetry_ns > 0 else None
    return Figure(
        name=labels.share_name,
        baseline=f"OpenTelemetry: {added_text(opentelemetry_ns)}/{labels.unit}",
        candidate=f"drainwatch: {added_text(drainwatch_ns)}/{labels.unit}",
        ratio="-" if share is None else f"{share:.3f}",
        spread=(
            f"drainwatch {quartile_text(drainwatch)}, OpenTelemetry "
            f"{quartile_text(opentelemetry)} (n={len(drainwatch)})"
        ),
        budget=f"≤ {budget:.2f}",
        meets=share is not None and share <= budget,
        note=labels.share_note,
    )
