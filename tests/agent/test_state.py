"""The agent's state: merging cumulative records, folding objects by name, and the caps."""

from __future__ import annotations

import time
from typing import Any

from drainwatch.agent.channel_summary import summarize
from drainwatch.agent.config import Limits
from drainwatch.agent.metrics import StateCollector
from drainwatch.agent.state import OTHER, State
from drainwatch.collectors.sdk_decode import Decoded, Envelope
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.records import channel_record

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def channel(channel_id: int, name: str = "orders", **fields: Any) -> dict[str, Any]:
    return channel_record(channel_id, name, **{"created": NOW - 60, **fields})


class Feeder:
    """Builds decoded datagrams as if from SDK processes (instance -> next seq)."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.seq: dict[str, int] = {}

    def send(
        self,
        instance: str,
        *records: dict[str, Any],
        service: str | None = "svc",
        seq: int | None = None,
    ) -> None:
        next_seq = seq if seq is not None else self.seq.get(instance, 0) + 1
        self.seq[instance] = next_seq
        envelope = Envelope(service, instance, 100, next_seq, NOW, 0)
        self.state.apply(Decoded(envelope, list(records)))


def make_state(limits: Limits | None = None) -> tuple[State, Feeder, Clock]:
    clock = Clock()
    state = State(
        limits or Limits(), default_service="agent-default", wall_clock=clock, clock=clock
    )
    return state, Feeder(state), clock


def samples(state: State) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state))
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_workers_of_one_service_add_up_under_one_channel_name() -> None:
    """Two processes with channel "orders": counters and depth add, created is the earliest."""
    state, feed, _ = make_state()
    feed.send("worker-a", channel(1, sent=10, depth=2, created=NOW - 50))
    feed.send("worker-b", channel(1, sent=5, depth=1, created=NOW - 70))
    [summary] = summarize(state.services["svc"])
    assert summary.counters["sent"] == 15
    assert summary.depth == 3
    assert summary.capacity == 20
    assert summary.created == NOW - 70
    assert summary.objects == 2
    assert summary.closed is None


def test_a_name_is_closed_only_when_every_live_object_is_closed() -> None:
    """While one worker's channel is open the name has no closed timestamp."""
    state, feed, _ = make_state()
    feed.send("worker-a", channel(1, closed=NOW - 5, residual=3, drained=None, depth=3))
    feed.send("worker-b", channel(1))
    assert summarize(state.services["svc"])[0].closed is None
    feed.send("worker-b", channel(1, closed=NOW - 2, residual=0, drained=NOW - 2))
    [summary] = summarize(state.services["svc"])
    assert summary.closed == NOW - 2
    assert summary.residual == 3
    assert summary.drained is None  # worker-a still holds 3 items


def test_a_late_snapshot_never_moves_counters_or_close_facts_back() -> None:
    """Records are cumulative: older values arriving late are ignored for counters and facts."""
    state, feed, _ = make_state()
    feed.send(
        "a",
        channel(1, sent=10, read_after_close=4, closed=NOW - 1, residual=2, closed_by="task:main"),
    )
    feed.send("a", channel(1, sent=7, read_after_close=1))  # packed earlier, arrived later
    [summary] = summarize(state.services["svc"])
    assert summary.counters["sent"] == 10
    assert summary.counters["read_after_close"] == 4
    assert summary.closed == NOW - 1
    assert summary.residual == 2


def test_collected_channels_keep_counters_and_close_facts_after_the_process_ends() -> None:
    """A "gone" record keeps the final facts visible and counters monotonic."""
    state, feed, _ = make_state()
    feed.send("a", channel(1, sent=50, received=20, depth=30, closed=NOW - 1, residual=30))
    feed.send(
        "a", channel(1, trigger="gone", sent=50, received=20, depth=30, closed=NOW - 1, residual=30)
    )
    [summary] = summarize(state.services["svc"])
    assert summary.objects == 0
    assert summary.counters["sent"] == 50
    assert summary.closed == NOW - 1
    assert summary.residual == 30
    assert summary.depth == 30  # nothing newer replaced it: the final state at exit


def test_churned_short_lived_channels_do_not_grow_memory_or_lose_counts() -> None:
    """Objects over the per-process cap are folded into per-name totals, counts intact."""
    state, feed, _ = make_state(Limits(max_channel_objects_per_instance=10))
    for channel_id in range(1, 101):
        feed.send(
            "a",
            channel(
                channel_id,
                name="per-request",
                sent=1,
                received=1,
                closed=NOW,
                residual=0,
                drained=NOW,
            ),
        )
        feed.send(
            "a",
            channel(
                channel_id,
                name="per-request",
                trigger="gone",
                sent=1,
                received=1,
                closed=NOW,
                residual=0,
                drained=NOW,
            ),
        )
    instance = state.services["svc"].instances["a"]
    assert len(instance.channels) <= 10
    [summary] = summarize(state.services["svc"])
    assert summary.counters["sent"] == 100
    assert state.caps.counts()["channel_objects"] == 90


