"""``drainwatch lint``: static checks for shutdown and channel mistakes.

Python rules (``DW1xx``) read the syntax tree of each ``*.py`` file; manifest rules
(``DW2xx``) read Kubernetes YAML. Every rule has a page in ``docs/lint/``. Use
``lint_paths`` from code, or ``drainwatch lint PATH...``.
"""

from __future__ import annotations

from .rules import RULES, Finding, Rule
from .runner import LintResult, LintSettings, lint_paths

__all__ = ["RULES", "Finding", "LintResult", "LintSettings", "Rule", "lint_paths"]
