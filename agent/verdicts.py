"""Judging one process's shutdown: which rules it broke, when, and why.

Pure functions over what the agent knows of one SDK process: its merged cumulative
``shutdown`` record, its in-flight counters, its channels, whether its connection is still
open, and the clock. Nothing here touches the agent's state or lock; ``drain_report``
copies the facts out under the lock and calls ``judge``.

A rule is judged once the shutdown is complete (the process reported its exit and had a
moment to send its final snapshot, or its connection closed, or it is being forgotten),
except ``drain_exceeded_budget``, which is also judged while the shutdown is running so
an alert can fire before the kill. Each rule has a runbook in ``docs/runbooks/<rule>.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .shutdown_facts import (
    DRAIN_STEP,
    HEALTH_CLOSED_STEP,
    LIVENESS_FAILED_STEP,
    ProcessFacts,
    first_signal,
    inflight_at_exit,
    is_complete,
    is_shutting_down,
    listeners,
    readiness_off_at,
    shutdown_began,
    steps,
    timestamp,
)

HEALTH_CLOSED_BEFORE_BUSINESS: Final = "health_closed_before_business"
READINESS_NOT_FAILED_FIRST: Final = "readiness_not_failed_first"
EXITED_BEFORE_STOP_COMPLETED: Final = "exited_before_stop_completed"
INFLIGHT_AT_EXIT: Final = "inflight_at_exit"
DRAIN_EXCEEDED_BUDGET: Final = "drain_exceeded_budget"
LIVENESS_FAILED_DURING_DRAIN: Final = "liveness_failed_during_drain"
RESIDUAL_ITEMS_AT_EXIT: Final = "residual_items_at_exit"
CLOSE_BY_NON_OWNER: Final = "close_by_non_owner"
RULES: Final = (
    HEALTH_CLOSED_BEFORE_BUSINESS,
    READINESS_NOT_FAILED_FIRST,
    EXITED_BEFORE_STOP_COMPLETED,
    INFLIGHT_AT_EXIT,
    DRAIN_EXCEEDED_BUDGET,
    LIVENESS_FAILED_DURING_DRAIN,
    RESIDUAL_ITEMS_AT_EXIT,
    CLOSE_BY_NON_OWNER,
)

# Listener events come from different threads (an integration's watcher thread notes a
# close a moment after the application moved on): a health close less than this before
# the last business close is not an ordering mistake.
ORDER_TOLERANCE_SECONDS: Final = 0.1
# Steps that mark a moment or a whole phase rather than one stop that can be cut off.
_NOT_A_STOP: Final = frozenset({DRAIN_STEP, LIVENESS_FAILED_STEP})
_LISTED: Final = 5


def runbook(rule: str) -> str:
    """Where the runbook of ``rule`` lives in the repository."""
    return f"docs/runbooks/{rule}.md"


# An explanation quotes names a target sent (up to 1024 characters each); a report must stay
# readable by report_json, which takes text of at most 4096 characters.
MAX_EXPLANATION_CHARS: Final = 2000


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    explanation: str
    at: float | None  # Unix seconds: when it happened

    def __post_init__(self) -> None:
        if len(self.explanation) > MAX_EXPLANATION_CHARS:
            cut = self.explanation[: MAX_EXPLANATION_CHARS - 1] + "\u2026"
            object.__setattr__(self, "explanation", cut)


def _offset(time: float | None, origin: float | None) -> str:
    if time is None:
        return "at an unknown time"
    if origin is None:
        return "at the start"
    return f"at {time - origin:+.2f} s"


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown if len(items) <= _LISTED else f"{shown} and {len(items) - _LISTED} more"


# -- the rules --------------------------------------------------------------------------------


def _health_closed_before_business(facts: ProcessFacts, origin: float | None) -> Violation | None:
    business = [item for item in listeners(facts) if item.role == "business"]
    if not business:
        return None
    closings: list[tuple[float, str]] = []
    for item in listeners(facts):
        began = item.stop_started or item.closed
        if item.role == "health" and began is not None:
            closings.append((began, item.describe))
    health_step = steps(facts).get(HEALTH_CLOSED_STEP)
    started = timestamp(health_step, "started")
    if started is not None:
        closings.append((started, "the health_closed step"))
    if not closings:
        return None
    began, what = min(closings)
    still_open = [item for item in business if item.closed is None]
    if still_open:
        return Violation(
            HEALTH_CLOSED_BEFORE_BUSINESS,
            f"{what} began closing {_offset(began, origin)} while "
            f"{still_open[0].describe} never closed before the process ended: liveness "
            "probes fail while business traffic is still being served",
            began,
        )
    last = max(business, key=lambda item: item.closed or 0.0)
    if last.closed is not None and began < last.closed - ORDER_TOLERANCE_SECONDS:
        return Violation(
            HEALTH_CLOSED_BEFORE_BUSINESS,
            f"{what} began closing {_offset(began, origin)}, before {last.describe} closed "
            f"{_offset(last.closed, origin)}: the health endpoint must close last",
            began,
        )
    return None


def _readiness_not_failed_first(facts: ProcessFacts, origin: float | None) -> Violation | None:
    shutdown = facts.shutdown
    if shutdown is None:
        return None
    business = [item for item in listeners(facts) if item.role == "business"]
    off = readiness_off_at(facts)
    stops = [
        (began, item)
        for item in business
        if (began := item.stop_started or item.closed) is not None
    ]
    late = "was never turned off" if off is None else f"was turned off only {_offset(off, origin)}"
    if stops:
        began, first = min(stops, key=lambda pair: pair[0])
        if off is None or off > began:
            return Violation(
                READINESS_NOT_FAILED_FIRST,
                f"{first.describe} began stopping {_offset(began, origin)} but readiness "
                f"{late}: load balancers kept sending new requests to a closing port",
                began,
            )
        return None
    signal = first_signal(facts)
    ended = facts.ended_at
    serves_traffic = bool(business) or shutdown.get("ready") is not None or off is not None
    if signal is None or ended is None or not serves_traffic:
        return None
    if off is None or off > ended:
        return Violation(
            READINESS_NOT_FAILED_FIRST,
            f"the process {facts.how_it_ended} {_offset(ended, origin)} after {signal[0]} "
            f"but readiness {late}: endpoints kept routing to it until it vanished",
            ended,
        )
    return None


def _exited_before_stop_completed(facts: ProcessFacts, origin: float | None) -> Violation | None:
    ended = facts.ended_at
    if ended is None or facts.shutdown is None:
        return None
    unfinished: list[tuple[float, str]] = []
    named = set()
    for item in listeners(facts):
        if item.stop_started is not None and item.closed is None:
            named.add(item.name)
            unfinished.append(
                (
                    item.stop_started,
                    f"{item.describe} (stop began {_offset(item.stop_started, origin)})",
                )
            )
    for name, step in steps(facts).items():
        started = timestamp(step, "started")
        if name in _NOT_A_STOP or name in named or started is None:
            continue
        if step.get("finished") is None:
            unfinished.append((started, f"step {name!r} (began {_offset(started, origin)})"))
    if not unfinished:
        return None
    unfinished.sort()
    return Violation(
        EXITED_BEFORE_STOP_COMPLETED,
        f"the process {facts.how_it_ended} {_offset(ended, origin)} before "
        f"{len(unfinished)} stop(s) completed: {_listing([what for _, what in unfinished])}; "
        "a stop that is started but never awaited cuts off what it was draining",
        ended,
    )


def _inflight_at_exit(facts: ProcessFacts, origin: float | None) -> Violation | None:
    counted = inflight_at_exit(facts)
    if counted is None:
        return None
    per_protocol, source = counted
    total = sum(per_protocol.values())
    if total <= 0:
        return None
    parts = [f"{protocol} {count}" for protocol, count in sorted(per_protocol.items()) if count]
    where = "" if source == "exit_record" else " (from its last report: it left no exit record)"
    return Violation(
        INFLIGHT_AT_EXIT,
        f"{total} request(s) were still in flight or aborted by the shutdown when the process "
        f"{facts.how_it_ended} {_offset(facts.ended_at, origin)}{where}: {', '.join(parts)}",
        facts.ended_at,
    )


def _drain_exceeded_budget(
    facts: ProcessFacts, origin: float | None, budget: float, now: float
) -> Violation | None:
    signal = first_signal(facts)
    if signal is None:
        return None
    name, at = signal
    ended = facts.ended_at
    took = (ended if ended is not None else now) - at
    if took <= budget:
        return None
    if ended is None:
        text = f"still shutting down {took:.1f} s after {name}"
    else:
        text = f"the process {facts.how_it_ended} {took:.1f} s after {name}"
    return Violation(
        DRAIN_EXCEEDED_BUDGET,
        f"{text}; the budget is {budget:g} s (terminationGracePeriodSeconds minus preStop), "
        "after which Kubernetes sends SIGKILL",
        at + budget,
    )


def _liveness_failed_during_drain(facts: ProcessFacts, origin: float | None) -> Violation | None:
    all_steps = steps(facts)
    failed = timestamp(all_steps.get(LIVENESS_FAILED_STEP), "started")
    drain = all_steps.get(DRAIN_STEP)
    # Without a drain step (readiness went off, no signal yet) the drain runs from the
    # start of the shutdown and ends with the process.
    drain_started = timestamp(drain, "started") if drain is not None else origin
    if failed is None or drain_started is None or drain_started > failed:
        return None
    drain_finished = timestamp(drain, "finished")
    if drain is not None and drain_finished is not None:
        if drain_finished <= failed:
            return None  # the drain had already reached zero
        if drain_finished == facts.exited and drain.get("ok") is True:
            return None  # nothing was in flight during the whole drain
        why = f"the drain only ended {_offset(drain_finished, origin)}"
    else:
        counted = inflight_at_exit(facts)
        cut = sum(counted[0].values()) if counted is not None else 0
        if cut <= 0:
            return None
        why = f"{cut} request(s) were still in flight when the process went away"
    return Violation(
        LIVENESS_FAILED_DURING_DRAIN,
        f"liveness failed {_offset(failed, origin)} while requests were in flight ({why}): "
        "the kubelet restarts or kills a container whose liveness fails, cutting the drain",
        failed,
    )


def _residual_items_at_exit(facts: ProcessFacts, origin: float | None) -> Violation | None:
    ended = facts.ended_at
    left = [channel for channel in facts.channels if channel.depth > 0 and channel.drained is None]
    if ended is None or not left:
        return None
    left.sort(key=lambda channel: (-channel.depth, channel.name))
    described = [
        f"{channel.name!r} ({channel.depth} item(s), "
        + (
            "never closed)"
            if channel.closed is None
            else f"closed {_offset(channel.closed, origin)})"
        )
        for channel in left
    ]
    total = sum(channel.depth for channel in left)
    return Violation(
        RESIDUAL_ITEMS_AT_EXIT,
        f"{total} item(s) were still buffered in {len(left)} channel(s) when the process "
        f"{facts.how_it_ended} {_offset(ended, origin)}: {_listing(described)}",
        ended,
    )


def _close_by_non_owner(facts: ProcessFacts, origin: float | None) -> Violation | None:
    wrong = [
        channel
        for channel in facts.channels
        if channel.owner
        and channel.closed_by
        and channel.closed_by
        not in (channel.owner, f"task:{channel.owner}", f"thread:{channel.owner}")
    ]
    if not wrong:
        return None
    wrong.sort(key=lambda channel: channel.closed or 0.0)
    described = [
        f"{channel.name!r} (owner {channel.owner!r}) closed by {channel.closed_by!r} "
        f"{_offset(channel.closed, origin)}"
        for channel in wrong
    ]
    return Violation(
        CLOSE_BY_NON_OWNER,
        f"{len(wrong)} channel(s) closed by someone other than their declared owner: "
        f"{_listing(described)}",
        wrong[0].closed,
    )


_AT_COMPLETION: Final[tuple[Callable[[ProcessFacts, float | None], Violation | None], ...]] = (
    _health_closed_before_business,
    _readiness_not_failed_first,
    _exited_before_stop_completed,
    _inflight_at_exit,
    _liveness_failed_during_drain,
    _residual_items_at_exit,
    _close_by_non_owner,
)


def judge(facts: ProcessFacts, budget: float, now: float) -> list[Violation]:
    """The rules this process's shutdown broke, in ``RULES`` order.

    Every rule is judged once the shutdown is complete (``is_complete``);
    ``drain_exceeded_budget`` is judged live as well. Never raises on odd input.
    """
    origin = shutdown_began(facts)
    found: list[Violation] = []
    if is_complete(facts, now):
        for rule in _AT_COMPLETION:
            violation = rule(facts, origin)
            if violation is not None:
                found.append(violation)
    if is_shutting_down(facts):
        exceeded = _drain_exceeded_budget(facts, origin, budget, now)
        if exceeded is not None:
            found.append(exceeded)
    found.sort(key=lambda violation: RULES.index(violation.rule))
    return found
