"""The eight shutdown rules, each with the shutdown that breaks it and a look-alike that
does not, built from the SDK's real ShutdownState and InflightRegistry."""

from __future__ import annotations

from collections.abc import Callable

from drainwatch.agent.shutdown_facts import (
    SETTLE_SECONDS,
    ChannelFacts,
    ProcessFacts,
    is_complete,
)
from drainwatch.agent.verdicts import ORDER_TOLERANCE_SECONDS, RULES, Violation, judge, runbook

from tests.agent.shutdowns import SIGTERM, T0, SdkProcess, good_shutdown

BUDGET = 30.0


def judged(facts: ProcessFacts, at: float = 100.0) -> dict[str, Violation]:
    """The violations at ``T0 + at`` (after the settle time of any exit in these tests)."""
    return {violation.rule: violation for violation in judge(facts, BUDGET, T0 + at)}


def gone(sdk: SdkProcess, **fields: object) -> ProcessFacts:
    """The process's facts once its connection closed (after its exit or a kill)."""
    return sdk.facts(connected=False, disconnected_at=sdk.clock.now, **fields)  # type: ignore[arg-type]


def channel(name: str = "orders", **fields: object) -> ChannelFacts:
    values: dict[str, object] = {
        "owner": None,
        "closed": None,
        "closed_by": None,
        "depth": 0,
        "drained": None,
    }
    values.update(fields)
    return ChannelFacts(name, **values)  # type: ignore[arg-type]


def listeners_open(sdk: SdkProcess) -> None:
    state = sdk.at(0)
    state.listener_opened("grpc", "business", 50051)
    state.listener_opened("health", "health", 8081)
    state.set_ready(True)


# -- the clean shutdown ----------------------------------------------------------------------------


def test_the_checklist_shutdown_breaks_no_rule(sdk: SdkProcess) -> None:
    """Readiness off, propagation wait, awaited stop, health last, nothing left: no verdict."""
    good_shutdown(sdk)
    assert judge(gone(sdk), BUDGET, T0 + 100) == []


def test_every_rule_has_a_runbook_path() -> None:
    """Each of the eight rule names maps to docs/runbooks/<rule>.md, which exists."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert len(RULES) == 8
    for rule in RULES:
        assert (root / runbook(rule)).is_file(), rule


def test_a_running_process_is_not_judged_except_for_the_budget(sdk: SdkProcess) -> None:
    """While the process lives only drain_exceeded_budget can be reported."""
    listeners_open(sdk)
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(2).listener_stop_started("health")
    sdk.at(2).listener_closed("health")
    assert judged(sdk.facts(), at=5) == {}
    assert set(judged(sdk.facts(), at=40)) == {"drain_exceeded_budget"}


def test_an_exited_process_is_judged_after_the_settle_time_or_at_disconnect(
    sdk: SdkProcess,
) -> None:
    """After its exit record the process gets SETTLE_SECONDS to send its final snapshot."""
    listeners_open(sdk)
    sdk.exit(5)
    connected = sdk.facts()
    assert not is_complete(connected, T0 + 5 + SETTLE_SECONDS / 2)
    assert is_complete(connected, T0 + 5 + SETTLE_SECONDS)
    assert is_complete(gone(sdk), T0 + 5)


# -- health_closed_before_business -----------------------------------------------------------------


def test_health_closed_while_business_still_open_at_exit(sdk: SdkProcess) -> None:
    """The post-mortem: /healthz closed first, the business port never closed before exit."""
    listeners_open(sdk)
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(1.5).listener_stop_started("health")
    sdk.at(1.6).listener_closed("health")
    sdk.exit(3)
    violation = judged(gone(sdk))["health_closed_before_business"]
    assert violation.at == T0 + 1.5
    assert "'health'" in violation.explanation and "never closed" in violation.explanation


def test_health_closed_before_the_business_listener_finished_closing(sdk: SdkProcess) -> None:
    """Health began closing while the business stop was still running: a violation."""
    listeners_open(sdk)
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(1.1).set_ready(False)
    sdk.at(2).listener_stop_started("grpc")
    sdk.at(3).listener_stop_started("health")
    sdk.at(3.1).listener_closed("health")
    sdk.at(6).listener_closed("grpc")
    sdk.exit(7)
    violation = judged(gone(sdk))["health_closed_before_business"]
    assert violation.at == T0 + 3
    assert "before business listener 'grpc'" in violation.explanation


def test_health_step_started_before_business_closed_counts_as_health_closing(
    sdk: SdkProcess,
) -> None:
    """The coordinator's health_closed step is a health close too."""
    listeners_open(sdk)
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(1.1).set_ready(False)
    sdk.at(2).listener_stop_started("grpc")
    sdk.at(2.5).step_started("health_closed")
    sdk.at(2.6).step_finished("health_closed")
    sdk.at(4).listener_closed("grpc")
    sdk.exit(5)
    assert judged(gone(sdk))["health_closed_before_business"].at == T0 + 2.5


