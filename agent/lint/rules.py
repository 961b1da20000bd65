"""The lint rules drainwatch knows, and what one finding is.

Every rule has a code (``DW1xx`` for Python sources, ``DW2xx`` for Kubernetes manifests), a
short name, one line saying what it catches, and a page in ``docs/lint/<CODE>.md`` that says
why it matters and how to fix it. ``DW001`` is not a rule: it marks a file that could not be
linted at all (unparsable, binary, too big), which makes the run exit with code 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DOCS_BASE: Final = "docs/lint"


@dataclass(frozen=True, slots=True)
class Rule:
    code: str
    name: str
    summary: str
    kind: str  # python | manifest | tool

    @property
    def docs(self) -> str:
        return f"{DOCS_BASE}/{self.code}.md"


UNREADABLE: Final = Rule(
    "DW001", "file-not-linted", "a file could not be read or parsed, so it was not linted", "tool"
)
BAD_SUPPRESSION: Final = Rule(
    "DW002",
    "unknown-suppression",
    "a `# drainwatch: ignore[...]` comment names a code that does not exist",
    "tool",
)
STOP_NOT_AWAITED: Final = Rule(
    "DW101",
    "stop-not-awaited",
    "a server stop is launched and never awaited or waited for",
    "python",
)
EXIT_IN_SIGNAL_HANDLER: Final = Rule(
    "DW102",
    "exit-in-signal-handler",
    "sys.exit or os._exit inside a signal handler, before any drain",
    "python",
)
CLOSE_BY_CONSUMER: Final = Rule(
    "DW103",
    "close-by-consumer",
    "a consumer closes a channel or queue it only reads from",
    "python",
)
BLOCKING_IN_ASYNC: Final = Rule(
    "DW104",
    "blocking-call-in-async",
    "a blocking call (sleep, sync HTTP, file or socket I/O) inside `async def`",
    "python",
)
HEALTH_BEFORE_BUSINESS: Final = Rule(
    "DW105",
    "health-stopped-before-business",
    "a health server is stopped before a business server in the same shutdown path",
    "python",
)
PUT_AFTER_CLOSE: Final = Rule(
    "DW106",
    "put-after-close",
    "a put on a channel or queue after it was closed in the same function",
    "python",
)
DOUBLE_CLOSE: Final = Rule(
    "DW107",
    "double-close",
    "a channel or queue closed twice in the same function",
    "python",
)
GRACE_TOO_SHORT: Final = Rule(
    "DW201",
    "grace-period-too-short",
    "terminationGracePeriodSeconds is shorter than preStop plus the drain timeout",
    "manifest",
)
LIVENESS_ON_BUSINESS_PORT: Final = Rule(
    "DW202",
    "liveness-on-business-port",
    "the liveness probe checks the business port",
    "manifest",
)
LIVENESS_WITHOUT_GRACE: Final = Rule(
    "DW203",
    "liveness-without-probe-grace",
    "the liveness probe has no probe-level terminationGracePeriodSeconds",
    "manifest",
)
EXEC_PRESTOP_DISTROLESS: Final = Rule(
    "DW204",
    "exec-prestop-on-distroless",
    "an exec preStop hook runs a shell or sleep on a distroless image",
    "manifest",
)
SIDECAR_WITHOUT_PTRACE: Final = Rule(
    "DW205",
    "sidecar-cannot-sample",
    "the drainwatch sidecar samples with py-spy without SYS_PTRACE or a shared PID namespace",
    "manifest",
)

RULES: Final[dict[str, Rule]] = {
    rule.code: rule
    for rule in (
        UNREADABLE,
        BAD_SUPPRESSION,
        STOP_NOT_AWAITED,
        EXIT_IN_SIGNAL_HANDLER,
        CLOSE_BY_CONSUMER,
        BLOCKING_IN_ASYNC,
        HEALTH_BEFORE_BUSINESS,
        PUT_AFTER_CLOSE,
        DOUBLE_CLOSE,
        GRACE_TOO_SHORT,
        LIVENESS_ON_BUSINESS_PORT,
        LIVENESS_WITHOUT_GRACE,
        EXEC_PRESTOP_DISTROLESS,
        SIDECAR_WITHOUT_PTRACE,
    )
}
CHECKS: Final = tuple(code for code, rule in RULES.items() if rule.kind != "tool")


@dataclass(frozen=True, slots=True)
class Finding:
    """One finding at ``path:line:column`` (1-based; column counts characters)."""

    path: str
    line: int
    column: int
    code: str
    message: str

    @property
    def rule(self) -> Rule:
        return RULES[self.code]

    @property
    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.path, self.line, self.column, self.code)


def finding_at(path: str, line: int, column: int, rule: Rule, message: str) -> Finding:
    return Finding(path, max(1, line), max(1, column), rule.code, message)
