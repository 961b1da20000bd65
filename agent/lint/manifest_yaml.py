"""Kubernetes YAML read safely, with line numbers: the node graph, never Python objects.

``compose_documents`` composes each document of a file with PyYAML's safe loader and
refuses, with ``ManifestError``, what could make the linter slow or crash: more than
``MAX_DOCUMENTS`` documents, nesting deeper than ``MAX_DEPTH``, more than ``MAX_ALIASES``
aliases, a recursive alias, or aliases that expand to more than ``MAX_EXPANDED_NODES``
nodes (the "billion laughs" bomb: a handful of aliases, each repeating the one before,
costs nothing to compose but explodes when walked). The expanded size is counted once
per node, so the check itself stays linear in the file.

The helpers read nodes the way the rules need them: a mapping's value by key, a sequence's
items, a scalar as ``int`` or ``str`` (None for anything else), and the 1-based position
of a node.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import yaml

MAX_DOCUMENTS: Final = 1000
MAX_DEPTH: Final = 100
MAX_ALIASES: Final = 10_000
MAX_EXPANDED_NODES: Final = 1_000_000

Node = yaml.Node


class ManifestError(Exception):
    """The file cannot be linted as YAML; ``line``/``column`` (1-based) when known."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.line = max(1, line)
        self.column = max(1, column)


class _LimitedLoader(yaml.SafeLoader):
    """The safe loader's composer, counting depth and aliases as it goes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.aliases = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise ManifestError(
                    f"more than {MAX_ALIASES} YAML aliases: refused as a possible alias bomb",
                    mark.line + 1,
                    mark.column + 1,
                )
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ManifestError(
                f"nested deeper than {MAX_DEPTH} levels: refused", mark.line + 1, mark.column + 1
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _expanded_size(root: Node) -> int:
    """Nodes in ``root`` with every alias expanded; raises on a recursive alias."""
    sizes: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    entered: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if children_done:
            total = 1 + sum(sizes[id(child)] for child in children)
            sizes[key] = min(total, MAX_EXPANDED_NODES + 1)
            continue
        if key in entered:
            mark = node.start_mark
            raise ManifestError("a recursive YAML alias: refused", mark.line + 1)
        entered.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def compose_documents(text: str) -> list[Node]:
    """Every non-empty document of ``text``; raises ``ManifestError``."""
    try:
        # The reader checks the whole text for characters YAML forbids as it is built.
        loader = _LimitedLoader(text)
    except yaml.YAMLError as error:
        raise ManifestError(f"cannot parse YAML: {error}") from None
    documents: list[Node] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if len(documents) >= MAX_DOCUMENTS:
                raise ManifestError(f"more than {MAX_DOCUMENTS} YAML documents: refused")
            if _expanded_size(node) > MAX_EXPANDED_NODES:
                mark = node.start_mark
                raise ManifestError(
                    f"its aliases expand to more than {MAX_EXPANDED_NODES} nodes: refused as "
                    "a YAML alias bomb",
                    mark.line + 1,
                )
            documents.append(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        column = mark.column + 1 if mark is not None else 1
        raise ManifestError(f"cannot parse YAML: {error.problem or error}", line, column) from None
    except yaml.YAMLError as error:
        raise ManifestError(f"cannot parse YAML: {error}") from None
    except RecursionError:
        raise ManifestError("cannot parse YAML: nested too deeply") from None
    finally:
        loader.dispose()
    return documents


# -- reading nodes ------------------------------------------------------------------------------


def get(node: Node | None, *keys: str) -> Node | None:
    """``node[key1][key2]...`` through mappings; None when any step is missing."""
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return None
        found = None
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                found = value_node  # the last one wins, as in PyYAML's constructor
        node = found
    return node


def items(node: Node | None) -> Iterator[Node]:
    if isinstance(node, yaml.SequenceNode):
        yield from node.value


def text(node: Node | None) -> str | None:
    if isinstance(node, yaml.ScalarNode) and node.tag != "tag:yaml.org,2002:null":
        return str(node.value)
    return None


def integer(node: Node | None) -> int | None:
    """A whole number written as one (or quoted); None for anything else."""
    value = text(node)
    if value is None:
        return None
    stripped = value.strip().replace("_", "")
    if stripped.isascii() and stripped.lstrip("+-").isdigit() and len(stripped) <= 12:
        return int(stripped)
    return None


def words(node: Node | None) -> list[str]:
    """The scalar items of a sequence (a container's ``command``/``args``)."""
    return [value for item in items(node) if (value := text(item)) is not None]


def position(node: Node | None) -> tuple[int, int]:
    if node is None:
        return 1, 1
    mark = node.start_mark
    return mark.line + 1, mark.column + 1
