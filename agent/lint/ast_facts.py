"""What the Python rules need to know about a module's syntax tree, computed without recursion.

Every walk here is iterative (``ast.walk`` or an explicit stack), so a parsable file with
very deep expressions cannot exhaust the interpreter's stack. Names are resolved through the
module's imports the simple way a reader would: ``from time import sleep`` makes ``sleep``
mean ``time.sleep`` anywhere in the module.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

Scope = ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
_NESTED: Final = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
# What constructs a server (a listener to be stopped), by qualified name.
SERVER_FACTORIES: Final = frozenset(
    {
        "grpc.server",
        "grpc.aio.server",
        "aiohttp.web.AppRunner",
        "aiohttp.web.ServerRunner",
        "aiohttp.web.TCPSite",
        "aiohttp.web.UnixSite",
        "aiohttp.web.SockSite",
        "uvicorn.Server",
        "hypercorn.asyncio.serve",
        "http.server.HTTPServer",
        "http.server.ThreadingHTTPServer",
        "socketserver.TCPServer",
        "socketserver.ThreadingTCPServer",
        "wsgiref.simple_server.make_server",
        "asyncio.start_server",
        "asyncio.start_unix_server",
    }
)
# What constructs a channel or queue, by the last part of its qualified name.
CHANNEL_TYPES: Final = frozenset(
    {
        "Channel",
        "ThreadChannel",
        "Queue",
        "JoinableQueue",
        "LifoQueue",
        "PriorityQueue",
        "SimpleQueue",
    }
)
_SERVER_NAME = re.compile(r"server|runner|site|srv|listener|business|grpc|http|api", re.I)
_HEALTH_NAME = re.compile(r"health|liveness|livez|readiness|probe", re.I)


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def scope_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``scope``'s own code: nested functions, lambdas and classes are yielded
    themselves but not entered (their code runs elsewhere, at another time)."""
    stack = list(reversed(list(ast.iter_child_nodes(scope))))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, _NESTED):
            stack.extend(reversed(list(ast.iter_child_nodes(node))))


def functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def call_name(call: ast.Call) -> str | None:
    """The method or function name a call ends with: ``stop`` for ``a.b.stop(...)``."""
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def receiver(call: ast.Call) -> str | None:
    """``a.b`` for ``a.b.stop(...)``; None when the receiver is not a plain dotted name."""
    func = call.func
    return dotted(func.value) if isinstance(func, ast.Attribute) else None


def is_health(name: str) -> bool:
    return _HEALTH_NAME.search(name) is not None


def looks_like_server(name: str) -> bool:
    return _SERVER_NAME.search(name.rpartition(".")[2]) is not None


@dataclass
class ModuleFacts:
    """Imports, server-typed names and channel-typed names of one module."""

    tree: ast.Module
    imports: dict[str, str] = field(default_factory=dict)  # local name -> qualified name
    server_makers: set[str] = field(default_factory=set)  # local functions returning a server
    servers: dict[str, str] = field(default_factory=dict)  # dotted target -> factory
    channels: set[str] = field(default_factory=set)  # dotted targets built as channels

    def qualified(self, node: ast.AST) -> str | None:
        """The qualified name ``node`` refers to, through the imports (``t.sleep`` ->
        ``time.sleep`` after ``import time as t``); local names stay as they are."""
        name = dotted(node)
        if name is None:
            return None
        head, dot, rest = name.partition(".")
        base = self.imports.get(head)
        if base is None:
            return name
        return f"{base}{dot}{rest}"

    def is_server(self, name: str) -> bool:
        return name in self.servers or looks_like_server(name)

    def is_async_server(self, name: str) -> bool:
        factory = self.servers.get(name, "")
        return factory.startswith(("grpc.aio.", "aiohttp."))


def _annotation_names(node: ast.AST | None) -> Iterator[str]:
    """Names in an annotation: ``Queue`` in ``asyncio.Queue[int] | None``."""
    if node is None:
        return
    for part in ast.walk(node):
        name = dotted(part) if isinstance(part, ast.Name | ast.Attribute) else None
        if name is not None:
            yield name.rpartition(".")[2]
        elif isinstance(part, ast.Constant) and isinstance(part.value, str):
            yield from re.findall(r"[A-Za-z_][A-Za-z0-9_]*", part.value)


def annotated_channel(node: ast.AST | None) -> bool:
    return any(name in CHANNEL_TYPES for name in _annotation_names(node))


def _collect_imports(facts: ModuleFacts) -> None:
    for node in ast.walk(facts.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.partition(".")[0]
                facts.imports[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                facts.imports[alias.asname or alias.name] = f"{node.module}.{alias.name}"


def _collect_server_makers(facts: ModuleFacts) -> None:
    for function in functions(facts.tree):
        returned = function.returns
        if returned is not None and any(
            facts.qualified(part) in SERVER_FACTORIES
            for part in ast.walk(returned)
            if isinstance(part, ast.Name | ast.Attribute)
        ):
            facts.server_makers.add(function.name)


def _assignment(node: ast.AST) -> tuple[ast.expr | None, list[ast.expr], ast.expr | None]:
    """(value, targets, annotation) of an assignment; (None, [], None) for anything else."""
    if isinstance(node, ast.Assign):
        return node.value, list(node.targets), None
    if isinstance(node, ast.AnnAssign) and node.value is not None:
        return node.value, [node.target], node.annotation
    return None, [], None


def module_facts(tree: ast.Module) -> ModuleFacts:
    """Collect the imports first, then what the module assigns from server and channel
    constructors (``server = grpc.server(...)``, ``self.jobs = asyncio.Queue()``)."""
    facts = ModuleFacts(tree)
    _collect_imports(facts)
    _collect_server_makers(facts)
    for node in ast.walk(tree):
        value, targets, annotation = _assignment(node)
        names = [name for name in map(dotted, targets) if name]
        if annotated_channel(annotation):
            facts.channels.update(names)
        if isinstance(value, ast.Await):
            value = value.value
        if not isinstance(value, ast.Call):
            continue
        called = facts.qualified(value.func) or ""
        for name in names:
            if called in SERVER_FACTORIES or called in facts.server_makers:
                facts.servers[name] = called
            if called.rpartition(".")[2] in CHANNEL_TYPES:
                facts.channels.add(name)
    return facts


def parents(scope: ast.AST) -> dict[ast.AST, ast.AST]:
    """Each node of ``scope``'s own code mapped to its parent."""
    found: dict[ast.AST, ast.AST] = {}
    stack: list[ast.AST] = [scope]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            found[child] = node
            if not isinstance(child, _NESTED):
                stack.append(child)
    return found


def loads_of(scope: ast.AST, name: str) -> list[ast.Name]:
    """Every read of the plain name ``name`` in ``scope``, nested functions included (a
    closure that awaits a task counts as using it)."""
    return [
        node
        for node in ast.walk(scope)
        if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Load)
    ]
