"""Events along the execution paths of one function body, for rules about order.

``event_paths`` follows a body the way it can run: both arms of an ``if``, each ``match``
case, a loop run zero, one or two times (two, so that a ``close()`` at the end of one
iteration meets the ``put()`` at the start of the next), ``break``, ``continue``,
``return`` and ``raise``, a ``try`` body or one of its handlers, then ``finally``. Each
statement contributes the events ``extract`` finds in it, in source order; each loop
iteration and ``with ... as`` also contributes a ``bind`` event per name it binds. Paths are
sequences of events; identical sequences merge, and at most ``limit`` are kept, so the
cost stays bounded however branchy the function is. Nested functions and classes are not
entered: their code runs at another time.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

DEFAULT_LIMIT: Final = 128
BIND: Final = "bind"  # the walker's own event: a loop or ``with`` target bound anew
LOOP_RUNS: Final = (0, 1, 2)


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # rule-specific: "close", "put", "stop", "bind", ...
    subject: str  # the dotted name it concerns
    node: ast.AST
    detail: str = ""


Path = tuple[Event, ...]
Extract = Callable[[ast.AST], list[Event]]


@dataclass
class _Flow:
    normal: set[Path] = field(default_factory=set)
    broken: set[Path] = field(default_factory=set)
    continued: set[Path] = field(default_factory=set)
    ended: set[Path] = field(default_factory=set)


class _Walker:
    def __init__(self, extract: Extract, limit: int) -> None:
        self.extract = extract
        self.limit = limit

    def _cap(self, paths: Iterable[Path]) -> set[Path]:
        kept: set[Path] = set()
        for path in sorted(paths, key=len):
            if len(kept) >= self.limit:
                break
            kept.add(path)
        return kept

    def _extend(self, paths: set[Path], nodes: Iterable[ast.AST | None]) -> set[Path]:
        events: list[Event] = []
        for node in nodes:
            if node is not None:
                events.extend(self.extract(node))
        if not events:
            return paths
        return self._cap(path + tuple(events) for path in paths)

    def block(self, body: list[ast.stmt], paths: set[Path]) -> _Flow:
        flow = _Flow(normal=set(paths))
        for statement in body:
            if not flow.normal:
                break
            step = self.statement(statement, flow.normal)
            flow.normal = step.normal
            flow.broken |= step.broken
            flow.continued |= step.continued
            flow.ended = self._cap(flow.ended | step.ended)
        return flow

    def statement(self, node: ast.stmt, paths: set[Path]) -> _Flow:  # noqa: PLR0911
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            return _Flow(normal=paths)
        if isinstance(node, ast.Return | ast.Raise):
            return _Flow(ended=self._extend(paths, [node]))
        if isinstance(node, ast.Break):
            return _Flow(broken=paths)
        if isinstance(node, ast.Continue):
            return _Flow(continued=paths)
        if isinstance(node, ast.If):
            paths = self._extend(paths, [node.test])
            return self._merge(self.block(node.body, paths), self.block(node.orelse, paths))
        if isinstance(node, ast.While | ast.For | ast.AsyncFor):
            return self._loop(node, paths)
        if isinstance(node, ast.With | ast.AsyncWith):
            paths = self._extend(paths, [item.context_expr for item in node.items])
            bound = tuple(
                event
                for item in node.items
                if item.optional_vars is not None
                for event in _binds(item.optional_vars, node)
            )
            if bound:
                paths = self._cap(path + bound for path in paths)
            return self.block(node.body, paths)
        if isinstance(node, ast.Try | ast.TryStar):
            return self._try(node, paths)
        if isinstance(node, ast.Match):
            paths = self._extend(paths, [node.subject])
            flows = [self.block(case.body, paths) for case in node.cases]
            flows.append(_Flow(normal=paths))  # no case matched
            return self._merge(*flows)
        return _Flow(normal=self._extend(paths, [node]))

    def _merge(self, *flows: _Flow) -> _Flow:
        merged = _Flow()
        for flow in flows:
            merged.normal |= flow.normal
            merged.broken |= flow.broken
            merged.continued |= flow.continued
            merged.ended |= flow.ended
        merged.normal = self._cap(merged.normal)
        merged.ended = self._cap(merged.ended)
        return merged

    def _loop(self, node: ast.While | ast.For | ast.AsyncFor, paths: set[Path]) -> _Flow:
        header = node.test if isinstance(node, ast.While) else node.iter
        paths = self._extend(paths, [header])
        exits: set[Path] = set()
        ended: set[Path] = set()
        current = paths
        rebinds = () if isinstance(node, ast.While) else _binds(node.target, node)
        for runs in LOOP_RUNS:
            if runs == 0:
                exits |= current  # the loop body never ran (or its else clause follows)
                continue
            # each iteration binds the loop variable anew: ``for ch in chans: ch.close()``
            # closes a different channel every time
            current = self._cap(path + rebinds for path in current) if rebinds else current
            flow = self.block(node.body, current)
            ended |= flow.ended
            exits |= flow.broken
            current = self._cap(flow.normal | flow.continued)
            exits |= current
        after_else = self.block(node.orelse, self._cap(exits)) if node.orelse else None
        if after_else is not None:
            return _Flow(normal=after_else.normal, ended=self._cap(ended | after_else.ended))
        return _Flow(normal=self._cap(exits), ended=self._cap(ended))

    def _try(self, node: ast.Try | ast.TryStar, paths: set[Path]) -> _Flow:
        body = self.block(node.body, paths)
        orelse = self.block(node.orelse, body.normal)
        handled = [self.block(handler.body, paths) for handler in node.handlers]
        flow = self._merge(
            _Flow(normal=orelse.normal, broken=body.broken, continued=body.continued),
            *handled,
        )
        ended = body.ended | orelse.ended | {p for h in handled for p in h.ended}
        if not node.finalbody:
            flow.ended = self._cap(ended)
            return flow
        final = self.block(node.finalbody, flow.normal)
        final_ended = self.block(node.finalbody, self._cap(ended))
        return _Flow(
            normal=final.normal,
            broken=flow.broken,
            continued=flow.continued,
            ended=self._cap(final.ended | final_ended.normal | final_ended.ended),
        )


def _binds(target: ast.AST, anchor: ast.AST) -> tuple[Event, ...]:
    """A ``bind`` event for each name a loop or ``with`` target assigns."""
    names = []
    for part in ast.walk(target):
        if isinstance(part, ast.Name):
            names.append(part.id)
        elif isinstance(part, ast.Attribute) and isinstance(part.value, ast.Name):
            names.append(f"{part.value.id}.{part.attr}")
    return tuple(Event(BIND, name, anchor) for name in names)


def event_paths(body: list[ast.stmt], extract: Extract, limit: int = DEFAULT_LIMIT) -> set[Path]:
    """The event sequences of every way through ``body`` (at most ``limit`` of them)."""
    walker = _Walker(extract, limit)
    flow = walker.block(body, {()})
    return walker._cap(flow.normal | flow.ended | flow.broken | flow.continued)
