"""The metric contract: docs/metrics.md, the code and a real agent's /metrics agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import run_target, running_agent

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_ROW = re.compile(r"^\| `(drainwatch_[a-z_]+)` \| (counter|gauge|histogram) \|", re.M)

# Every kind of fact, so that every family has at least one sample: a channel that is
# closed and drained, a request, listeners, and a shutdown with a signal and steps.
TARGET = """
import asyncio, signal, drainwatch
from drainwatch._inflight import REGISTRY
from drainwatch._shutdown import STATE
async def main():
    ch = drainwatch.Channel("orders", maxsize=2)
    await ch.put(1)
    ch.close()
    await ch.get()
    STATE.listener_opened("grpc", "business", 50051)
    STATE.listener_opened("health", "health", 8081)
    STATE.set_ready(True)
    charge = REGISTRY.stats("grpc", "/pay.Payments/Charge")
    REGISTRY.finish(charge, REGISTRY.start(charge), "ok")
    STATE.note_signal(signal.SIGTERM)
    STATE.set_ready(False)
    STATE.listener_stop_started("grpc")
    STATE.listener_closed("grpc")
    STATE.listener_closed("health")
    drainwatch.flush(timeout=2)
asyncio.run(main())
"""


def documented() -> dict[str, str]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    return dict(CONTRACT_ROW.findall(text))


def test_docs_list_each_metric_once_with_a_type() -> None:
    """docs/metrics.md has one row per metric name."""
    rows = CONTRACT_ROW.findall((ROOT / "docs" / "metrics.md").read_text())
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), "a metric is documented twice"
    assert len(names) >= 20


@pytest.mark.e2e
def test_real_agent_exports_exactly_the_documented_metrics() -> None:
    """What a real agent serves after a real run is what the docs list, with the same types."""
    with running_agent() as agent:
        result = run_target(TARGET, agent.endpoint)
        assert result.returncode == 0, result.stderr
        samples = agent.wait_for("drainwatch_target_exit_timestamp_seconds")
    exported: dict[str, str] = {}
    for line in samples.text.splitlines():
        match = re.match(r"# TYPE (drainwatch_[a-z_]+) (\w+)", line)
        if match:
            name, kind = match.groups()
            exported[name] = kind
    docs = documented()
    assert sorted(set(exported) - set(docs)) == [], "exported but not documented"
    assert sorted(set(docs) - set(exported)) == [], "documented but not exported"
    assert exported == docs
    sampled = {
        family.name
        for family in text_string_to_metric_families(samples.text)
        if family.samples and family.name.startswith("drainwatch_")
    }
    # the exposition names counters without _total; the docs name the series
    empty = sorted(name for name in docs if name.removesuffix("_total") not in sampled)
    assert empty == [], "documented and exported, but without a single sample"


def _queried_metrics(text: str) -> set[str]:
    return set(re.findall(r"\b(drainwatch_[a-z_]+?)(?:_bucket|_sum|_count)?\b", text))


def test_dashboards_and_alerts_query_only_documented_metrics() -> None:
    """Every drainwatch_* name used by a shipped dashboard or rule file is documented."""
    docs = set(documented())
    shipped = [
        path
        for folder in ("dashboards", "alerts", "deploy")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in {".json", ".yaml", ".yml"}
    ]
    undocumented = {
        (path.name, name)
        for path in shipped
        for name in _queried_metrics(path.read_text())
        if name not in docs and not name.startswith("drainwatch_fleet:")
    }
    assert undocumented == set()
