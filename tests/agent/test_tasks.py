"""The agent's view of tasks, threads and loops: merging, caps, exported series, and what a
drain report keeps of what was alive at the deadline."""

from __future__ import annotations

import time
from typing import Any

from drainwatch.agent.config import Limits
from drainwatch.agent.report_store import DrainReports
from drainwatch.agent.task_metrics import BlockedThread, TaskCollector
from drainwatch.agent.task_state import MAX_STALLS_KEPT, stalls_since
from drainwatch.agent.tasks_json import tasks_document
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.shutdowns import T0, FakeTime, SdkProcess, make_state
from tests.processes import assert_promtool_clean
from tests.records import loop_record, task_wait, thread_wait, threads_record

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def exposition(collector: TaskCollector) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def series(text: str) -> Series:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Series, name: str, **labels: str) -> float | None:
    for (sample, sample_labels), number in found.items():
        if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items()):
            return number
    return None


def test_blocked_tasks_and_longest_waits_are_exported_per_service(clock: FakeTime) -> None:
    """Blocked counts add up over a service's processes; each long wait is a series."""
    state, feed = make_state(clock)
    consumers = [task_wait(f"consumer-{i}", "channel_receive", 3.0 + i, "idle") for i in range(3)]
    feed.send("a", [loop_record(1, *consumers)])
    feed.send("b", [loop_record(1, task_wait("flusher", "lock", 0.5))])
    text = exposition(TaskCollector(state))
    found = series(text)
    assert value(found, "drainwatch_tasks_blocked", reason="channel_receive") == 3
    assert value(found, "drainwatch_tasks_blocked", reason="lock") == 1
    assert value(found, "drainwatch_tasks_blocked", reason="subprocess") == 0  # every reason
    assert value(found, "drainwatch_task_blocked_seconds", task="consumer-2") == 5.0
    assert value(found, "drainwatch_task_blocked_seconds", task="flusher", reason="lock") == 0.5
    assert_promtool_clean(text)


def test_the_longest_waits_are_capped_per_service_and_the_cut_is_counted(clock: FakeTime) -> None:
    """At most max_blocked_tasks series per service; a record longer than that is cut, counted."""
    state, feed = make_state(clock, Limits(max_blocked_tasks=2))
    waits = [task_wait(f"t{i}", "event", float(i)) for i in range(5)]
    feed.send("a", [loop_record(1, *waits)])
    found = series(exposition(TaskCollector(state)))
    exported = sorted(
        dict(labels)["task"]
        for (name, labels) in found
        if name == "drainwatch_task_blocked_seconds"
    )
    assert exported == ["t3", "t4"]
    assert value(found, "drainwatch_tasks_blocked", reason="event") == 5  # all still counted
    assert {k: v for k, v in state.caps.counts().items() if v} == {"tasks": 1}


def test_same_named_tasks_and_threads_stay_distinct_series(clock: FakeTime) -> None:
    """Two tasks (or threads) of one name in two processes are two series, not one."""
    state, feed = make_state(clock)
    feed.send(
        "a",
        [
            loop_record(1, task_wait("worker", "sleep", 2.0)),
            threads_record(thread_wait("pool", "queue_get", 4.0, ident=1)),
        ],
    )
    feed.send(
        "b",
        [
            loop_record(1, task_wait("worker", "sleep", 1.0)),
            threads_record(thread_wait("pool", "queue_get", 3.0, ident=2)),
        ],
    )
    text = exposition(TaskCollector(state))
    found = series(text)
    tasks = sorted(
        dict(labels)["task"]
        for (name, labels) in found
        if name == "drainwatch_task_blocked_seconds"
    )
    assert tasks == ["worker", "worker [4242]"]
    threads = sorted(
        dict(labels)["thread"]
        for (name, labels) in found
        if name == "drainwatch_thread_blocked_seconds"
    )
    assert threads == ["pool", "pool [1002]"]
    assert_promtool_clean(text)


def test_sdk_and_pyspy_threads_share_one_family(clock: FakeTime) -> None:
    """Threads from the SDK (source=sdk) and from py-spy (source=pyspy) are one family."""
    state, feed = make_state(clock)
    feed.send("a", [threads_record(thread_wait("worker", "queue_get", 4.0))])
    collector = TaskCollector(
        state, lambda: ("checkout", [BlockedThread("worker", "queue_get", 3.5)])
    )
    text = exposition(collector)
    assert text.count("# TYPE drainwatch_thread_blocked_seconds gauge") == 1
    found = series(text)
    assert value(found, "drainwatch_thread_blocked_seconds", source="sdk") == 4.0
    assert value(found, "drainwatch_thread_blocked_seconds", source="pyspy") == 3.5


