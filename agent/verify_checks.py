"""The checks of ``drainwatch verify-shutdown``: pure functions of one ``Observation``.

Each check says what was seen and, when it failed, the likely fix. A check that could not
be judged (no health endpoint given, no accept window) is ``passed=None`` and does not fail
the run. The agent's own verdicts (``verdicts.py``) are one check among them, so the rules
a sidecar judges in production are the rules a release is gated on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .verdicts import runbook
from .verify_load import LOAD, NEW_CONNECTION, Request
from .verify_run import Observation

IN_FLIGHT_COMPLETED: Final = "in_flight_completed"
NEW_REQUESTS_ACCEPTED: Final = "new_requests_accepted"
HEALTH_UNTIL_BUSINESS_CLOSED: Final = "health_until_business_closed"
EXITED_WITHIN_BUDGET: Final = "exited_within_budget"
EXIT_CODE_ZERO: Final = "exit_code_zero"
NO_VIOLATIONS: Final = "no_violations"
CHANNELS_DRAINED: Final = "channels_drained"

# The likely fix for each rule of the agent (the runbooks say more).
RULE_FIXES: Final[Mapping[str, str]] = {
    "health_closed_before_business": "close the health listener last, after the business "
    "server has stopped (await server.stop(grace), then the health server)",
    "readiness_not_failed_first": "turn readiness off first (503 from /readyz, or "
    "enter_graceful_shutdown() on the grpc.health.v1 servicer), wait for endpoints to "
    "notice, then stop the business server",
    "exited_before_stop_completed": "await the stop you started: `await server.stop(grace)` "
    "(grpc.aio) or `server.stop(grace).wait()` (sync gRPC), never a task nobody awaits",
    "inflight_at_exit": "let in-flight requests finish before the process exits: stop the "
    "server with a grace period and wait for it",
    "drain_exceeded_budget": "bound every stop with a timeout below the budget, or raise "
    "terminationGracePeriodSeconds to fit the drain",
    "liveness_failed_during_drain": "keep liveness answering 200 until the process exits; "
    "only readiness should fail during a drain",
    "residual_items_at_exit": "drain channels before exit: close the producer side, then let "
    "consumers empty the channel (async for ends once it is closed and empty)",
    "close_by_non_owner": "close a channel from the task that owns (sends to) it, never from a "
    "consumer",
}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool | None  # None: not judged (nothing to judge it by)
    summary: str
    fix: str | None = None
    rules: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        return "SKIP" if self.passed is None else ("PASS" if self.passed else "FAIL")


def _statuses(requests: Iterable[Request]) -> str:
    counts = Counter(request.status for request in requests)
    return ", ".join(f"{status} {count}" for status, count in counts.most_common())


def _offset(observed: Observation, at: float | None) -> str:
    if at is None or observed.signal_at is None:
        return "at an unknown time"
    return f"at {at - observed.signal_at:+.2f} s"


def check_in_flight(observed: Observation) -> Check:
    signal_at = observed.signal_at
    if signal_at is None:
        return Check(IN_FLIGHT_COMPLETED, False, "no signal was sent: the command exited first")
    caught = [
        request
        for request in observed.requests
        if request.kind == LOAD and request.in_flight_at(signal_at)
    ]
    if not caught:
        return Check(
            IN_FLIGHT_COMPLETED,
            False,
            "no request was in flight at the signal, so the drain was not tested",
            "make the requests slower (the handler's work) or raise --concurrency, so that "
            "some are in flight when the signal arrives",
        )
    failed = [request for request in caught if not request.ok]
    if not failed:
        return Check(
            IN_FLIGHT_COMPLETED,
            True,
            f"{len(caught)} request(s) in flight at {observed.options.signal_name} all finished OK",
        )
    return Check(
        IN_FLIGHT_COMPLETED,
        False,
        f"{len(failed)} of {len(caught)} request(s) in flight at {observed.options.signal_name} "
        f"failed ({_statuses(failed)})",
        RULE_FIXES["inflight_at_exit"] + f" ({runbook('inflight_at_exit')})",
    )


def check_new_requests(observed: Observation) -> Check:
    window = observed.options.accept_window
    signal_at = observed.signal_at
    if window <= 0 or signal_at is None:
        return Check(NEW_REQUESTS_ACCEPTED, None, "no accept window (--accept-window 0)")
    fresh = [
        request
        for request in observed.requests
        if request.kind == NEW_CONNECTION and signal_at <= request.started <= signal_at + window
    ]
    if not fresh:
        return Check(
            NEW_REQUESTS_ACCEPTED,
            False,
            f"no new request could be started within {window:g} s after the signal",
            "check that the command keeps running after the signal",
        )
    failed = [request for request in fresh if not request.ok]
    if not failed:
        return Check(
            NEW_REQUESTS_ACCEPTED,
            True,
            f"{len(fresh)} request(s) on new connections within {window:g} s after the signal "
            "all succeeded",
        )
    first = min(failed, key=lambda request: request.started)
    return Check(
        NEW_REQUESTS_ACCEPTED,
        False,
        f"{len(failed)} of {len(fresh)} request(s) on new connections within {window:g} s "
        f"after the signal failed ({_statuses(failed)}), the first started "
        f"{_offset(observed, first.started)}",
        "keep accepting new requests while endpoints and load balancers notice the pod is "
        "going: turn readiness off, wait (a preStop sleep or a propagation wait at least as "
        "long as the accept window), then stop the listener "
        f"({runbook('readiness_not_failed_first')})",
    )


def _last_listening(observed: Observation) -> float | None:
    """The last moment the watch saw a business port listening, after the signal."""
    signal_at = observed.signal_at
    if signal_at is None:
        return None
    seen = [change.last_seen for change in observed.business if change.up]
    return max(seen) if seen and max(seen) >= signal_at else None


def _agent_order_violation(observed: Observation) -> Mapping[str, Any] | None:
    for violation in (observed.report or {}).get("violations") or []:
        if violation.get("rule") == "health_closed_before_business":
            return dict(violation)
    return None


def check_health_order(observed: Observation) -> Check:
    """Health down while a business port still listened: seen by the watch (health is
    checked before the ports in each round, so the order within a round is known) or
    judged by the agent from the SDK's listener records and its socket samples."""
    health = observed.options.health
    signal_at = observed.signal_at
    if signal_at is None:
        return Check(HEALTH_UNTIL_BUSINESS_CLOSED, False, "no signal was sent")
    agent = _agent_order_violation(observed)
    down = next(
        (change for change in observed.health if change.at >= signal_at and not change.up), None
    )
    listened = _last_listening(observed)
    fix = RULE_FIXES["health_closed_before_business"] + (
        f" ({runbook('health_closed_before_business')})"
    )
    rules = ("health_closed_before_business",)
    if health is not None and down is not None and listened is not None and down.at < listened:
        return Check(
            HEALTH_UNTIL_BUSINESS_CLOSED,
            False,
            f"{health.describe} went down {_offset(observed, down.at)} ({down.detail}) while "
            f"a business port was still seen listening {_offset(observed, listened)}: "
            "liveness probes fail while traffic is still served",
            fix,
            rules,
        )
    if agent is not None:
        return Check(
            HEALTH_UNTIL_BUSINESS_CLOSED,
            False,
            f"the agent saw it: {agent.get('explanation')}",
            fix,
            rules,
        )
    if health is None:
        return Check(
            HEALTH_UNTIL_BUSINESS_CLOSED,
            None,
            "no health endpoint given (--health-url or --health-grpc), and the agent saw no "
            "health listener close before a business one",
        )
    went = "stayed up to the end" if down is None else f"went down {_offset(observed, down.at)}"
    return Check(
        HEALTH_UNTIL_BUSINESS_CLOSED,
        True,
        f"{health.describe} {went}, after the business port stopped listening "
        f"({_offset(observed, listened)})",
    )


