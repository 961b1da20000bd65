"""What the shipped dashboards and rules query: every PromQL expression, with Grafana's
variables replaced as Grafana would, and the series selectors in each.

A small PromQL lexer finds the selectors: identifiers that are not functions, aggregation
operators, keywords or label lists (``by (...)``, ``on (...)``), with their ``{...}``
matchers; ranges and subquery brackets are skipped. Prometheus 2.42 has no endpoint that
returns a parsed query, so the test suite parses with promtool (does it parse?) and uses
this lexer for what it names (which metrics, which labels).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "drainwatch.rules.yaml"
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))

# What Grafana puts in place of its built-in interval variables, and of a multi-value
# label variable set to "All" (its allValue, a regex that matches any value).
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__range": "1h", "__interval": "30s"}
ALL = ".*"
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*(?P<label>\w+)\)$", re.S)

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<duration>\d+(?:ms|s|m|h|d|w|y)(?:\d+(?:ms|s|m|h|d|w|y))*\b)
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){}\[\],@])
    """,
    re.X,
)
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
_AGGREGATORS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip


@dataclass(frozen=True)
class Selector:
    """A series selector: the metric name (None for ``{...}`` alone) and its matchers."""

    metric: str | None
    matchers: tuple[tuple[str, str, str], ...]

    def promql(self) -> str:
        inside = ", ".join(f"{label}{op}{json.dumps(value)}" for label, op, value in self.matchers)
        return f"{self.metric or ''}{{{inside}}}"


@dataclass(frozen=True)
class Query:
    """One shipped PromQL expression and where it comes from."""

    where: str
    expr: str


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[position : position + 20]!r}: {expr}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def _skip_group(tokens: list[tuple[str, str]], index: int, open_: str, close: str) -> int:
    """The index after the bracket that closes the one at ``index``."""
    depth = 0
    while index < len(tokens):
        text = tokens[index][1]
        if text == open_:
            depth += 1
        elif text == close:
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    raise ValueError(f"unbalanced {open_}{close}")


def _matchers(
    tokens: list[tuple[str, str]], index: int
) -> tuple[tuple[tuple[str, str, str], ...], int]:
    """Parse ``{label op "value", ...}`` starting at the ``{`` at ``index``."""
    found = []
    index += 1
    while tokens[index][1] != "}":
        (label_kind, label), (_, op), (value_kind, value) = tokens[index : index + 3]
        if label_kind != "ident" or op not in {"=", "!=", "=~", "!~"} or value_kind != "string":
            raise ValueError(f"bad matcher near {label} {op} {value}")
        found.append((label, op, json.loads(value) if value[0] == '"' else value[1:-1]))
        index += 3
        if tokens[index][1] == ",":
            index += 1
    return tuple(found), index + 1


def selectors(expr: str) -> list[Selector]:
    """Every series selector in a PromQL expression, in order."""
    tokens = _tokens(expr)
    found: list[Selector] = []
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if text == "[":
            index = _skip_group(tokens, index, "[", "]")
        elif text == "{":
            matchers, index = _matchers(tokens, index)
            name = next((value for label, op, value in matchers if label == "__name__"), None)
            found.append(Selector(name, matchers))
        elif kind != "ident":
            index += 1
        elif text in _LABEL_LISTS:
            index = _skip_group(tokens, index + 1, "(", ")") if following == "(" else index + 1
        elif following == "(" or text in _KEYWORDS or text in _AGGREGATORS:
            index += 1
        elif following == "{":
            matchers, index = _matchers(tokens, index + 1)
            found.append(Selector(text, matchers))
        else:
            found.append(Selector(text, ()))
            index += 1
    return found


def interpolate(expr: str, values: dict[str, str] | None = None) -> str:
    """``expr`` as Grafana sends it: built-in intervals, and every other variable set to
    ``values[name]`` or to "All" (``.*``)."""
    chosen = {**GRAFANA_BUILTINS, **(values or {})}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return chosen.get(name, ALL)

    return _VARIABLE.sub(replace, expr)


def _panel_queries(panel: dict[str, Any], title: str) -> Iterator[Query]:
    for target in panel.get("targets", []):
        if "expr" in target:
            yield Query(f"{title}: panel {panel['title']!r} {target['refId']}", target["expr"])
    for inner in panel.get("panels", []):
        yield from _panel_queries(inner, title)


def dashboard_queries(path: Path) -> list[Query]:
    """Panel targets, and the selectors inside ``label_values(...)`` variable queries."""
    board = json.loads(path.read_text())
    title = path.name
    queries: list[Query] = []
    for panel in board["panels"]:
        queries += _panel_queries(panel, title)
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = _LABEL_VALUES.match(variable["query"])
        assert match, f"{title}: variable {variable['name']} is not label_values(...)"
        queries.append(Query(f"{title}: variable {variable['name']}", match["selector"]))
    return queries


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def rule_queries() -> list[Query]:
    return [
        Query(f"{RULES.name}: {rule.get('alert') or rule['record']}", rule["expr"])
        for rule in rules()
    ]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def all_queries() -> list[Query]:
    shipped = rule_queries()
    for path in DASHBOARDS:
        shipped += dashboard_queries(path)
    return shipped
