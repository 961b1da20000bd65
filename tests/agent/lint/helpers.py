"""Lint a snippet as a real file, the way ``drainwatch lint`` reads it."""

from __future__ import annotations

import textwrap
from pathlib import Path

from drainwatch.agent.lint import Finding, LintResult, LintSettings, lint_paths


def lint_file(tmp_path: Path, source: str, name: str = "service.py") -> LintResult:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return lint_paths([str(path)], LintSettings())


def findings(tmp_path: Path, source: str, name: str = "service.py") -> list[Finding]:
    result = lint_file(tmp_path, source, name)
    assert not result.problems, result.problems
    return result.findings


def codes(tmp_path: Path, source: str, name: str = "service.py") -> list[str]:
    return [finding.code for finding in findings(tmp_path, source, name)]


def lines(tmp_path: Path, source: str, code: str) -> list[int]:
    return [finding.line for finding in findings(tmp_path, source) if finding.code == code]
