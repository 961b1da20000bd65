"""``drainwatch lint``: static checks for shutdown and channel mistakes.

Python rules (``DW1xx``) read the syntax tree of each ``*.py`` file; manifest rules
(``DW2xx``) read Kubernetes YAML. Every rule has a page in ``docs/lint/``. Use
``lint_paths`` from code, or ``drainwatch lint PATH...``.

Nothing is imported until used: the ``drainwatch`` command registers ``lint`` in images
that carry only the SDK, without PyYAML.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .rules import RULES, Finding, Rule
    from .runner import LintResult, LintSettings, lint_paths

__all__ = ["RULES", "Finding", "LintResult", "LintSettings", "Rule", "lint_paths"]
_FROM_RULES = frozenset({"RULES", "Finding", "Rule"})


def __getattr__(name: str) -> Any:
    if name in _FROM_RULES:
        from . import rules

        return getattr(rules, name)
    if name in __all__:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
