"""Cardinality caps beyond one scope: totals across services, SDK-side caps, expiry, clocks."""

from __future__ import annotations

from typing import Any

from drainwatch.agent.channel_summary import summarize
from drainwatch.agent.config import Limits
from drainwatch.agent.report_store import DrainReports
from drainwatch.agent.series_caps import MAX_SDK_LIMITS, OTHER, NameCap, SeriesCaps, TotalCap
from drainwatch.agent.state import State

from tests.agent.test_state import NOW, Clock, Feeder, channel, make_state, samples
from tests.records import inflight_record

CAPPED = "drainwatch_agent_series_capped_total"


def _capped(state: State, limit: str) -> float:
    return samples(state)[(CAPPED, (("limit", limit), ("service", "agent-default")))]


def process_record(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "process",
        "started": NOW - 10,
        "python": "3.11.7",
        "sdk": "0.1.0",
        "channels": 0,
        "internal_errors": 0,
    }
    record.update(fields)
    return record


def test_channel_names_are_capped_in_total_across_services() -> None:
    """Many services with a few names each cannot add up past max_channels_total."""
    state, feed, _ = make_state(Limits(max_channels_per_service=50, max_channels_total=30))
    for service in range(10):
        for channel_id in range(1, 6):
            feed.send(
                f"i{service}", channel(channel_id, name=f"n{channel_id}"), service=f"s{service}"
            )
    names = [summary.name for service in state.services.values() for summary in summarize(service)]
    assert len([name for name in names if name != OTHER]) == 30
    assert names.count(OTHER) == 4  # services 6..9 fold all of theirs
    assert _capped(state, "channels_total") == 20


def test_method_names_are_capped_per_service_across_its_processes() -> None:
    """Each process under its own cap may not add new names past the service's cap."""
    state, feed, _ = make_state(Limits(max_methods_per_instance=4))
    for process in range(5):
        records = [inflight_record(method=f"/svc/M{process}-{index}") for index in range(4)]
        feed.send(f"p{process}", *records)
    service = state.services["svc"]
    methods = {name for instance in service.instances.values() for _, name in instance.inflight}
    assert methods == {"/svc/M0-0", "/svc/M0-1", "/svc/M0-2", "/svc/M0-3", OTHER}
    assert _capped(state, "methods") == 16


def test_sdk_caps_are_exported_and_never_go_back_when_the_process_is_forgotten() -> None:
    """The SDK's own folds arrive in its process record and stay counted after expiry."""
    state, feed, clock = make_state()
    feed.send("a", process_record(capped={"methods": 3, "name_length": 2}))
    feed.send("a", process_record(capped={"methods": 7, "name_length": 1}))
    assert _capped(state, "sdk_methods") == 7
    assert _capped(state, "sdk_name_length") == 2  # cumulative: a smaller count is stale
    clock.now += 1000
    state.expire(retention_seconds=300)
    assert state.services["svc"].instances == {}
    assert _capped(state, "sdk_methods") == 7


def test_sdk_limit_names_are_bounded_in_number() -> None:
    """A process inventing limit names gets at most MAX_SDK_LIMITS of them, then sdk_other."""
    state, feed, _ = make_state()
    for batch in range(4):
        names = {f"limit_{batch}_{index}": 1 for index in range(16)}
        feed.send(f"p{batch}", process_record(capped=names))
    exported = {dict(labels)["limit"] for name, labels in samples(state) if name == CAPPED} - set(
        SeriesCaps(128).counts()
    )
    assert len(exported) == MAX_SDK_LIMITS + 1
    assert "sdk_other" in exported


def test_a_service_with_no_process_left_expires_and_frees_its_slots() -> None:
    """Gone targets do not hold cap slots forever: a new name gets a series of its own."""
    state, feed, clock = make_state(Limits(max_services=2, max_channels_total=2))
    feed.send("a", channel(1, name="x"), service="old-1")
    feed.send("b", channel(1, name="y"), service="old-2")
    feed.send("c", channel(1, name="z"), service="new")
    assert sorted(state.services) == ["old-1", "old-2", OTHER]
    clock.now += 400
    state.expire(retention_seconds=300, service_retention_seconds=3600)
    assert sorted(state.services) == ["old-1", "old-2", OTHER]  # processes gone, services kept
    clock.now += 3600
    state.expire(retention_seconds=300, service_retention_seconds=3600)
    assert state.services == {}
    feed.send("d", channel(1, name="z"), service="new")
    assert [summary.name for summary in summarize(state.services["new"])] == ["z"]


def test_expiry_follows_the_monotonic_clock_not_the_wall_clock() -> None:
    """A wall clock jumping a day ahead expires nothing; monotonic time passing does."""
    wall, monotonic = Clock(), Clock()
    state = State(Limits(), "agent-default", wall_clock=wall, clock=monotonic)
    feed = Feeder(state)
    feed.send("a", channel(1))
    wall.now += 86_400
    state.expire(retention_seconds=300)
    assert list(state.services["svc"].instances) == ["a"]
    wall.now -= 2 * 86_400
    monotonic.now += 301
    state.expire(retention_seconds=300)
    assert state.services["svc"].instances == {}


def test_drain_reports_are_kept_for_a_bounded_number_of_services() -> None:
    """A churn of service names cannot grow the report store without bound."""
    state, feed, clock = make_state(Limits(max_services=3))
    reports = DrainReports(state, clock=clock, max_services=3)
    for index in range(10):
        shutdown: dict[str, Any] = {
            "type": "shutdown",
            "phase": "stopped",
            "signals": [{"signal": "SIGTERM", "at": NOW + index}],
            "steps": {},
            "ready": None,
            "ready_changed": None,
            "health": {},
            "listeners": {},
            "exited": NOW + index + 1,
            "exit_code": 0,
        }
        feed.send(f"p{index}", shutdown, service=f"svc-{index}")
        reports.refresh()
        clock.now += 1000
        state.expire(retention_seconds=300, service_retention_seconds=300)
    kept = {report.service for report in reports.reports(everything=True)}
    assert kept == {"svc-7", "svc-8", "svc-9"}
    assert set(reports.by_service()) == kept


def test_name_caps_admit_until_full_and_count_the_rest() -> None:
    """admit() keeps known names, admits new ones while both caps have room, else other."""
    caps = SeriesCaps(max_label_length=16)
    total = TotalCap(3, "channels_total")
    first, second = NameCap(2, "channels", total), NameCap(2, "channels", total)
    assert [caps.admit(first, name) for name in ("a", "b", "c", "a")] == ["a", "b", OTHER, "a"]
    assert [caps.admit(second, name) for name in ("a", "b")] == ["a", OTHER]
    first.release()
    assert caps.admit(second, "b") == "b"
    assert caps.label("x" * 40) == "x" * 15 + "\u2026"
    assert caps.counts() | {} == {
        **dict.fromkeys(caps.counts(), 0),
        "channels": 1,
        "channels_total": 1,
        "label_length": 1,
    }