def test_health_closed_after_every_business_listener_is_fine(sdk: SdkProcess) -> None:
    """Business closed first, health after: no health_closed_before_business."""
    listeners_open(sdk)
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(1.1).set_ready(False)
    sdk.at(2).listener_stop_started("grpc")
    sdk.at(3).listener_closed("grpc")
    sdk.at(3).step_started("health_closed")
    sdk.at(3.5).listener_closed("health")
    sdk.exit(4)
    assert "health_closed_before_business" not in judged(gone(sdk))


def test_a_business_close_noted_a_moment_late_by_another_thread_is_fine(sdk: SdkProcess) -> None:
    """stop().wait() returned, then health stopped; the business close was noted 0.2 ms
    later by the integration's thread (seen with sync gRPC): within ORDER_TOLERANCE_SECONDS."""
    listeners_open(sdk)
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(1.1).set_ready(False)
    sdk.at(2).listener_stop_started("grpc")
    sdk.at(3.0).listener_stop_started("health")
    sdk.at(3.0002).listener_closed("grpc")
    sdk.at(3.001).listener_closed("health")
    sdk.exit(3.1)
    assert "health_closed_before_business" not in judged(gone(sdk))
    assert ORDER_TOLERANCE_SECONDS <= 0.1  # a real misordering (seconds) is still caught


def test_health_left_to_the_exit_or_without_business_listeners_is_fine(sdk: SdkProcess) -> None:
    """A health listener closed only by the exit, or a service with no business listener."""
    listeners_open(sdk)
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(1.1).set_ready(False)
    sdk.exit(2)
    assert "health_closed_before_business" not in judged(gone(sdk))
    health_only = sdk.at(3)
    health_only.reset()
    health_only.listener_opened("health", "health", 8081)
    sdk.at(4).listener_closed("health")
    sdk.exit(5)
    assert "health_closed_before_business" not in judged(gone(sdk))


# -- readiness_not_failed_first -----------------------------------------------------------------


def test_business_stop_without_readiness_off(sdk: SdkProcess) -> None:
    """The business port began closing while readiness was still on."""
    listeners_open(sdk)
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(1.2).listener_stop_started("grpc")
    sdk.at(2).listener_closed("grpc")
    sdk.exit(3)
    violation = judged(gone(sdk))["readiness_not_failed_first"]
    assert violation.at == T0 + 1.2
    assert "never turned off" in violation.explanation


def test_readiness_turned_off_only_after_the_business_stop(sdk: SdkProcess) -> None:
    """Readiness went off, but after the listener stop had begun: still a violation."""
    listeners_open(sdk)
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(1.2).listener_stop_started("grpc")
    sdk.at(1.5).set_ready(False)
    sdk.at(2).listener_closed("grpc")
    sdk.exit(3)
    assert "turned off only at +0.50 s" in (
        judged(gone(sdk))["readiness_not_failed_first"].explanation
    )


