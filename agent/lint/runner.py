"""``lint_paths``: every file read, every rule run, suppressions applied, nothing raised.

A file that cannot be read or parsed becomes one DW001 problem and the others are still
linted. A rule that fails on a file (a bug, never bad input) also becomes a DW001 problem
for that file, naming the rule, instead of stopping the run. Exit codes follow from the
result: 2 when any file could not be linted, else 1 when anything was found, else 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from . import manifest_rules, rules_blocking, rules_channels, rules_order, rules_signals, rules_stop
from .ast_facts import ModuleFacts, module_facts
from .manifest_yaml import ManifestError, compose_documents
from .rules import UNREADABLE, Finding, finding_at
from .source import DEFAULT_MAX_BYTES, SourceError, SourceFile, read_python, read_text
from .suppressions import Suppressions, python_suppressions, yaml_suppressions
from .walk import MANIFEST, Target, collect

EXIT_CLEAN: Final = 0
EXIT_FINDINGS: Final = 1
EXIT_ERROR: Final = 2

PythonCheck = Callable[[SourceFile, ModuleFacts], Iterable[Finding]]
PYTHON_CHECKS: Final[tuple[tuple[str, PythonCheck], ...]] = (
    ("DW101", rules_stop.check),
    ("DW102", rules_signals.check),
    ("DW103/DW106/DW107", rules_channels.check),
    ("DW104", rules_blocking.check),
    ("DW105", rules_order.check),
)


@dataclass(frozen=True)
class LintSettings:
    select: frozenset[str] | None = None  # None: every rule
    ignore: frozenset[str] = frozenset()
    max_bytes: int = DEFAULT_MAX_BYTES

    def wants(self, code: str) -> bool:
        if code == UNREADABLE.code:
            return True  # a file that was not linted is never hidden
        if code in self.ignore:
            return False
        return self.select is None or code in self.select


@dataclass
class LintResult:
    findings: list[Finding] = field(default_factory=list)
    problems: list[Finding] = field(default_factory=list)  # DW001: files not linted
    files: int = 0

    @property
    def exit_code(self) -> int:
        if self.problems:
            return EXIT_ERROR
        return EXIT_FINDINGS if self.findings else EXIT_CLEAN


def _python(target: Target, settings: LintSettings) -> tuple[list[Finding], Suppressions]:
    source = read_python(target.path, target.shown, settings.max_bytes)
    facts = module_facts(source.tree)
    found: list[Finding] = []
    for codes, check in PYTHON_CHECKS:
        try:
            found.extend(check(source, facts))
        except Exception as error:  # a bug in one rule must not stop the whole run
            raise SourceError(f"rule {codes} failed on this file: {error!r}") from None
    return found, python_suppressions(target.shown, source.text)


def _manifest(target: Target, settings: LintSettings) -> tuple[list[Finding], Suppressions]:
    content = read_text(target.path, settings.max_bytes)
    if "{{" in content and "}}" in content:
        return [], Suppressions()  # a Helm or Go template, not YAML until rendered
    documents = compose_documents(content)
    return list(manifest_rules.check(target.shown, documents)), yaml_suppressions(
        target.shown, content
    )


def _lint_one(target: Target, settings: LintSettings) -> Iterator[Finding]:
    try:
        if target.kind == MANIFEST:
            found, suppressions = _manifest(target, settings)
        else:
            found, suppressions = _python(target, settings)
    except (SourceError, ManifestError) as problem:
        yield finding_at(target.shown, problem.line, problem.column, UNREADABLE, str(problem))
        return
    yield from suppressions.filter(found)
    yield from suppressions.problems


def lint_paths(paths: Sequence[str], settings: LintSettings | None = None) -> LintResult:
    """Lint every Python file and manifest under ``paths``; never raises for their content."""
    settings = settings or LintSettings()
    targets, walk_problems = collect(paths)
    result = LintResult()
    for problem in walk_problems:
        result.problems.append(finding_at(problem.shown, 1, 1, UNREADABLE, problem.message))
    for target in targets:
        result.files += 1
        for finding in _lint_one(target, settings):
            if finding.code == UNREADABLE.code:
                result.problems.append(finding)
            elif settings.wants(finding.code):
                result.findings.append(finding)
    result.findings = sorted(set(result.findings), key=lambda finding: finding.sort_key)
    result.problems.sort(key=lambda finding: finding.sort_key)
    return result