def test_a_reason_this_agent_does_not_know_is_exported_as_other(clock: FakeTime) -> None:
    """A newer SDK's reason is folded into "other" rather than becoming a new label value."""
    state, feed = make_state(clock)
    feed.send("a", [loop_record(1, task_wait("t", "teleport", 1.0))])
    found = series(exposition(TaskCollector(state)))
    assert value(found, "drainwatch_tasks_blocked", reason="other") == 1
    assert value(found, "drainwatch_task_blocked_seconds", task="t") is not None
    assert value(found, "drainwatch_task_blocked_seconds", reason="teleport") is None


def test_long_task_names_are_cut_to_the_label_limit_and_counted(clock: FakeTime) -> None:
    """Task names longer than max_label_length are cut, and each cut is counted."""
    state, feed = make_state(clock, Limits(max_label_length=16))
    feed.send("a", [loop_record(1, task_wait("x" * 100, "sleep", 1.0))])
    found = series(exposition(TaskCollector(state)))
    [task] = [
        dict(labels)["task"]
        for (name, labels) in found
        if name == "drainwatch_task_blocked_seconds"
    ]
    assert len(task) == 16
    assert {k: v for k, v in state.caps.counts().items() if v} == {"label_length": 1}


def test_lag_histogram_never_goes_back_when_loops_and_processes_are_forgotten(
    clock: FakeTime,
) -> None:
    """Loops beyond the cap and forgotten processes keep their lag in the totals."""
    state, feed = make_state(clock, Limits(max_loops_per_instance=2))
    feed.send("a", [loop_record(1, lags=(0.001, 0.002), closed=True)])
    feed.send("a", [loop_record(2, lags=(0.3,))])
    feed.send("a", [loop_record(3, lags=(0.004,))])  # loop 1 (closed) is forgotten
    found = series(exposition(TaskCollector(state)))
    assert value(found, "drainwatch_event_loop_lag_seconds_count") == 4
    assert value(found, "drainwatch_event_loop_lag_max_seconds") == 0.3
    assert {k: v for k, v in state.caps.counts().items() if v} == {"loops": 1}
    clock.now += 1000
    state.expire(retention_seconds=10)
    after = series(exposition(TaskCollector(state)))
    assert value(after, "drainwatch_event_loop_lag_seconds_count") == 4
    assert value(after, "drainwatch_event_loop_lag_max_seconds") == 0  # no live loop


def test_an_older_view_arriving_late_is_ignored(clock: FakeTime) -> None:
    """A loop or threads record sampled before the one kept does not replace it."""
    state, feed = make_state(clock)
    now = time.time()
    feed.send("a", [loop_record(1, task_wait("new", "sleep", 1.0), sampled_at=now)])
    feed.send("a", [loop_record(1, task_wait("old", "sleep", 1.0), sampled_at=now - 5)])
    found = series(exposition(TaskCollector(state)))
    assert value(found, "drainwatch_task_blocked_seconds", task="new") is not None
    assert value(found, "drainwatch_task_blocked_seconds", task="old") is None


def test_a_process_that_went_away_has_no_current_waits(clock: FakeTime) -> None:
    """Gauges of now describe live processes only; the lag histogram stays."""
    state, feed = make_state(clock)
    feed.send(
        "a",
        [
            loop_record(1, task_wait("t", "sleep", 1.0)),
            threads_record(thread_wait("w", "lock", 2.0)),
        ],
    )
    state.disconnected("a")
    found = series(exposition(TaskCollector(state)))
    assert value(found, "drainwatch_tasks_blocked", reason="sleep") == 0
    assert value(found, "drainwatch_task_blocked_seconds") is None
    assert value(found, "drainwatch_thread_blocked_seconds") is None
    assert value(found, "drainwatch_event_loop_lag_seconds_count") == 1


