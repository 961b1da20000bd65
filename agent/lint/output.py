"""``drainwatch lint`` output as text (``path:line:col: CODE message``) and as JSON."""

from __future__ import annotations

from typing import Any, Final

from drainwatch import __version__

from .rules import RULES, Finding
from .runner import LintResult

JSON_FORMAT_VERSION: Final = 1


def text_line(finding: Finding) -> str:
    return f"{finding.path}:{finding.line}:{finding.column}: {finding.code} {finding.message}"


def render_text(result: LintResult) -> str:
    """One line per problem and finding, then a summary line."""
    lines = [text_line(finding) for finding in [*result.problems, *result.findings]]
    codes = sorted({finding.code for finding in result.findings})
    summary = f"{len(result.findings)} finding(s) in {result.files} file(s)"
    if codes:
        summary += " (" + ", ".join(codes) + "; see docs/lint/<CODE>.md)"
    if result.problems:
        summary += f"; {len(result.problems)} file(s) could not be linted"
    lines.append(summary)
    return "\n".join(lines) + "\n"


def _json_finding(finding: Finding) -> dict[str, Any]:
    rule = RULES[finding.code]
    return {
        "path": finding.path,
        "line": finding.line,
        "column": finding.column,
        "code": finding.code,
        "name": rule.name,
        "message": finding.message,
        "docs": rule.docs,
    }


def render_json(result: LintResult) -> dict[str, Any]:
    return {
        "format_version": JSON_FORMAT_VERSION,
        "tool": {"name": "drainwatch lint", "version": __version__},
        "files": result.files,
        "findings": [_json_finding(finding) for finding in result.findings],
        "problems": [_json_finding(finding) for finding in result.problems],
        "exit_code": result.exit_code,
    }
