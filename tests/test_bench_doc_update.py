"""``python -m bench --only``: some figures measured again replace their rows and notes in
``docs/performance.md``; the others stay as they were measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.doc_update import DocFormatError, update_doc
from bench.figure import Figure
from bench.report import Machine, performance_doc, this_machine

MACHINE = Machine(2, "test CPU", "3.11.7", "Linux")


def figure(name: str, ratio: str, note: str) -> Figure:
    return Figure(name, "base: 1 ns/op", "cand: 1 ns/op", ratio, "n=3", "≤ 1.00", True, note)


def test_a_figure_measured_again_replaces_its_row_and_note_and_a_new_one_is_added() -> None:
    """Rows and notes of re-measured figures change in place, new ones follow, all renumbered."""
    text = performance_doc(
        [figure("A", "0.500", "first a"), figure("B", "0.600", "first b")],
        "python -m bench",
        MACHINE,
        False,
    )
    command = "python -m bench --only b --only c"
    updated = update_doc(
        text, [figure("B", "0.700", "second b"), figure("C", "0.800", "new c")], command, MACHINE
    )
    assert "| A | base: 1 ns/op | cand: 1 ns/op | 0.500 |" in updated
    assert "| B | base: 1 ns/op | cand: 1 ns/op | 0.700 |" in updated
    assert "| C | base: 1 ns/op | cand: 1 ns/op | 0.800 |" in updated
    assert "0.600" not in updated
    assert "1. **A**: first a.\n2. **B**: second b.\n3. **C**: new c.\n\nRun `python" in updated
    assert f"- `{command}` (" in updated and '"B", "C"' in updated
    again = update_doc(updated, [figure("C", "0.900", "newer c")], command, MACHINE)
    assert again.count(f"- `{command}` (") == 1  # the same command's line is replaced
    assert again.count("**C**") == 1 and "0.900" in again


def test_the_page_written_by_the_suite_is_updated_as_checked_in() -> None:
    """The checked-in report has the shape the update expects."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "performance.md").read_text()
    updated = update_doc(text, [figure("Z", "0.100", "z")], "python -m bench --only z", MACHINE)
    assert "**Z**: z." in updated


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# Performance\n\nno table here\n", "no results table"),
        ("| Figure | x |\n|---|\n| only | two |\n- Date: now\n", "a results row without 7 cells"),
        (
            "| Figure | Baseline | Candidate | Ratio | Spread | Budget | Verdict |\n|---|\n",
            "no '- Date:' line",
        ),
    ],
)
def test_a_page_of_another_shape_is_refused_with_the_reason(text: str, message: str) -> None:
    """A page the suite did not write is not patched blindly."""
    with pytest.raises(DocFormatError, match=message):
        update_doc(text, [figure("Z", "0.100", "z")], "python -m bench --only z", MACHINE)


def test_the_committed_page_says_what_a_full_run_writes() -> None:
    """The prose of ``docs/performance.md`` (what was slow, what changed, the method) is the
    prose ``report.performance_doc`` writes: a full run keeps it, and an edit made to the
    page alone fails here instead of being lost at the next run."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "performance.md").read_text()
    rendered = performance_doc([], "python -m bench", this_machine(), quick=False)
    committed = page[page.index("## Profiles") : page.index("\n1. **")]
    written = rendered[rendered.index("## Profiles") : rendered.index("\nRun `python -m bench")]
    assert committed.strip() == written.strip()
