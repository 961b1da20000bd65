"""``drainwatch lint PATH...``: the command line. Only argparse is imported at registration;
the linter loads when the command runs.

Exit codes: 0 nothing found, 1 findings, 2 usage error or a file that could not be linted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .runner import LintResult

EXIT_USAGE = 2
FORMATS = ("text", "json", "sarif")
_MAX_FILE_SIZE_RANGE = (1, 100_000_000)


class LintUsageError(Exception):
    """A flag that cannot be used; ``str()`` is the message."""


def add_lint_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "lint",
        help="find shutdown and channel mistakes in Python code and Kubernetes manifests",
        description="Lint Python sources (*.py) for shutdown and channel mistakes and "
        "Kubernetes manifests (*.yaml, *.yml) for drain settings. Output: "
        "path:line:col: CODE message. Suppress one finding with a "
        "`# drainwatch: ignore[CODE]` comment on its line. Exit code 0 = clean, "
        "1 = findings, 2 = usage error or a file that could not be linted. Rules: "
        "docs/lint/README.md.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or directories")
    parser.add_argument(
        "--format", default="text", metavar="FORMAT", help="text, json or sarif (SARIF 2.1.0)"
    )
    parser.add_argument("--output", metavar="FILE", help="write the report here, not stdout")
    parser.add_argument(
        "--select", metavar="CODES", help="only these comma-separated codes (e.g. DW101,DW2)"
    )
    parser.add_argument("--ignore", metavar="CODES", help="skip these comma-separated codes")
    parser.add_argument(
        "--max-file-size",
        metavar="BYTES",
        help="a bigger file is reported as not linted (default 2000000)",
    )


def _codes(text: str | None, flag: str) -> frozenset[str] | None:
    """Codes or code prefixes (``DW1`` = every DW1xx rule), checked against the rules."""
    from .rules import CHECKS

    if text is None:
        return None
    chosen: set[str] = set()
    for part in text.split(","):
        code = part.strip().upper()
        matched = {known for known in CHECKS if known.startswith(code)} if code else set()
        if not matched or len(code) < 3:
            shown = part.strip()[:40]
            raise LintUsageError(
                f'"{flag}" must be comma-separated rule codes or prefixes such as DW101 or '
                f'DW2: "{shown}"; the codes are listed in docs/lint/README.md'
            )
        chosen |= matched
    return frozenset(chosen)


def _max_bytes(text: str | None) -> int:
    from .source import DEFAULT_MAX_BYTES

    if text is None:
        return DEFAULT_MAX_BYTES
    low, high = _MAX_FILE_SIZE_RANGE
    stripped = text.strip()
    if not stripped.isascii() or not stripped.isdigit() or not low <= int(stripped) <= high:
        raise LintUsageError(
            f'"--max-file-size" must be a whole number of bytes from {low} to {high}: '
            f'"{stripped[:40]}"'
        )
    return int(stripped)


def _render(result: LintResult, chosen: str) -> str:
    from .output import render_json, render_text
    from .sarif import render_sarif

    if chosen == "text":
        return render_text(result)
    document = render_json(result) if chosen == "json" else render_sarif(result)
    return json.dumps(document, indent=1) + "\n"


def run_lint(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The ``lint`` command; returns its exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        from .runner import LintSettings, lint_paths

        chosen = args.format.strip().lower()
        if chosen not in FORMATS:
            raise LintUsageError(
                f'"--format" must be one of text, json, sarif: "{args.format[:40]}"'
            )
        select = _codes(args.select, "--select")
        ignore = _codes(args.ignore, "--ignore") or frozenset()
        settings = LintSettings(select, ignore, _max_bytes(args.max_file_size))
        if args.output is not None:
            directory = os.path.dirname(os.path.abspath(args.output))
            if os.path.isdir(args.output) or not os.path.isdir(directory):
                raise LintUsageError(
                    f'"--output" must be a file in an existing directory: "{args.output[:200]}"'
                )
    except LintUsageError as error:
        print(f"drainwatch lint: {error}", file=err)
        return EXIT_USAGE
    except ImportError as error:  # pragma: no cover - the agent extra is missing
        print(f"drainwatch lint: needs pip install 'drainwatch[agent]' ({error})", file=err)
        return EXIT_USAGE
    result = lint_paths(args.paths, settings)
    report = _render(result, chosen)
    if args.output is None:
        out.write(report)
    else:
        try:
            with open(args.output, "w", encoding="utf-8") as handle:
                handle.write(report)
        except OSError as error:
            print(f"drainwatch lint: cannot write {args.output}: {error.strerror}", file=err)
            return EXIT_USAGE
        print(
            f"drainwatch lint: {len(result.findings)} finding(s), {len(result.problems)} "
            f"file(s) not linted; report written to {args.output}",
            file=err,
        )
    return result.exit_code