def test_the_tasks_document_copies_what_each_process_reported(clock: FakeTime) -> None:
    """/api/v1/tasks lists per service the loops and threads of each process, as copies."""
    state, feed = make_state(clock)
    feed.send("a", [loop_record(1, task_wait("t", "sleep", 1.0)), threads_record()])
    document = tasks_document(state)
    [service] = document["services"]
    [instance] = service["instances"]
    assert instance["loops"][0]["top"][0]["task"] == "t"
    instance["loops"][0]["top"].clear()  # a copy: the state is untouched
    assert tasks_document(state)["services"][0]["instances"][0]["loops"][0]["top"]
    assert tasks_document(state, "nobody")["services"] == []


def _shutting_down(sdk: SdkProcess, feed: Any, stuck: str) -> None:
    sdk.at(0).note_signal(15)
    feed.send("a", [*sdk.records(), loop_record(1, task_wait(stuck, "channel_receive", 1.0))])


def test_tasks_alive_at_the_drain_deadline_are_kept_in_the_report(
    clock: FakeTime, sdk: SdkProcess
) -> None:
    """Past the budget with the process alive, the report keeps what was still waiting."""
    state, feed = make_state(clock)
    reports = DrainReports(state, budget_seconds=5.0, clock=clock)
    _shutting_down(sdk, feed, "stuck-consumer")
    clock.now = T0 + 1
    reports.refresh()
    assert reports.reports()[0].tasks_at_deadline is None  # before the deadline
    clock.now = T0 + 6
    feed.send("a", [loop_record(1, task_wait("later", "sleep", 1.0))])
    reports.refresh()
    [report] = reports.reports()
    kept = report.to_json()["tasks_at_deadline"]
    assert kept["reason"] == "drain_budget" and kept["deadline"] == T0 + 5
    assert kept["loops"][0]["top"][0]["task"] == "later"
    feed.send("a", [loop_record(1, task_wait("after", "sleep", 1.0))])
    reports.refresh()
    kept_again = reports.reports()[0].to_json()["tasks_at_deadline"]
    assert kept_again["loops"][0]["top"][0]["task"] == "later"  # kept once


def test_a_process_killed_mid_drain_keeps_its_last_tasks(clock: FakeTime, sdk: SdkProcess) -> None:
    """Killed before the deadline: the tasks it last reported are what it died with."""
    state, feed = make_state(clock)
    reports = DrainReports(state, budget_seconds=30.0, clock=clock)
    _shutting_down(sdk, feed, "stuck-consumer")
    clock.now = T0 + 2
    state.disconnected("a")
    reports.refresh()
    [report] = reports.reports()
    assert report.killed
    kept = report.to_json()["tasks_at_deadline"]
    assert kept["reason"] == "killed"
    assert kept["loops"][0]["top"][0]["task"] == "stuck-consumer"


def test_a_process_that_exited_in_time_keeps_nothing(clock: FakeTime, sdk: SdkProcess) -> None:
    """An exit before the deadline: nothing kept the process from exiting."""
    state, feed = make_state(clock)
    reports = DrainReports(state, budget_seconds=30.0, clock=clock)
    _shutting_down(sdk, feed, "consumer")
    sdk.exit(2)
    feed.send("a", sdk.records())
    clock.now = T0 + 3
    reports.refresh()
    assert reports.reports()[0].tasks_at_deadline is None


def test_stalls_are_kept_once_each_finished_and_bounded(clock: FakeTime) -> None:
    """An ongoing stall is replaced by its end; at most the last 32 stalls are kept."""
    state, feed = make_state(clock)
    ongoing = {"at": T0, "seconds": 0.2, "ongoing": True, "stack": ["slow (app.py:3)"]}
    feed.send("a", [loop_record(1, stalls=[ongoing], stalls_total=1)])
    feed.send("a", [loop_record(1, stalls=[{**ongoing, "seconds": 0.7, "ongoing": False}])])
    [stall] = stalls_since(state.services["checkout"].instances["a"].tasks, T0 - 1)
    assert (stall["seconds"], stall["ongoing"], stall["loop"]) == (0.7, False, 1)
    for index in range(40):
        earlier = {**ongoing, "at": T0 + 10 + index, "ongoing": False}
        feed.send("a", [loop_record(1, stalls=[earlier], stalls_total=index + 2)])
    kept = stalls_since(state.services["checkout"].instances["a"].tasks, T0 - 1)
    assert len(kept) == MAX_STALLS_KEPT and kept[-1]["at"] == T0 + 49
