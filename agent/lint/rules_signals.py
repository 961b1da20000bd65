"""DW102 exit-in-signal-handler: ``sys.exit`` / ``os._exit`` in a signal handler before any drain.

Handlers are what ``signal.signal(SIG, handler)`` and ``loop.add_signal_handler(SIG,
handler, ...)`` register: a lambda, a function or method of the module (by name), or a
``functools.partial`` of one. In the handler's own code, an exit (``sys.exit``,
``os._exit``, ``exit``, ``quit``, ``raise SystemExit``) is found when no call that drains
(``stop``, ``shutdown``, ``drain``, ``close``, ``cleanup``, ``join``, ``wait``,
``wait_for_termination``, ``run_until_complete``) comes before it in the handler.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Final

from .ast_facts import ModuleFacts, call_name, functions, scope_nodes
from .rules import EXIT_IN_SIGNAL_HANDLER, Finding, finding_at
from .source import SourceFile

_EXITS: Final = frozenset({"sys.exit", "os._exit", "exit", "quit", "builtins.exit"})
_DRAINS: Final = frozenset(
    {
        "stop",
        "shutdown",
        "drain",
        "close",
        "cleanup",
        "join",
        "wait",
        "wait_for_termination",
        "run_until_complete",
        "graceful_stop",
    }
)
_PARTIALS: Final = frozenset({"functools.partial", "partial"})

Handler = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda


def _registered(facts: ModuleFacts) -> Iterator[tuple[ast.Call, ast.AST]]:
    """(registration call, handler expression) for every signal handler installed."""
    for node in ast.walk(facts.tree):
        if not isinstance(node, ast.Call) or len(node.args) < 2:
            continue
        called = facts.qualified(node.func) or ""
        if called == "signal.signal" or call_name(node) == "add_signal_handler":
            yield node, node.args[1]


def _resolve(
    expression: ast.AST, facts: ModuleFacts, by_name: dict[str, list[Handler]]
) -> list[Handler]:
    if isinstance(expression, ast.Lambda):
        return [expression]
    if isinstance(expression, ast.Call) and (facts.qualified(expression.func) or "") in _PARTIALS:
        return _resolve(expression.args[0], facts, by_name) if expression.args else []
    if isinstance(expression, ast.Name):
        return by_name.get(expression.id, [])
    if isinstance(expression, ast.Attribute):
        return by_name.get(expression.attr, [])
    return []


def _exit_name(node: ast.AST, facts: ModuleFacts) -> str | None:
    if isinstance(node, ast.Call):
        called = facts.qualified(node.func)
        return called if called in _EXITS else None
    if isinstance(node, ast.Raise) and node.exc is not None:
        raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        if isinstance(raised, ast.Name) and raised.id == "SystemExit":
            return "raise SystemExit"
    return None


def _code_of(handler: Handler) -> list[ast.AST]:
    if isinstance(handler, ast.Lambda):
        return [handler.body, *scope_nodes(handler.body)]
    return list(scope_nodes(handler))


def _handler_name(handler: Handler) -> str:
    return "a lambda" if isinstance(handler, ast.Lambda) else f"`{handler.name}`"


def check(source: SourceFile, facts: ModuleFacts) -> Iterator[Finding]:
    by_name: dict[str, list[Handler]] = {}
    for function in functions(facts.tree):
        by_name.setdefault(function.name, []).append(function)
    seen: set[ast.AST] = set()
    for registration, expression in _registered(facts):
        signal_text = ast.unparse(registration.args[0])
        for handler in _resolve(expression, facts, by_name):
            code = sorted(
                (node for node in _code_of(handler) if hasattr(node, "lineno")),
                key=lambda node: (getattr(node, "lineno", 0), getattr(node, "col_offset", 0)),
            )
            drained = False
            for node in code:
                if isinstance(node, ast.Call) and call_name(node) in _DRAINS:
                    drained = True
                exit_name = _exit_name(node, facts)
                if exit_name is None or drained or node in seen:
                    continue
                seen.add(node)
                yield finding_at(
                    source.path,
                    node.lineno,
                    source.column(node),
                    EXIT_IN_SIGNAL_HANDLER,
                    f"`{exit_name}` in {_handler_name(handler)}, the handler of {signal_text}, "
                    "runs before anything drained: requests in flight are cut and the health "
                    "endpoint vanishes at once; set an Event in the handler and stop the "
                    "servers (waiting for them) in the main flow, then return",
                )
