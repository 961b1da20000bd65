"""The direct /metrics renderer: the same page prometheus_client would write, in both formats,
valid for promtool and both of prometheus_client's parsers, and bounded in what it keeps."""

from __future__ import annotations

import random
from typing import Any

import pytest
from drainwatch._histogram import WAIT_BUCKETS
from drainwatch.agent.channel_series import BOUNDS, channel_blocks
from drainwatch.agent.channel_summary import summarize
from drainwatch.agent.config import Limits
from drainwatch.agent.exposition import (
    CHUNK_LINES,
    Exposition,
    Row,
    SeriesBlock,
    TextCache,
    render,
)
from drainwatch.agent.metrics import StateCollector
from drainwatch.agent.state import State
from drainwatch.agent.task_metrics import TaskCollector
from drainwatch.collectors.sdk_decode import Decoded, Envelope
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from tests.processes import assert_promtool_clean
from tests.records import channel_record

NOW = 1_800_000_000.0
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
HOSTILE = ['a"quote', "back\\slash", "new\nline", "ünïcødé ✓", "{braces}", "tab\tand,comma="]

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def _samples(text: str, openmetrics: bool = False) -> dict[SampleKey, float]:
    parse = parse_openmetrics if openmetrics else parse_text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parse(text)
        for sample in family.samples
    }


def _page(metrics: list[Any], openmetrics: bool, cache: TextCache | None = None) -> str:
    return b"".join(render(iter(metrics), openmetrics, cache or TextCache())).decode()


def openmetrics_latest(registry: Any) -> bytes:
    """prometheus_client's own OpenMetrics page (its function is untyped)."""
    page: bytes = openmetrics_exposition.generate_latest(registry)  # type: ignore[no-untyped-call]
    return page


class _Families:
    def __init__(self, metrics: list[Any]) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        return iter(self.metrics)


def _blocks(rows: int, names: list[str] | None = None) -> list[SeriesBlock]:
    """A gauge, a counter and a histogram over ``rows`` rows of awkward values."""
    chosen = names or [f"queue-{index}" for index in range(rows)]
    labels: list[Row] = [("svc", name) for name in chosen]
    width = len(BOUNDS) + 2
    histogram: list[int | float] = []
    for index in range(len(labels)):
        counts = [(index * 7 + bucket) % 5 for bucket in range(len(BOUNDS))]
        cumulative = [sum(counts[: bucket + 1]) for bucket in range(len(counts))]
        histogram += [*cumulative, cumulative[-1], 0.000123 * index]
    assert len(histogram) == width * len(labels)
    return [
        SeriesBlock(
            "bench_age_seconds",
            'An age with "quotes", a back\\slash and a\nnewline in its help.',
            "gauge",
            ("service", "channel"),
            labels,
            [NOW + index / 3 for index in range(len(labels))],
        ),
        SeriesBlock(
            "bench_items",
            "A counter.",
            "counter",
            ("service", "channel"),
            labels,
            [index * 1_000_003 for index in range(len(labels))],
            integral=True,
        ),
        SeriesBlock(
            "bench_wait_seconds",
            "A histogram.",
            "histogram",
            ("service", "channel"),
            labels,
            histogram,
            bounds=BOUNDS,
        ),
    ]


@pytest.mark.parametrize("openmetrics", [False, True])
def test_blocks_render_what_prometheus_client_writes(openmetrics: bool) -> None:
    """Every sample of a rendered block reads back as prometheus_client's own page says."""
    blocks = _blocks(5, HOSTILE[:5])
    page = _page(list(blocks), openmetrics)
    reference = (openmetrics_latest if openmetrics else generate_latest)(_Families(blocks))
    assert _samples(page, openmetrics) == _samples(reference.decode(), openmetrics)
    if openmetrics:
        assert page.endswith("# EOF\n")
        assert page.count("# EOF") == 1


def test_a_page_longer_than_a_piece_is_whole_and_the_same_as_in_one_piece() -> None:
    """Rows beyond one piece's lines render exactly as a page in one piece would."""
    rows = CHUNK_LINES * 2 + 7
    blocks = _blocks(rows)
    pieces = list(render(iter(blocks), False, TextCache()))
    assert len(pieces) > len(blocks) + 1
    page = b"".join(pieces).decode()
    assert _samples(page) == _samples(generate_latest(_Families(blocks)).decode())


def test_hostile_label_values_are_escaped_and_read_back_exactly() -> None:
    """Quotes, backslashes, newlines and non-ASCII in labels survive both parsers and promtool."""
    blocks = _blocks(len(HOSTILE), HOSTILE)
    for openmetrics in (False, True):
        page = _page(list(blocks), openmetrics)
        channels = {
            dict(labels)["channel"]
            for name, labels in _samples(page, openmetrics)
            if name == "bench_items_total"
        }
        assert channels == set(HOSTILE)
    assert_promtool_clean(_page(list(blocks), False))


