"""Every PromQL expression the dashboards and rules ship parses with promtool, and every
series it selects is documented in docs/metrics.md (or recorded by the shipped rules)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql import (
    DASHBOARDS,
    Selector,
    all_queries,
    dashboard_queries,
    interpolate,
    recorded_names,
    selectors,
)
from tests.test_contract import documented

# Series Prometheus makes itself, not the agent: the scrape's `up`, and `ALERTS` of the
# alerting rules (the overview lists firing drainwatch alerts).
PROMETHEUS_SERIES = {"up", "ALERTS"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def documented_series() -> set[str]:
    """Every series name docs/metrics.md promises, histogram series included."""
    names = set()
    for name, kind in documented().items():
        names.add(name)
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


def test_the_lexer_finds_selectors_but_not_functions_labels_or_durations() -> None:
    """Selectors come out with their matchers; functions, label lists, offsets do not."""
    expr = (
        'sum by (namespace, le) (rate(x_bucket{a="1", b=~"2|3"}[5m] offset 10m)) '
        '/ on (namespace) group_left (pod) y > 0.8 <= 1 and z unless {__name__="w"} '
        "or histogram_quantile(0.9, v[1h:5m]) or vector(0) or time()"
    )
    assert selectors(expr) == [
        Selector("x_bucket", (("a", "=", "1"), ("b", "=~", "2|3"))),
        Selector("y", ()),
        Selector("z", ()),
        Selector("w", (("__name__", "=", "w"),)),
        Selector("v", ()),
    ]


def test_the_lexer_refuses_what_it_cannot_read() -> None:
    """An unreadable expression fails the check instead of passing with nothing found."""
    with pytest.raises(ValueError, match="cannot read PromQL"):
        selectors('x{a="1"} # comment')
    with pytest.raises(ValueError, match="bad matcher"):
        selectors("x{a=b}")
    with pytest.raises(ValueError, match="unbalanced"):
        selectors("sum by (a x")


def test_grafana_variables_are_replaced_as_grafana_would() -> None:
    """Built-in intervals get durations, label variables "All" (.*) unless given."""
    assert interpolate('rate(x{pod=~"$pod", ns=~"${namespace}"}[$__rate_interval])') == (
        'rate(x{pod=~".*", ns=~".*"}[1m])'
    )
    assert interpolate('x{pod=~"$pod"}', {"pod": "payments-0"}) == 'x{pod=~"payments-0"}'


def test_the_dashboards_hold_at_least_ten_queries() -> None:
    """Between them the dashboards run at least 10 queries (the issue's floor)."""
    panel_queries = [
        q for path in DASHBOARDS for q in dashboard_queries(path) if "panel" in q.where
    ]
    assert len(DASHBOARDS) >= 2
    assert len(panel_queries) >= 10, panel_queries


def test_every_shipped_expression_parses_with_promtool(tmp_path: Path) -> None:
    """promtool parses every rule and every panel/variable query (Grafana variables
    replaced), each written as a recording rule of a scratch rule file."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: install Debian's 'prometheus' package (.ci/run does)"
    queries = all_queries()
    scratch = {
        "groups": [
            {
                "name": "shipped_queries",
                "rules": [
                    {"record": f"shipped:query_{index}:check", "expr": interpolate(query.expr)}
                    for index, query in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump(scratch))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    where = "\n".join(f"query_{index}: {query.where}" for index, query in enumerate(queries))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{where}"
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_a_broken_query_would_fail_the_promtool_check(tmp_path: Path) -> None:
    """The check above can fail: promtool refuses a query with an unbalanced bracket."""
    promtool = shutil.which("promtool")
    assert promtool
    path = tmp_path / "broken.yaml"
    rule = {"record": "shipped:broken:check", "expr": 'sum(rate(x{a="1"}[5m])'}
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [rule]}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, timeout=60, check=False
    )
    assert result.returncode != 0


def test_every_selected_series_is_documented_or_recorded() -> None:
    """Each metric a panel, variable or rule selects is in docs/metrics.md, is a series
    Prometheus makes itself, or is recorded by the shipped rules."""
    known = documented_series() | recorded_names() | PROMETHEUS_SERIES
    unknown = {
        (query.where, selector.metric)
        for query in all_queries()
        for selector in selectors(interpolate(query.expr))
        if selector.metric not in known
    }
    assert unknown == set()


def test_every_recording_rule_name_follows_the_level_metric_operation_convention() -> None:
    """Recorded names are level:metric:operation, with a drainwatch metric in the middle."""
    for name in recorded_names():
        level, metric, operation = name.split(":")
        assert level and operation, name
        assert metric.startswith("drainwatch_"), name
