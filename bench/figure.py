"""One row of the results table, and how a ratio comparison becomes one."""

from __future__ import annotations

from dataclasses import dataclass

from .measure import Comparison


@dataclass(frozen=True)
class Figure:
    """A measured figure with its budget; ``meets`` is the verdict against the budget."""

    name: str
    baseline: str
    candidate: str
    ratio: str
    spread: str
    budget: str
    meets: bool
    note: str = ""

    @property
    def verdict(self) -> str:
        return "meets" if self.meets else "misses"


def format_ns(nanoseconds: float) -> str:
    if nanoseconds >= 1_000_000:
        return f"{nanoseconds / 1_000_000:.2f} ms"
    if nanoseconds >= 10_000:
        return f"{nanoseconds / 1_000:.1f} µs"
    return f"{nanoseconds:.0f} ns"


def ratio_figure(
    name: str,
    comparison: Comparison,
    *,
    baseline: str,
    candidate: str,
    unit: str,
    budget: float,
    note: str = "",
) -> Figure:
    """A figure whose verdict is ``median ratio <= budget``."""
    return Figure(
        name=name,
        baseline=f"{baseline}: {format_ns(comparison.baseline_ns)}/{unit}",
        candidate=f"{candidate}: {format_ns(comparison.candidate_ns)}/{unit}",
        ratio=f"{comparison.ratio:.3f}",
        spread=f"{comparison.ratio_q1:.3f} to {comparison.ratio_q3:.3f} (n={comparison.rounds})",
        budget=f"≤ {budget:.2f}",
        meets=comparison.ratio <= budget,
        note=note,
    )