def test_an_empty_block_writes_its_header_only() -> None:
    """A family with no series (no channel closed yet) is a header and no sample."""
    block = SeriesBlock("bench_closed_seconds", "None yet.", "gauge", ("service",), [], [])
    assert _page([block], False) == (
        "# HELP bench_closed_seconds None yet.\n# TYPE bench_closed_seconds gauge\n"
    )


def test_a_block_refuses_values_that_do_not_fit_its_rows() -> None:
    """A block built with too few values says so at once instead of rendering a wrong page."""
    with pytest.raises(ValueError, match="3 values for 2 rows, expected 2"):
        SeriesBlock("bench_x", "x", "gauge", ("a",), [("1",), ("2",)], [1, 2, 3])


def test_label_texts_are_reused_and_bounded() -> None:
    """The label cache serves the same rows again and never holds more than twice the most
    rows one family had, however the rows change between scrapes."""
    cache = TextCache()
    names = ("service", "channel")
    first: list[Row] = [("svc", f"q{index}") for index in range(100)]
    assert cache.labels(names, first) == cache.labels(names, list(first))
    for generation in range(20):
        rows: list[Row] = [("svc", f"gen{generation}-q{index}") for index in range(100)]
        cache.labels(names, rows)
        cache.labels(names, rows[:10])  # a family with part of the rows keeps the cache
        assert len(cache._labels[names]) <= 2 * 100 + 64


def test_number_texts_are_bounded() -> None:
    """Number texts kept between scrapes never exceed their cap, whatever the numbers."""
    cache = TextCache()
    for start in range(0, 300_000, 50_000):
        texts = cache.reals([float(value) + 0.5 for value in range(start, start + 50_000)])
        assert texts[0] == repr(start + 0.5).encode()
        assert len(cache._numbers) <= 100_001 + 50_000


def _state_with_everything() -> State:
    """Channels in every condition (several objects per name, retired, gone, closed, with
    waits) and methods, in three services."""
    state = State(Limits(), default_service="agent", wall_clock=lambda: NOW)
    rng = random.Random(7)
    for service in ("alpha", "beta", "gamma"):
        for instance in ("a", "b"):
            records: list[dict[str, Any]] = []
            for index in range(40):
                counts = [rng.randrange(4) for _ in range(len(WAIT_BUCKETS) + 1)]
                total = sum(counts)
                closed = NOW - 5 if index % 3 == 0 else None
                records.append(
                    channel_record(
                        index + 1,
                        HOSTILE[index % len(HOSTILE)] if index < 6 else f"queue-{index % 25}",
                        created=NOW - 60 - index,
                        sent=rng.randrange(1000),
                        depth=rng.randrange(5),
                        closed=closed,
                        residual=rng.randrange(3) if closed else None,
                        drained=NOW - 1 if closed and index % 2 else None,
                        trigger="gone" if index % 11 == 0 else "snapshot",
                        wait={
                            "send": {"counts": counts, "sum": 0.01 * total, "count": total},
                            "receive": {"counts": counts, "sum": 0.5, "count": total},
                        },
                        oldest_wait={"send": 0.0, "receive": float(index % 4)},
                    )
                )
            for index in range(30):
                records.append(
                    {
                        "type": "inflight",
                        "protocol": "grpc",
                        "method": f"/svc.S/M{index}",
                        "active": index % 3,
                        "started_during_drain": 0,
                        "outcomes": {
                            "ok": index,
                            "error": 1,
                            "cancelled": 0,
                            "aborted_at_shutdown": 0,
                            "rejected_draining": 0,
                        },
                        "duration": {
                            "counts": [1] * (len(WAIT_BUCKETS) + 1),
                            "sum": 0.25,
                            "count": len(WAIT_BUCKETS) + 1,
                        },
                    }
                )
            state.apply(
                Decoded(Envelope(service, f"{service}-{instance}", 100, 1, NOW, 0), records)
            )
    with state.lock:  # a forgotten process: its channels' counters live on as totals
        gamma = state.services["gamma"]
        state._retire_instance(gamma, gamma.instances["gamma-b"])
    return state