def _stuck_where(report: Mapping[str, Any] | None) -> str:
    """The waiting threads the agent's py-spy sampler saw last, if any."""
    outside = (report or {}).get("outside") or {}
    parts = []
    threads = [
        thread
        for thread in outside.get("blocked_threads") or []
        if isinstance(thread, Mapping) and not str(thread.get("thread")).startswith("drainwatch-")
    ]
    for thread in threads[:3]:
        if isinstance(thread, Mapping):
            parts.append(
                f"thread {thread.get('thread')} in {thread.get('reason')} at "
                f"{thread.get('site')} for {thread.get('blocked_seconds')} s"
            )
    return "; the agent saw " + "; ".join(parts) if parts else ""


def check_budget(observed: Observation) -> Check:
    budget = observed.options.budget
    signal_at = observed.signal_at
    if signal_at is None:
        return Check(
            EXITED_WITHIN_BUDGET,
            False,
            f"the command exited on its own (code {observed.exit_code}) before the signal",
            "the service must keep running until it is told to stop",
        )
    if observed.killed:
        return Check(
            EXITED_WITHIN_BUDGET,
            False,
            f"still running {budget:g} s after {observed.options.signal_name}: killed with "
            f"SIGKILL, as Kubernetes does at the end of terminationGracePeriodSeconds"
            f"{_stuck_where(observed.report)}",
            RULE_FIXES["drain_exceeded_budget"] + f" ({runbook('drain_exceeded_budget')})",
            ("drain_exceeded_budget",),
        )
    took = (observed.exited_at or signal_at) - signal_at
    return Check(
        EXITED_WITHIN_BUDGET,
        True,
        f"exited {took:.2f} s after {observed.options.signal_name} (budget {budget:g} s)",
    )


