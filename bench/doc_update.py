"""Update some figures of an existing ``docs/performance.md`` (``python -m bench --only``).

The full suite writes the whole page (``report.performance_doc``). A figure added or
measured again on its own replaces its row of the results table and its numbered note (or
joins them at the end); every other figure stays as it was measured, and a line under the
run's header says which figures came from which command, when and on what machine.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence

from .figure import Figure
from .report import Machine, markdown_table

_NOTE = re.compile(r"^\d+\. \*\*(?P<name>.+?)\*\*: (?P<note>.*)\.$")
_HEADER = "| Figure |"


class DocFormatError(ValueError):
    """The page does not have the shape ``report.performance_doc`` writes."""


def _row_figure(line: str, notes: dict[str, str]) -> Figure:
    cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
    if len(cells) != 7:
        raise DocFormatError(f"a results row without 7 cells: {line[:80]!r}")
    name, baseline, candidate, ratio, spread, budget, verdict = cells
    return Figure(
        name, baseline, candidate, ratio, spread, budget, verdict == "meets", notes.get(name, "")
    )


def update_doc(text: str, figures: Sequence[Figure], command: str, machine: Machine) -> str:
    """``text`` with ``figures`` in its table and notes, and a line naming their run."""
    lines = text.splitlines()
    notes = {m["name"]: m["note"] for line in lines if (m := _NOTE.match(line))}
    try:
        header = next(i for i, line in enumerate(lines) if line.startswith(_HEADER))
    except StopIteration:
        raise DocFormatError("no results table (a line starting with '| Figure |')") from None
    end = header + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    kept = [_row_figure(line, notes) for line in lines[header + 2 : end]]
    fresh = {figure.name: figure for figure in figures}
    merged = [fresh.pop(figure.name, figure) for figure in kept] + list(fresh.values())
    lines[header:end] = markdown_table(merged).splitlines()
    numbered = [f"{index}. **{f.name}**: {f.note}." for index, f in enumerate(merged, 1)]
    first_note = next((i for i, line in enumerate(lines) if _NOTE.match(line)), None)
    lines = [line for line in lines if not _NOTE.match(line)]
    if first_note is None:  # no notes yet: they go before the closing paragraph
        first_note = next(
            (i for i, line in enumerate(lines) if line.startswith("Run `python -m bench")),
            len(lines),
        )
        numbered.append("")
    lines[first_note:first_note] = numbered
    return "\n".join(_with_run_line(lines, figures, command, machine)) + "\n"


def _with_run_line(
    lines: list[str], figures: Sequence[Figure], command: str, machine: Machine
) -> list[str]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    names = ", ".join(f'"{figure.name}"' for figure in figures)
    run = f"- `{command}` ({now}, {machine.describe()}): {names}"
    # A later run of the same command replaces the line of the earlier one.
    lines = [line for line in lines if not line.startswith(f"- `{command}` (")]
    date = next((i for i, line in enumerate(lines) if line.startswith("- Date:")), None)
    if date is None:
        raise DocFormatError("no '- Date:' line in the page's header")
    lines.insert(date + 1, run)
    return lines