def test_readiness_off_by_step_or_by_ready_flag_before_the_stop_is_fine(
    spawn: Callable[[], SdkProcess],
) -> None:
    """Either a readiness_off step or ready=False earlier than the first business stop."""
    by_step, by_flag = spawn(), spawn()
    for process in (by_step, by_flag):
        process.at(0).listener_opened("grpc", "business", 50051)
        process.at(1).note_signal(SIGTERM)
    by_step.at(1.1).step_started("readiness_off")  # what the coordinator reports first
    by_flag.at(1.1).set_ready(False)  # never declared ready before: only the flag changes
    assert "readiness_off" not in by_flag.state.steps
    for process in (by_step, by_flag):
        process.at(2).listener_stop_started("grpc")
        process.at(2.5).listener_closed("grpc")
        process.exit(3)
        assert "readiness_not_failed_first" not in judged(gone(process))


def test_signalled_exit_of_a_ready_service_without_readiness_off(sdk: SdkProcess) -> None:
    """No listener stop at all, but the serving process exited after SIGTERM still ready."""
    sdk.at(0).set_ready(True)
    sdk.at(1).note_signal(SIGTERM)
    sdk.exit(2)
    violation = judged(gone(sdk))["readiness_not_failed_first"]
    assert violation.at == T0 + 2
    assert "after SIGTERM" in violation.explanation


def test_a_worker_without_listeners_or_readiness_is_not_judged_on_readiness(
    sdk: SdkProcess,
) -> None:
    """A queue worker that never declared readiness exits on SIGTERM: nothing to fail first."""
    sdk.at(1).note_signal(SIGTERM)
    sdk.exit(2)
    assert judged(gone(sdk)) == {}


def test_a_plain_exit_without_signal_or_stop_is_not_judged_on_readiness(sdk: SdkProcess) -> None:
    """A ready process that simply ends (no signal, no listener stop) breaks no rule."""
    sdk.at(0).set_ready(True)
    sdk.exit(2)
    assert judged(gone(sdk)) == {}


# -- exited_before_stop_completed ----------------------------------------------------------------


def test_exit_while_a_listener_stop_was_still_running(sdk: SdkProcess) -> None:
    """The unawaited GracefulStop: the stop began, the process exited before it closed."""
    listeners_open(sdk)
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(1.1).set_ready(False)
    sdk.at(2).listener_stop_started("grpc")
    sdk.exit(2.1)
    violation = judged(gone(sdk))["exited_before_stop_completed"]
    assert violation.at == T0 + 2.1
    assert "business listener 'grpc'" in violation.explanation
    assert "1 stop(s)" in violation.explanation  # the listener's own step is not counted twice


def test_kill_while_a_component_step_was_running(sdk: SdkProcess) -> None:
    """SIGKILL (disconnect, no exit record) in the middle of a component's stop."""
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(1.1).step_started("db-pool", detail="timeout=5s")
    sdk.at(9)
    violation = judged(gone(sdk))["exited_before_stop_completed"]
    assert "was killed" in violation.explanation
    assert "step 'db-pool'" in violation.explanation


def test_only_the_drain_and_liveness_markers_open_at_a_kill_is_not_a_cut_stop(
    sdk: SdkProcess,
) -> None:
    """The drain step and the liveness_failed marker never count as stops."""
    sdk.at(1).note_signal(SIGTERM)  # opens the drain step
    sdk.at(2).step_started("liveness_failed", detail="/healthz 503")
    sdk.at(3)
    assert "exited_before_stop_completed" not in judged(gone(sdk))


def test_every_stop_finished_before_exit_is_fine(sdk: SdkProcess) -> None:
    """Steps and listener stops that all finished: no exited_before_stop_completed."""
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(1.1).step_started("db-pool")
    sdk.at(1.5).step_finished("db-pool", ok=False)
    sdk.exit(2)
    assert "exited_before_stop_completed" not in judged(gone(sdk))


# -- inflight_at_exit ------------------------------------------------------------------------------


