"""DW101 stop-not-awaited: the post-mortem's ``go grpcServer.GracefulStop()`` in Python.

Found:

- ``asyncio.create_task(server.stop(g))`` / ``asyncio.ensure_future(...)`` /
  ``loop.create_task(...)`` whose task is dropped, or kept in a name nothing reads again;
- ``threading.Thread(target=server.stop, ...).start()`` that nobody joins;
- a bare ``server.stop(grace)`` statement on a gRPC server (the one-argument ``stop`` of
  grpc's sync and aio servers) with no ``server.wait_for_termination()`` after it, and a
  dropped ``runner.cleanup()`` / ``server.stop()`` coroutine of an aiohttp or grpc.aio
  server inside ``async def``.

Not found: ``await server.stop(g)``, ``server.stop(g).wait()``, an Event or task kept and
waited for later, a task created on a ``TaskGroup`` (``async with`` awaits it), a stop
whose result is returned or passed on.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Final

from .ast_facts import ModuleFacts, call_name, dotted, functions, loads_of, parents, receiver
from .ast_facts import scope_nodes as own_nodes
from .rules import STOP_NOT_AWAITED, Finding, finding_at
from .source import SourceFile

STOP_METHODS: Final = frozenset({"stop", "shutdown", "cleanup", "graceful_stop"})
_SPAWNERS: Final = frozenset({"asyncio.create_task", "asyncio.ensure_future"})


def _stop_call(node: ast.AST | None) -> ast.Call | None:
    if isinstance(node, ast.Call) and call_name(node) in STOP_METHODS:
        return node
    return None


def _task_groups(scope: ast.AST) -> set[str]:
    """Names bound by ``async with asyncio.TaskGroup() as tg`` (their tasks are awaited)."""
    groups: set[str] = set()
    for node in own_nodes(scope):
        if isinstance(node, ast.AsyncWith):
            for item in node.items:
                name = dotted(item.optional_vars) if item.optional_vars else None
                if name is not None:
                    groups.add(name)
    return groups


def _dropped(call: ast.AST, scope: ast.AST, up: dict[ast.AST, ast.AST]) -> bool:
    """The value of ``call`` is thrown away, or bound to a plain name never read again."""
    parent = up.get(call)
    if isinstance(parent, ast.Expr):
        return True
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1:
        target = parent.targets[0]
        if isinstance(target, ast.Name):
            return not loads_of(scope, target.id)
    return False


def _describe(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."


def _spawned(
    source: SourceFile, facts: ModuleFacts, scope: ast.AST, up: dict[ast.AST, ast.AST]
) -> Iterator[Finding]:
    groups = _task_groups(scope)
    for node in own_nodes(scope):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        called = facts.qualified(node.func) or ""
        on_loop = call_name(node) == "create_task" and receiver(node) not in groups
        stop = _stop_call(node.args[0])
        if stop is None or not (called in _SPAWNERS or on_loop) or not _dropped(node, scope, up):
            continue
        yield finding_at(
            source.path,
            node.lineno,
            source.column(node),
            STOP_NOT_AWAITED,
            f"`{_describe(stop)}` runs in a task nobody awaits: the process can exit (or "
            "asyncio.run() cancel it) while the stop is still draining requests; "
            f"`await {_describe(stop)}` instead",
        )


def _threads(source: SourceFile, facts: ModuleFacts, scope: ast.AST) -> Iterator[Finding]:
    for node in own_nodes(scope):
        if not isinstance(node, ast.Call) or call_name(node) != "start":
            continue
        thread = node.func.value if isinstance(node.func, ast.Attribute) else None
        target = None
        if isinstance(thread, ast.Call) and (facts.qualified(thread.func) or "").endswith("Thread"):
            target = next((kw.value for kw in thread.keywords if kw.arg == "target"), None)
        if not (isinstance(target, ast.Attribute) and target.attr in STOP_METHODS):
            continue
        yield finding_at(
            source.path,
            node.lineno,
            source.column(node),
            STOP_NOT_AWAITED,
            f"`{_describe(target)}` runs in a thread nobody joins (Go's `go server."
            "GracefulStop()`): the main thread can return and the process exit mid-drain; "
            f"call `{_describe(target)}(...)` and wait for it in the shutdown path",
        )


def _waited_later(scope: ast.AST, name: str, after: int) -> bool:
    for node in own_nodes(scope):
        if (
            isinstance(node, ast.Call)
            and call_name(node) == "wait_for_termination"
            and receiver(node) == name
            and node.lineno >= after
        ):
            return True
    return False


def _bare_stops(
    source: SourceFile, facts: ModuleFacts, scope: ast.AST, up: dict[ast.AST, ast.AST]
) -> Iterator[Finding]:
    in_async = isinstance(scope, ast.AsyncFunctionDef)
    for node in own_nodes(scope):
        stop = _stop_call(node)
        name = receiver(stop) if stop is not None else None
        if stop is None or name is None or not _dropped(stop, scope, up):
            continue
        grpc_stop = call_name(stop) == "stop" and len(stop.args) + len(stop.keywords) == 1
        coroutine = in_async and facts.is_async_server(name)
        if not (facts.is_server(name) and (grpc_stop or coroutine)):
            continue
        if _waited_later(scope, name, stop.lineno):
            continue
        if coroutine:
            why = (
                f"the coroutine of `{_describe(stop)}` is never awaited, so the server is "
                f"never stopped; `await {_describe(stop)}`"
            )
        else:
            why = (
                f"`{_describe(stop)}` returns at once and its Event is never waited for (and "
                f"no `{name}.wait_for_termination()` follows): the process can exit while "
                f"requests drain; use `{_describe(stop)}.wait()` (or `await` it on grpc.aio)"
            )
        yield finding_at(source.path, stop.lineno, source.column(stop), STOP_NOT_AWAITED, why)


def check(source: SourceFile, facts: ModuleFacts) -> Iterator[Finding]:
    scopes: list[ast.AST] = [source.tree, *functions(source.tree)]
    for scope in scopes:
        up = parents(scope)
        yield from _spawned(source, facts, scope, up)
        yield from _threads(source, facts, scope)
        yield from _bare_stops(source, facts, scope, up)
