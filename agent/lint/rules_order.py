"""DW105 health-stopped-before-business: the post-mortem's outage, in one shutdown path.

On each path through a function, the servers it stops are listed in order: calls of
``stop``, ``shutdown``, ``cleanup``, ``close`` and ``server_close``, and uvicorn's
``server.should_exit = True``. A server whose name says health (``health``, ``liveness``,
``livez``, ``readiness``, ``probe``) is a health server; any other server (built by a known
server constructor, or named like one: ``server``, ``runner``, ``site``, ``grpc``, ``http``,
``api``, ``business``...) is a business server. A health server stopped while a business
server of the same path is stopped only later is found, at the health server's stop.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Final

from .ast_facts import ModuleFacts, call_name, dotted, functions, is_health, receiver, scope_nodes
from .paths import Event, Extract, event_paths
from .rules import HEALTH_BEFORE_BUSINESS, Finding, finding_at
from .source import SourceFile

STOPS: Final = frozenset({"stop", "shutdown", "cleanup", "close", "server_close", "graceful_stop"})
_EXIT_FLAGS: Final = frozenset({"should_exit", "force_exit"})


def _role(name: str, method: str, facts: ModuleFacts) -> str | None:
    server = facts.is_server(name)
    if method == "close" and not server:
        return None  # close() of a health *channel* or file is not a server stop
    if is_health(name):
        return "health"
    return "business" if server else None


def _stop_events(facts: ModuleFacts) -> Extract:
    def extract(node: ast.AST) -> list[Event]:
        events: list[Event] = []
        for part in [node, *scope_nodes(node)]:
            name: str | None = None
            shown = method = ""
            if isinstance(part, ast.Call) and call_name(part) in STOPS:
                name = receiver(part)
                method = call_name(part) or ""
                shown = f"{name}.{method}()"
            elif isinstance(part, ast.Assign) and isinstance(part.value, ast.Constant):
                for target in part.targets:
                    if isinstance(target, ast.Attribute) and target.attr in _EXIT_FLAGS:
                        name = dotted(target.value)
                        method = target.attr
                        shown = f"{name}.{target.attr} = True"
            if name is None:
                continue
            role = _role(name, method, facts)
            if role is not None:
                events.append(Event(role, name, part, shown))
        return events

    return extract


def _owner(name: str) -> str:
    """``health_server`` for ``health_server.runner``: one server, whatever part is stopped."""
    return name.partition(".")[0] if not name.startswith("self.") else ".".join(name.split(".")[:2])


def check(source: SourceFile, facts: ModuleFacts) -> Iterator[Finding]:
    extract = _stop_events(facts)
    reported: set[int] = set()
    for function in functions(source.tree):
        for path in event_paths(function.body, extract):
            stopped: set[str] = set()
            for index, event in enumerate(path):
                owner = _owner(event.subject)
                if event.kind == "business" or owner in stopped:
                    stopped.add(owner)
                    continue
                stopped.add(owner)
                later = next(
                    (
                        other
                        for other in path[index + 1 :]
                        if other.kind == "business" and _owner(other.subject) not in stopped
                    ),
                    None,
                )
                if later is None or id(event.node) in reported:
                    continue
                reported.add(id(event.node))
                line = getattr(later.node, "lineno", 0)
                yield finding_at(
                    source.path,
                    getattr(event.node, "lineno", 1),
                    source.column(event.node),
                    HEALTH_BEFORE_BUSINESS,
                    f"`{event.detail}` stops the health server before `{later.detail}` stops "
                    f"the business server (line {line}): liveness probes fail while requests "
                    "are still served, and the kubelet kills the pod mid-drain; turn readiness "
                    "off, stop the business server and wait for it, and stop health last",
                )
