"""``drainwatch lint --format sarif``: SARIF 2.1.0, as code scanning services read it.

One run with the tool's rules as ``reportingDescriptor``s (id, name, short and full
description, help text naming the rule's page), one ``result`` per finding with a
physical location relative to ``%SRCROOT%`` (the working directory), and files that could
not be linted as error-level ``toolExecutionNotifications`` of the invocation, whose
``executionSuccessful`` is then false. Each result carries a ``partialFingerprints`` entry
(code, path and the line's text, hashed) so code scanning can follow a finding across
commits that move it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from drainwatch import __version__

from .rules import RULES, Finding, Rule
from .runner import LintResult

SARIF_SCHEMA: Final = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION: Final = "2.1.0"
INFORMATION_URI: Final = "https://pypi.org/project/drainwatch/"
SOURCE_ROOT: Final = "%SRCROOT%"


def _descriptor(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": f"{rule.summary}. See {rule.docs}."},
        "help": {"text": f"{rule.summary}: why it matters and how to fix it in {rule.docs}"},
        "defaultConfiguration": {"level": "error" if rule.kind == "tool" else "warning"},
        "properties": {"tags": [rule.kind, "graceful-shutdown"]},
    }


def _location(finding: Finding) -> dict[str, Any]:
    if finding.path.startswith("/"):  # outside the working directory: an absolute URI
        artifact = {"uri": Path(finding.path).as_uri()}
    else:
        artifact = {"uri": quote(finding.path, safe="/"), "uriBaseId": SOURCE_ROOT}
    return {
        "physicalLocation": {
            "artifactLocation": artifact,
            "region": {"startLine": finding.line, "startColumn": finding.column},
        }
    }


def _fingerprint(finding: Finding, line_text: str) -> str:
    digest = hashlib.sha256(
        f"{finding.code}\0{finding.path}\0{line_text.strip()}".encode()
    ).hexdigest()
    return digest[:32]


def _line_text(finding: Finding, cache: dict[str, list[str]]) -> str:
    if finding.path not in cache:
        try:
            with open(finding.path, encoding="utf-8", errors="replace") as handle:
                cache[finding.path] = handle.read(4_000_000).splitlines()
        except OSError:
            cache[finding.path] = []
    lines = cache[finding.path]
    return lines[finding.line - 1] if 0 < finding.line <= len(lines) else ""


def render_sarif(result: LintResult) -> dict[str, Any]:
    codes = list(RULES)
    cache: dict[str, list[str]] = {}
    results = [
        {
            "ruleId": finding.code,
            "ruleIndex": codes.index(finding.code),
            "level": "warning",
            "message": {"text": finding.message},
            "locations": [_location(finding)],
            "partialFingerprints": {
                "drainwatchLineHash/v1": _fingerprint(finding, _line_text(finding, cache))
            },
        }
        for finding in result.findings
    ]
    notifications = [
        {
            "level": "error",
            "message": {"text": f"{problem.path}: {problem.message}"},
            "locations": [_location(problem)],
            "associatedRule": {"id": problem.code, "index": codes.index(problem.code)},
        }
        for problem in result.problems
    ]
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "drainwatch-lint",
                        "version": __version__,
                        "informationUri": INFORMATION_URI,
                        "rules": [_descriptor(RULES[code]) for code in codes],
                    }
                },
                "invocations": [
                    {
                        "executionSuccessful": not result.problems,
                        "toolExecutionNotifications": notifications,
                    }
                ],
                "originalUriBaseIds": {SOURCE_ROOT: {"uri": Path.cwd().as_uri() + "/"}},
                "results": results,
            }
        ],
    }
