"""``# drainwatch: ignore[CODE]`` comments: a finding is dropped when its own line carries a
suppression naming its code (several codes: ``ignore[DW101, DW104]``).

In Python sources only real comments count (found with ``tokenize``, so the text inside a
string never suppresses anything); in YAML, a ``#`` comment on the line. A suppression
naming a code that does not exist is itself reported (DW002), so a typo never passes
unnoticed.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from .rules import BAD_SUPPRESSION, RULES, Finding, finding_at

_PATTERN: Final = re.compile(r"#\s*drainwatch:\s*ignore\[([^\]]*)\]", re.IGNORECASE)
_CODE: Final = re.compile(r"DW\d{3}")


@dataclass
class Suppressions:
    by_line: dict[int, set[str]] = field(default_factory=dict)
    problems: list[Finding] = field(default_factory=list)

    def allows(self, finding: Finding) -> bool:
        return finding.code not in self.by_line.get(finding.line, set())

    def filter(self, findings: Iterable[Finding]) -> list[Finding]:
        return [finding for finding in findings if self.allows(finding)]


def _note(found: Suppressions, path: str, line: int, column: int, comment: str) -> None:
    for match in _PATTERN.finditer(comment):
        codes = [code.strip().upper() for code in match.group(1).split(",") if code.strip()]
        for code in codes:
            if _CODE.fullmatch(code) and code in RULES:
                found.by_line.setdefault(line, set()).add(code)
            else:
                shown = code if len(code) <= 20 else code[:17] + "..."
                found.problems.append(
                    finding_at(
                        path,
                        line,
                        column + match.start(),
                        BAD_SUPPRESSION,
                        f"`# drainwatch: ignore[{shown}]` names no drainwatch rule; the codes "
                        "are listed in docs/lint/README.md",
                    )
                )


def python_suppressions(path: str, text: str) -> Suppressions:
    found = Suppressions()
    if "drainwatch" not in text:
        return found
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                _note(found, path, token.start[0], token.start[1] + 1, token.string)
    except (tokenize.TokenError, SyntaxError):
        pass  # the file parsed, so this cannot happen; a partial list is still right
    return found


def yaml_suppressions(path: str, text: str) -> Suppressions:
    found = Suppressions()
    if "drainwatch" not in text:
        return found
    for number, line in enumerate(text.splitlines(), start=1):
        hash_at = line.find("#")
        if hash_at >= 0:
            _note(found, path, number, hash_at + 1, line[hash_at:])
    return found