def test_requests_active_at_exit_come_from_the_exit_record(sdk: SdkProcess) -> None:
    """The SDK's exit record counts active plus aborted requests per protocol."""
    sdk.start("grpc", "/pay.Payments/Charge", 2)
    sdk.at(1).note_signal(SIGTERM)
    aborted = sdk.start("http", "POST /refunds")
    sdk.finish(aborted, "aborted_at_shutdown")
    sdk.exit(2)
    violation = judged(gone(sdk))["inflight_at_exit"]
    assert violation.explanation.startswith("3 request(s)")
    assert "grpc 2, http 1" in violation.explanation


def test_a_killed_process_is_judged_on_its_last_report(sdk: SdkProcess) -> None:
    """Without an exit record, the last active + aborted_at_shutdown counts decide."""
    sdk.start("grpc", "/pay.Payments/Charge")
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(31)
    violation = judged(gone(sdk))["inflight_at_exit"]
    assert "from its last report" in violation.explanation


def test_cancelled_before_the_shutdown_and_nothing_active_is_fine(sdk: SdkProcess) -> None:
    """Requests cancelled by clients before the shutdown are not cut by it."""
    sdk.finish(sdk.start("grpc", "/pay.Payments/Charge"), "cancelled")
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(2)  # killed with nothing active
    assert "inflight_at_exit" not in judged(gone(sdk))
    sdk.exit(3)
    assert "inflight_at_exit" not in judged(gone(sdk))


# -- drain_exceeded_budget -------------------------------------------------------------------------


def test_exit_later_than_the_budget_after_the_signal(sdk: SdkProcess) -> None:
    """Signal at +1, exit at +32: 31 s > 30 s; the violation is at signal + budget."""
    sdk.at(1).note_signal(SIGTERM)
    sdk.exit(32)
    violation = judged(gone(sdk))["drain_exceeded_budget"]
    assert violation.at == T0 + 1 + BUDGET
    assert "31.0 s after SIGTERM" in violation.explanation


def test_exit_within_the_budget_is_fine(sdk: SdkProcess) -> None:
    """29 s from signal to exit stays inside a 30 s budget."""
    sdk.at(1).note_signal(SIGTERM)
    sdk.exit(30)
    assert "drain_exceeded_budget" not in judged(gone(sdk))


def test_budget_exceeded_live_while_still_draining(sdk: SdkProcess) -> None:
    """A process still shutting down 31 s after the signal is reported before it dies."""
    sdk.at(1).note_signal(SIGTERM)
    assert judged(sdk.facts(), at=20) == {}
    violation = judged(sdk.facts(), at=32)["drain_exceeded_budget"]
    assert "still shutting down 31.0 s" in violation.explanation


def test_a_long_shutdown_without_a_signal_has_no_budget(sdk: SdkProcess) -> None:
    """A shutdown the program began itself (no signal) is not held to the kill budget."""
    sdk.at(1).begin_shutdown()
    sdk.exit(100)
    assert "drain_exceeded_budget" not in judged(gone(sdk), at=200)


# -- liveness_failed_during_drain ------------------------------------------------------------------


def test_liveness_failed_while_requests_were_draining(sdk: SdkProcess) -> None:
    """Liveness failed at +2; the drain only reached zero at +5."""
    requests = sdk.start("grpc", "/pay.Payments/Charge")
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(2).step_started("liveness_failed", detail="/healthz 503")
    sdk.at(5)
    sdk.finish(requests)
    sdk.exit(6)
    violation = judged(gone(sdk))["liveness_failed_during_drain"]
    assert violation.at == T0 + 2
    assert "drain only ended at +4.00 s" in violation.explanation


def test_liveness_failed_and_the_process_killed_with_requests_left(sdk: SdkProcess) -> None:
    """The probe failed mid-drain and the kill cut requests still in flight."""
    sdk.start("grpc", "/pay.Payments/Charge")
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(2).step_started("liveness_failed")
    sdk.at(3)
    assert "liveness_failed_during_drain" in judged(gone(sdk))


