"""Requests in flight over time: the bounded series the agent keeps per method, and the
window of it that a drain report carries."""

from __future__ import annotations

import pytest
from drainwatch.agent.drain_report import SERIES_LEAD_SECONDS
from drainwatch.agent.inflight_series import InflightSeries
from drainwatch.agent.report_json import ReportFormatError, report_from_json
from drainwatch.agent.report_store import DrainReports
from drainwatch.agent.state_json import state_document

from tests.agent.shutdowns import SIGTERM, T0, FakeTime, SdkProcess, make_state


def test_only_changes_are_kept_and_a_constant_run_keeps_its_two_ends() -> None:
    """Repeated counts add no point; a long constant run is its first and latest point."""
    series = InflightSeries()
    for second in range(100):
        series.observe(T0 + second, 3)
    series.observe(T0 + 100, 4)
    assert list(series) == [(T0, 3), (T0 + 90, 3), (T0 + 100, 4)]


def test_the_series_is_bounded_keeps_its_start_and_never_thins_a_peak_away() -> None:
    """10,000 changes fit in ``capacity`` points, still start at the first, keep the newest
    half exact and keep the one spike among them."""
    series = InflightSeries(capacity=64)
    for index in range(10_000):
        series.observe(T0 + index * 0.1, 1000 if index == 1234 else index % 2)
    points = list(series)
    assert len(points) <= 64
    assert points[0][0] == T0
    assert max(count for _, count in points) == 1000
    assert points[-1][0] == pytest.approx(T0 + 999.9) and points[-1][1] == 1
    assert [count for _, count in points[-32:]] == [index % 2 for index in range(9968, 10_000)]


def test_a_late_point_never_goes_back_in_time() -> None:
    """A snapshot that arrives out of order is placed at the latest time seen, not before."""
    series = InflightSeries()
    series.observe(T0 + 5, 2)
    series.observe(T0 + 1, 7)
    assert list(series) == [(T0 + 5, 2), (T0 + 5, 7)]


def test_a_window_carries_the_count_from_before_it_onto_its_start() -> None:
    """``points(since, until)`` begins with the count in force at ``since``."""
    series = InflightSeries()
    for second, count in ((0, 1), (2, 5), (4, 0), (6, 2)):
        series.observe(T0 + second, count)
    assert series.points(T0 + 3, T0 + 5) == [[T0 + 3, 5], [T0 + 4, 0]]
    assert series.points() == [[T0, 1], [T0 + 2, 5], [T0 + 4, 0], [T0 + 6, 2]]


@pytest.mark.parametrize("capacity", [0, 3, 5, -2])
def test_a_bad_capacity_is_refused_with_the_constraint(capacity: int) -> None:
    """The capacity must be even and at least 4 (the thinning halves pairs)."""
    with pytest.raises(ValueError, match=r'"capacity" must be an even number >= 4'):
        InflightSeries(capacity)


def test_state_and_report_carry_in_flight_over_the_drain(sdk: SdkProcess, clock: FakeTime) -> None:
    """/api/v1/state has every point; the report keeps 5 s before the signal to the end."""
    state, feed = make_state(clock)
    reports = DrainReports(state, 30.0, clock=clock)
    sdk.at(0).listener_opened("grpc", "business", 50051)
    feed.send("a", sdk.records())
    early = sdk.start("grpc", "/pay.Payments/Charge", 1)
    feed.send("a", sdk.records())
    sdk.finish(early)
    sdk.at(2)
    feed.send("a", sdk.records())
    requests = sdk.start("grpc", "/pay.Payments/Charge", 4)
    sdk.at(8)
    feed.send("a", sdk.records())
    sdk.at(10).note_signal(SIGTERM)
    feed.send("a", sdk.records())
    sdk.finish(requests[:3])
    sdk.at(11)
    feed.send("a", sdk.records())
    sdk.finish(requests[3:])
    sdk.exit(12)
    feed.send("a", sdk.records())
    state.disconnected("a")

    [request] = state_document(state)["services"][0]["instances"][0]["requests"]
    assert request["inflight_series"] == [
        [T0, 1],
        [T0 + 2, 0],
        [T0 + 8, 4],
        [T0 + 11, 1],
        [T0 + 12, 0],
    ]

    clock.now = T0 + 20
    reports.refresh()
    [report] = reports.reports()
    document = report.to_json()
    [row] = document["requests"]
    since = T0 + 10 - SERIES_LEAD_SECONDS
    assert row["inflight_series"] == [[since, 0], [T0 + 8, 4], [T0 + 11, 1], [T0 + 12, 0]]
    restored = report_from_json(document)
    assert restored.requests[0].series == report.requests[0].series


@pytest.mark.parametrize(
    ("series", "message"),
    [
        ("lots", r"requests\[0\]\.inflight_series: expected a list"),
        ([[1.0]], r"requests\[0\]\.inflight_series\[0\]: expected a \[time, count\] pair"),
        ([[1.0, "many"]], r"requests\[0\]\.inflight_series\[0\]\[1\]: expected a whole number"),
        ([["now", 1]], r"requests\[0\]\.inflight_series\[0\]\[0\]: expected a number"),
        ([[1.0, 1]] * 10_001, r"requests\[0\]\.inflight_series: expected a list"),
    ],
)
def test_a_saved_report_with_a_broken_series_is_refused_naming_the_field(
    sdk: SdkProcess, clock: FakeTime, series: object, message: str
) -> None:
    """Reading a report back checks each point; oversized series are refused too."""
    state, feed = make_state(clock)
    reports = DrainReports(state, 30.0, clock=clock)
    requests = sdk.start("grpc", "/pay.Payments/Charge", 1)
    sdk.at(1).note_signal(SIGTERM)
    feed.send("a", sdk.records())
    sdk.finish(requests)
    sdk.exit(2)
    feed.send("a", sdk.records())
    state.disconnected("a")
    reports.refresh()
    document = reports.reports()[0].to_json()
    document["requests"][0]["inflight_series"] = series
    with pytest.raises(ReportFormatError, match=message):
        report_from_json(document)