def test_channel_names_over_the_cap_fold_into_other_and_are_counted() -> None:
    """A storm of unique names keeps the series bounded: extra names become "other"."""
    state, feed, _ = make_state(Limits(max_channels_per_service=5))
    for channel_id in range(1, 21):
        feed.send("a", channel(channel_id, name=f"unique-{channel_id}", sent=1))
    names = [summary.name for summary in summarize(state.services["svc"])]
    assert len(names) == 6 and OTHER in names
    other = next(s for s in summarize(state.services["svc"]) if s.name == OTHER)
    assert other.counters["sent"] == 15
    assert state.caps.counts()["channels"] == 15
    metrics = samples(state)
    assert (
        metrics[
            (
                "drainwatch_agent_series_capped_total",
                (("limit", "channels"), ("service", "agent-default")),
            )
        ]
        == 15
    )


def test_services_over_the_cap_fold_into_other_and_long_labels_are_cut() -> None:
    """Service names are capped in number and label values in length."""
    state, feed, _ = make_state(Limits(max_services=2, max_label_length=16))
    for index in range(4):
        feed.send(f"i{index}", channel(1), service=f"service-{index}")
    feed.send("long", channel(1, name="x" * 100), service="service-0")
    assert sorted(state.services) == [OTHER, "service-0", "service-1"]
    names = {summary.name for summary in summarize(state.services["service-0"])}
    assert {len(name) for name in names} == {6, 16}
    assert state.caps.counts()["services"] == 2
    assert state.caps.counts()["label_length"] == 1


def test_processes_without_a_service_name_take_the_agents() -> None:
    """An SDK that names no service reports under the agent's configured service."""
    state, feed, _ = make_state()
    feed.send("a", channel(1), service=None)
    assert list(state.services) == ["agent-default"]


def test_sequence_gaps_are_counted_as_lost_datagrams() -> None:
    """Datagrams that never arrived show up as gaps in the sender's sequence numbers."""
    state, feed, _ = make_state()
    feed.send("a", channel(1), seq=1)
    feed.send("a", channel(1), seq=5)
    feed.send("a", channel(1), seq=4)  # reordered: not a new gap
    assert state.services["svc"].instances["a"].lost == 3
    metrics = samples(state)
    assert metrics[("drainwatch_sdk_datagrams_lost_total", (("service", "svc"),))] == 3


def test_disconnect_marks_the_process_and_expiry_keeps_counters() -> None:
    """A closed connection marks the process gone; expiry forgets it but not its counts."""
    state, feed, clock = make_state()
    feed.send("a", channel(1, sent=9))
    state.disconnected("a")
    instance = state.services["svc"].instances["a"]
    assert not instance.connected and instance.disconnected_at == NOW
    clock.now += 301
    state.expire(300)
    assert state.services["svc"].instances == {}
    [summary] = summarize(state.services["svc"])
    assert summary.counters["sent"] == 9
    metrics = samples(state)
    assert (
        metrics[("drainwatch_channel_sent_total", (("channel", "orders"), ("service", "svc")))] == 9
    )


def test_health_score_drops_for_blocked_time_misuse_undrained_close_and_double_close() -> None:
    """The documented formula: 100 minus weighted penalties, never below 0."""
    state, feed, _ = make_state()
    feed.send("a", channel(1, name="healthy"))
    feed.send("a", channel(2, name="blocked", oldest_wait={"send": 0.0, "receive": 30.0}))
    feed.send("a", channel(3, name="misused", read_after_close=5, send_after_close=10))
    feed.send("a", channel(4, name="undrained", closed=NOW, residual=4, depth=4))
    feed.send("a", channel(5, name="double", double_close=1, closed=NOW, residual=0, drained=NOW))
    scores = {s.name: s.health_score for s in summarize(state.services["svc"])}
    assert scores == {
        "healthy": 100.0,
        "blocked": 80.0,
        "misused": 70.0,
        "undrained": 80.0,
        "double": 90.0,
    }


def test_scrape_exports_every_contract_channel_metric_with_both_ops() -> None:
    """Each channel series carries service and channel; per-op series carry op."""
    state, feed, _ = make_state()
    feed.send("a", channel(1, closed=time.time(), residual=1, depth=1))
    names = {name for name, _ in samples(state)}
    for expected in (
        "drainwatch_channel_created_timestamp_seconds",
        "drainwatch_channel_closed_timestamp_seconds",
        "drainwatch_channel_depth",
        "drainwatch_channel_capacity",
        "drainwatch_channel_sent_total",
        "drainwatch_channel_received_total",
        "drainwatch_channel_residual_items_at_close",
        "drainwatch_channel_discarded_total",
        "drainwatch_channel_read_after_close_total",
        "drainwatch_channel_send_after_close_total",
        "drainwatch_channel_double_close_total",
        "drainwatch_channel_blocked_waiters",
        "drainwatch_channel_oldest_wait_seconds",
        "drainwatch_channel_wait_seconds_bucket",
        "drainwatch_channel_health_score",
    ):
        assert expected in names, expected
    metrics = samples(state)
    assert (
        metrics[
            (
                "drainwatch_channel_blocked_waiters",
                (("channel", "orders"), ("op", "send"), ("service", "svc")),
            )
        ]
        == 0
    )
    assert (
        "drainwatch_channel_drained_timestamp_seconds",
        (("channel", "orders"), ("service", "svc")),
    ) not in metrics