def test_liveness_failed_after_the_drain_reached_zero_is_fine(sdk: SdkProcess) -> None:
    """Nothing was in flight any more when liveness failed."""
    requests = sdk.start("grpc", "/pay.Payments/Charge")
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(2)
    sdk.finish(requests)
    sdk.at(3).step_started("liveness_failed")
    sdk.exit(4)
    assert "liveness_failed_during_drain" not in judged(gone(sdk))


def test_liveness_failed_during_an_empty_drain_is_fine(sdk: SdkProcess) -> None:
    """No request during the whole drain (it ended at the exit with nothing in flight)."""
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(2).step_started("liveness_failed")
    sdk.exit(4)
    assert "liveness_failed_during_drain" not in judged(gone(sdk))


# -- residual_items_at_exit ------------------------------------------------------------------------


def test_items_left_in_a_channel_at_exit(sdk: SdkProcess) -> None:
    """A closed channel still holding 3 items (not drained) when the process exited."""
    sdk.exit(2)
    facts = gone(sdk, channels=(channel(closed=T0 + 1, depth=3), channel("idle")))
    violation = judged(facts)["residual_items_at_exit"]
    assert "'orders' (3 item(s), closed at" in violation.explanation


def test_items_left_in_an_open_channel_count_too(sdk: SdkProcess) -> None:
    """An open channel with buffered items at exit loses them just the same."""
    sdk.exit(2)
    violation = judged(gone(sdk, channels=(channel(depth=2),)))["residual_items_at_exit"]
    assert "never closed" in violation.explanation


def test_a_channel_that_drained_before_exit_is_fine(sdk: SdkProcess) -> None:
    """Residual at close, but consumers drained it before the exit."""
    sdk.exit(2)
    drained = channel(closed=T0 + 1, depth=0, drained=T0 + 1.5)
    assert "residual_items_at_exit" not in judged(gone(sdk, channels=(drained,)))


# -- close_by_non_owner ----------------------------------------------------------------------------


def test_a_channel_closed_by_someone_else_than_its_owner(sdk: SdkProcess) -> None:
    """owner=producer, closed by task:consumer."""
    sdk.exit(2)
    wrong = channel(owner="producer", closed=T0 + 1, closed_by="task:consumer", drained=T0 + 1)
    violation = judged(gone(sdk, channels=(wrong,)))["close_by_non_owner"]
    assert violation.at == T0 + 1
    assert "'task:consumer'" in violation.explanation


def test_the_owner_may_close_as_a_task_a_thread_or_by_name(sdk: SdkProcess) -> None:
    """task:OWNER, thread:OWNER and OWNER itself are the owner; no owner means no rule."""
    sdk.exit(2)
    fine = tuple(
        channel(f"c{index}", owner="producer", closed=T0 + 1, closed_by=closer, drained=T0 + 1)
        for index, closer in enumerate(("task:producer", "thread:producer", "producer"))
    )
    unowned = channel("free", closed=T0 + 1, closed_by="task:anyone", drained=T0 + 1)
    assert judged(gone(sdk, channels=(*fine, unowned))) == {}


def test_violations_come_in_rule_order(sdk: SdkProcess) -> None:
    """judge() lists violations in the documented RULES order."""
    listeners_open(sdk)
    sdk.start("grpc", "/pay.Payments/Charge")
    sdk.at(1).note_signal(SIGTERM)
    sdk.at(1.5).listener_stop_started("health")
    sdk.at(1.6).listener_closed("health")
    sdk.at(2).listener_stop_started("grpc")
    sdk.exit(40)
    rules = [violation.rule for violation in judge(gone(sdk), BUDGET, T0 + 100)]
    assert rules == [
        "health_closed_before_business",
        "readiness_not_failed_first",
        "exited_before_stop_completed",
        "inflight_at_exit",
        "drain_exceeded_budget",
    ]
