"""Channel ownership: DW103 close-by-consumer, DW106 put-after-close, DW107 double-close.

The post-mortem's rule: the one who creates or sends closes; a consumer never closes what
it reads from. A name is taken for a channel or queue when the module builds it from a
``Channel``/``Queue`` constructor, its annotation says so, or the function uses it the way
only a queue is used (``get()`` with no argument, ``get_nowait``, ``put_nowait``,
``task_done``).

- DW103: a function closes (``close()``/``shutdown()``) a channel that it received (a
  parameter, or a ``self.`` attribute the class does not build) and only reads from.
- DW106: a ``put``/``put_nowait`` after a ``close()``/``shutdown()`` of the same name on
  some path through the function (loops run twice, so the next iteration's put counts),
  with no rebinding of the name in between.
- DW107: a second close of the same channel on some path, with no rebinding in between.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Final

from .ast_facts import (
    ModuleFacts,
    annotated_channel,
    call_name,
    dotted,
    functions,
    receiver,
    scope_nodes,
)
from .paths import Event, event_paths
from .rules import CLOSE_BY_CONSUMER, DOUBLE_CLOSE, PUT_AFTER_CLOSE, Finding, finding_at
from .source import SourceFile

CLOSES: Final = frozenset({"close", "shutdown"})
PUTS: Final = frozenset({"put", "put_nowait"})
READS: Final = frozenset({"get", "get_nowait", "task_done"})
_QUEUE_ONLY: Final = frozenset({"get_nowait", "put_nowait", "task_done"})

Function = ast.FunctionDef | ast.AsyncFunctionDef


def _queue_like_use(call: ast.Call) -> bool:
    name = call_name(call)
    if name in _QUEUE_ONLY:
        return True
    # Queue.get() takes no positional argument (thread queues: block/timeout keywords);
    # dict.get(key), session.get(url) and redis.get(key) all take one.
    return name == "get" and not call.args


def _evidence(function: Function, facts: ModuleFacts) -> set[str]:
    """Names this function uses as channels or queues."""
    found = set(facts.channels)
    arguments = function.args
    for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
        if annotated_channel(argument.annotation):
            found.add(argument.arg)
    for node in scope_nodes(function):
        if isinstance(node, ast.Call) and _queue_like_use(node) and (name := receiver(node)):
            found.add(name)
    return found


def _class_built(tree: ast.Module, facts: ModuleFacts) -> dict[Function, set[str]]:
    """For each method: the ``self.`` attributes its class builds itself."""
    built: dict[Function, set[str]] = {}
    for cls in ast.walk(tree):
        if not isinstance(cls, ast.ClassDef):
            continue
        methods = [
            node for node in cls.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        made = {name for name in facts.channels if name.startswith("self.")}
        own: set[str] = set()
        for method in methods:
            for node in scope_nodes(method):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                    own.update(
                        name
                        for name in map(dotted, node.targets)
                        if name and name.startswith("self.") and name in made
                    )
        for method in methods:
            built[method] = own
    return built


def _consumer_closes(
    source: SourceFile, facts: ModuleFacts, function: Function, built: set[str]
) -> Iterator[Finding]:
    params = {
        argument.arg
        for argument in [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]
        if argument.arg not in ("self", "cls")
    }
    evidence = _evidence(function, facts)
    reads: set[str] = set()
    writes: set[str] = set()
    bound: set[str] = set()
    closes: list[tuple[str, ast.Call]] = []
    for node in scope_nodes(function):
        if isinstance(node, ast.Call) and (name := receiver(node)):
            method = call_name(node)
            if method in READS:
                reads.add(name)
            elif method in PUTS:
                writes.add(name)
            elif method in CLOSES:
                closes.append((name, node))
        elif isinstance(node, ast.AsyncFor | ast.For) and (name := dotted(node.iter)):
            reads.add(name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound.update(name for name in map(dotted, targets) if name)
    for name, call in closes:
        received = name in params or (name.startswith("self.") and name not in built)
        if not received or name in bound or name in writes or name not in reads:
            continue
        if name not in evidence:
            continue
        yield finding_at(
            source.path,
            call.lineno,
            source.column(call),
            CLOSE_BY_CONSUMER,
            f"`{function.name}` closes `{name}` but only reads from it: a consumer that "
            "closes a channel races its producer, whose next put fails (Go panics); let the "
            "owner, the side that sends, close it, and end the consumer when the channel is "
            "closed and drained",
        )


def _sequence_events(node: ast.AST) -> list[Event]:
    events: list[Event] = []
    for part in [node, *scope_nodes(node)]:
        if isinstance(part, ast.Call) and (name := receiver(part)):
            method = call_name(part)
            if method in CLOSES:
                events.append(Event("close", name, part, method or ""))
            elif method in PUTS:
                events.append(Event("put", name, part, method or ""))
        elif isinstance(part, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = part.targets if isinstance(part, ast.Assign) else [part.target]
            events.extend(Event("bind", name, part) for name in map(dotted, targets) if name)
    return events


def _sequences(source: SourceFile, facts: ModuleFacts, function: Function) -> Iterator[Finding]:
    evidence = _evidence(function, facts)
    reported: set[tuple[str, int]] = set()
    for path in event_paths(function.body, _sequence_events):
        closed: dict[str, ast.AST] = {}
        for event in path:
            if event.kind == "bind":
                closed.pop(event.subject, None)
                continue
            first = closed.get(event.subject)
            if event.kind == "close" and first is None:
                closed[event.subject] = event.node
                continue
            if first is None:
                continue
            node = event.node
            line = getattr(first, "lineno", 0)
            if event.kind == "put":
                rule, text = (
                    PUT_AFTER_CLOSE,
                    f"`{event.subject}.{event.detail}()` after `{event.subject}` was closed on "
                    f"line {line}: the put raises ChannelClosed (QueueShutDown), or is "
                    "silently lost on a queue that cannot close; send everything first, "
                    "then close once, at the end",
                )
            elif event.subject in evidence:
                rule, text = (
                    DOUBLE_CLOSE,
                    f"`{event.subject}` is closed again after line {line}: a double close "
                    "means nobody knows who owns the channel (Go panics); close it once, "
                    "in the owner",
                )
            else:
                continue
            key = (rule.code, id(node))
            if key in reported:
                continue
            reported.add(key)
            yield finding_at(
                source.path, getattr(node, "lineno", 1), source.column(node), rule, text
            )


def check(source: SourceFile, facts: ModuleFacts) -> Iterator[Finding]:
    built = _class_built(source.tree, facts)
    for function in functions(source.tree):
        yield from _consumer_closes(source, facts, function, built.get(function, set()))
        yield from _sequences(source, facts, function)
