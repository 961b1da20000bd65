"""The docs of ``verify-shutdown`` and ``lint`` match the commands: every flag is
documented, every lint rule has its page, and the rule table lists each code and name."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from drainwatch.agent.cli import build_parser
from drainwatch.agent.lint.rules import RULES
from drainwatch.agent.verify_checks import judge
from drainwatch.agent.verify_options import HttpLoad, VerifyOptions
from drainwatch.agent.verify_run import Observation

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _flags(command: str) -> set[str]:
    parser = build_parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    sub = subparsers.choices[command]
    return {
        option
        for action in sub._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


@pytest.mark.parametrize(
    ("command", "page"),
    [("verify-shutdown", DOCS / "verify-shutdown.md"), ("lint", DOCS / "lint" / "README.md")],
)
def test_every_flag_is_documented(command: str, page: Path) -> None:
    """Each flag of the command appears, in backquotes, on its page."""
    text = page.read_text()
    missing = [flag for flag in sorted(_flags(command)) if f"`{flag}" not in text]
    assert missing == [], missing


@pytest.mark.parametrize("code", list(RULES))
def test_every_rule_has_its_page(code: str) -> None:
    """docs/lint/<CODE>.md starts with '# <CODE> <name>' and the index lists it."""
    rule = RULES[code]
    page = DOCS / "lint" / f"{code}.md"
    assert page.read_text().splitlines()[0] == f"# {code} {rule.name}"
    index = (DOCS / "lint" / "README.md").read_text()
    assert f"| [{code}]({code}.md) | {rule.name} |" in index


def test_every_check_is_documented() -> None:
    """Each verify-shutdown check name is a row of the checks table."""
    options = VerifyOptions(
        command=("x",), http=HttpLoad("http://127.0.0.1:1/", "127.0.0.1", 1, "GET", None, ())
    )
    names = {check.name for check in judge(Observation(options, 1, 0.0, 0.0))}
    text = (DOCS / "verify-shutdown.md").read_text()
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.MULTILINE))
    assert names <= rows, names - rows