def test_channel_series_fold_as_the_summaries_do() -> None:
    """The columns of every channel family hold what ``summarize`` says of each name."""
    state = _state_with_everything()
    with state.lock:
        blocks = {block.name: block for block in channel_blocks(state)}
        summaries = [summary for svc in state.services.values() for summary in summarize(svc)]
    expected: dict[str, dict[tuple[str, ...], float]] = {}
    for summary in summaries:
        row = (summary.service, summary.name)
        for name, value in (
            ("drainwatch_channel_created_timestamp_seconds", summary.created),
            ("drainwatch_channel_closed_timestamp_seconds", summary.closed),
            ("drainwatch_channel_drained_timestamp_seconds", summary.drained),
            ("drainwatch_channel_residual_items_at_close", summary.residual),
            ("drainwatch_channel_depth", summary.depth),
            ("drainwatch_channel_capacity", summary.capacity),
            ("drainwatch_channel_health_score", summary.health_score),
            ("drainwatch_channel_objects", summary.objects),
            ("drainwatch_channel_sent", summary.counters["sent"]),
            ("drainwatch_channel_double_close", summary.counters["double_close"]),
        ):
            if value is not None:
                expected.setdefault(name, {})[row] = value
        for op in ("send", "receive"):
            expected.setdefault("drainwatch_channel_oldest_wait_seconds", {})[(*row, op)] = (
                summary.oldest_wait[op]
            )
            histogram = summary.wait[op]
            expected.setdefault("drainwatch_channel_wait_seconds", {})[(*row, op)] = histogram[-1]
    assert len(summaries) > 60
    for name, values in expected.items():
        block = blocks[name]
        if block.type == "histogram":
            width = len(BOUNDS) + 2
            found = {
                row: block.values[index * width + width - 1] for index, row in enumerate(block.rows)
            }
        else:
            found = dict(zip(block.rows, block.values, strict=True))
        assert found == values, name


def _registry(state: State) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state))
    registry.register(TaskCollector(state))
    return registry


def _whole_page(exposition: Exposition, accept: str) -> tuple[str, str]:
    pieces, content_type = exposition.page(accept)
    return b"".join(pieces).decode(), content_type


def test_the_agents_page_matches_prometheus_client_and_passes_promtool() -> None:
    """A real state's page, in both formats, says what prometheus_client's own exposition
    of the same registry says, and promtool finds nothing to fix in it."""
    state = _state_with_everything()
    registry = _registry(state)
    exposition = Exposition(registry)
    text, text_type = _whole_page(exposition, "")
    again, _ = _whole_page(exposition, "")  # from the caches this time
    assert text == again
    assert text_type.startswith("text/plain; version=0.0.4")
    assert _samples(text) == _samples(generate_latest(registry).decode())
    assert_promtool_clean(text)
    openmetrics, openmetrics_type = _whole_page(exposition, OPENMETRICS)
    assert openmetrics_type.startswith("application/openmetrics-text")
    assert _samples(openmetrics, True) == _samples(openmetrics_latest(registry).decode(), True)


def test_a_page_without_blocks_is_prometheus_clients() -> None:
    """Families that are not blocks go through prometheus_client unchanged."""
    family = GaugeMetricFamily("bench_plain", "Plain.", labels=["x"])
    family.add_metric(["y"], 1.5)
    assert _page([family], False) == generate_latest(_Families([family])).decode()
    assert _page([family], True) == openmetrics_latest(_Families([family])).decode()


def test_what_a_scrape_keeps_of_a_channel_follows_its_changes() -> None:
    """Histogram lines and health kept between scrapes are made anew once a record changes
    what they come from, and only then."""
    state = State(Limits(), default_service="agent", wall_clock=lambda: NOW)
    envelope = Envelope("svc", "one", 100, 1, NOW, 0)
    counts = [0] * (len(WAIT_BUCKETS) + 1)
    state.apply(Decoded(envelope, [channel_record(1, "jobs", created=NOW - 9)]))

    def scrape() -> dict[str, list[Any]]:
        with state.lock:
            return {block.name: list(block.values) for block in channel_blocks(state)}

    first = scrape()
    [kept] = state.services["svc"].instances["one"].channels.values()
    lines, health = kept.wait_lines, kept.health
    assert lines is not None and health == 100.0
    same = channel_record(1, "jobs", created=NOW - 9)
    state.apply(Decoded(envelope, [same]))
    assert scrape() == first
    assert kept.wait_lines is lines  # nothing changed: nothing made again
    counts[3] = 2
    changed = channel_record(
        1,
        "jobs",
        created=NOW - 9,
        read_after_close=4,
        oldest_wait={"send": 0.0, "receive": 30.0},
        wait={
            "send": {"counts": list(counts), "sum": 0.01, "count": 2},
            "receive": {"counts": [0] * len(counts), "sum": 0.0, "count": 0},
        },
    )
    state.apply(Decoded(envelope, [changed]))
    second = scrape()
    [summary] = summarize(state.services["svc"])
    assert second["drainwatch_channel_health_score"] == [summary.health_score] != [100.0]
    assert second["drainwatch_channel_wait_seconds"][3] == 2
    assert second["drainwatch_channel_wait_seconds"][len(BOUNDS) + 1] == 0.01