def check_exit_code(observed: Observation) -> Check:
    code = observed.exit_code
    if code == 0:
        return Check(EXIT_CODE_ZERO, True, "exit code 0")
    if observed.killed:
        return Check(EXIT_CODE_ZERO, False, "killed with SIGKILL at the budget: no exit code")
    if code is not None and code < 0:
        return Check(
            EXIT_CODE_ZERO,
            False,
            f"ended by signal {-code} instead of exiting",
            "handle the signal: turn it into a graceful shutdown that returns normally",
        )
    return Check(
        EXIT_CODE_ZERO,
        False,
        f"exit code {code}",
        "a clean shutdown returns 0; an exception or sys.exit(1) in the shutdown path shows "
        "up here (see the command's last output below)",
    )


def check_violations(observed: Observation) -> Check:
    report = observed.report
    if report is None:
        return Check(
            NO_VIOLATIONS,
            False,
            "drainwatch saw no shutdown from the command: only Python processes report "
            "under drainwatch run's auto-instrumentation",
            "run a Python service (python server.py, gunicorn, uvicorn...) directly as CMD",
        )
    violations = report.get("violations") or []
    if not violations:
        return Check(NO_VIOLATIONS, True, "the agent found no violation")
    rules = tuple(str(violation.get("rule")) for violation in violations)
    fixes = [
        f"{rule}: {RULE_FIXES.get(rule, 'see the runbook')} ({runbook(rule)})" for rule in rules
    ]
    options = observed.options
    if "readiness_not_failed_first" in rules and options.http and options.readiness is None:
        fixes.append(
            "an HTTP service's readiness is seen through its readiness endpoint's answers: "
            "pass --readiness-url (the URL of its readinessProbe) so it is probed as the "
            "kubelet does"
        )
    return Check(
        NO_VIOLATIONS,
        False,
        f"{len(rules)} violation(s): {', '.join(rules)}",
        "; ".join(fixes),
        rules,
    )


def check_channels(observed: Observation) -> Check:
    report = observed.report
    if report is None:
        return Check(CHANNELS_DRAINED, None, "no drain report to read channels from")
    left = report.get("channels_with_residual") or []
    if not left:
        return Check(CHANNELS_DRAINED, True, "no channel held items at exit")
    described = ", ".join(f"{item.get('name')} ({item.get('depth')} item(s))" for item in left)
    return Check(
        CHANNELS_DRAINED,
        False,
        f"{len(left)} channel(s) still held items at exit: {described}",
        RULE_FIXES["residual_items_at_exit"] + f" ({runbook('residual_items_at_exit')})",
        ("residual_items_at_exit",),
    )


def judge(observed: Observation) -> list[Check]:
    """Every check, in the order the report shows them."""
    return [
        check_in_flight(observed),
        check_new_requests(observed),
        check_health_order(observed),
        check_budget(observed),
        check_exit_code(observed),
        check_violations(observed),
        check_channels(observed),
    ]


def passed(checks: Iterable[Check]) -> bool:
    return all(check.passed is not False for check in checks)
