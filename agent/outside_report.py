"""Drain reports from the outside view: a service without the SDK, and the outside part of
an SDK process's report.

``OutsideReports`` reads an ``OutsideView`` and gives ``DrainReports`` two things:

- ``reports(now)``: a report for every target lifetime (``Generation``) that began shutting
  down and has no SDK process in it. Its waterfall is what the sidecar saw: each port that
  stopped listening (bracketed by two samples), each probe that started failing, the exit.
- ``augment(report)``: an SDK process's report with an ``outside`` section (port timeline,
  probe transitions, the latest blocked threads and the "last words" stacks) and the rules
  only the outside view can judge: the port order from the socket timeline and a liveness
  probe failing while requests were in flight.

What cannot be seen from outside is left out, never guessed: without the SDK there are no
signals, no request counts, and an exit status is invisible to a process that is not the
target's parent, so ``killed`` stays false and ``exit_code`` null.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from drainwatch.collectors.port_timeline import (
    PortInterval,
    ProcessExit,
    TimelineView,
    health_closed_before_business,
)
from drainwatch.collectors.probes import (
    ProbeStatus,
    Transition,
    liveness_failed_during_drain,
)
from drainwatch.collectors.pyspy_sampler import SamplerSnapshot

from .drain_report import EXIT, LISTENER, STEP, DrainReport, WaterfallStep
from .outside import Generation, OutsideSnapshot, OutsideView
from .shutdown_facts import Listener
from .verdicts import (
    DRAIN_EXCEEDED_BUDGET,
    HEALTH_CLOSED_BEFORE_BUSINESS,
    LIVENESS_FAILED_DURING_DRAIN,
    RULES,
    Violation,
)

SOURCE: Final = "outside"
_MAX_THREADS_SHOWN: Final = 32
_MAX_TRANSITIONS_SHOWN: Final = 32


def is_liveness(status: ProbeStatus) -> bool:
    """A probe whose failure makes the kubelet restart the container."""
    return "live" in status.name.lower()


class OutsideReports:
    """Thread-safe: every call reads one fresh ``OutsideView.snapshot()``."""

    def __init__(self, view: OutsideView, budget_seconds: float) -> None:
        self._view = view
        self._budget = budget_seconds

    def version(self) -> tuple[int, int, int]:
        """Changes whenever something a report shows may have changed."""
        snap = self._view.snapshot()
        words = sum(len(w.threads) + 1 for w in snap.sampler.last_words) if snap.sampler else 0
        transitions = sum(status.transitions_total for status in snap.probes)
        changes = len(snap.timeline.intervals) + len(snap.timeline.exits)
        return (changes + 1000 * len(snap.generations), transitions, words)

    def reports(self, now: float) -> list[tuple[str, DrainReport]]:
        """(key, report) for each target lifetime without the SDK whose shutdown began."""
        snap = self._view.snapshot()
        found: list[tuple[str, DrainReport]] = []
        for generation in snap.generations:
            if generation.sdk_instances:
                continue
            report = self._lifetime_report(snap, generation, now)
            if report is not None:
                found.append((f"outside:{generation.root.pid}:{generation.first_seen}", report))
        return found

    def augment(self, report: DrainReport) -> DrainReport:
        """``report`` with the outside section and the rules the outside view judges."""
        snap = self._view.snapshot()
        generation = next(
            (
                g
                for g in reversed(snap.generations)
                if report.instance in g.sdk_instances or report.pid in g.pids
            ),
            None,
        )
        if generation is None:
            return report
        origin = report.origin
        ended = report.ended
        found = {violation.rule for violation in report.violations}
        extra: list[Violation] = []
        if report.complete and HEALTH_CLOSED_BEFORE_BUSINESS not in found:
            order = _port_order(snap.timeline, generation, origin)
            if order is not None:
                extra.append(order)
        if report.complete and LIVENESS_FAILED_DURING_DRAIN not in found and origin is not None:
            liveness = _liveness(snap, report, origin, ended)
            if liveness is not None:
                extra.append(liveness)
        violations = tuple(sorted((*report.violations, *extra), key=lambda v: RULES.index(v.rule)))
        return replace(
            report,
            violations=violations,
            rules=report.rules | {violation.rule for violation in extra},
            outside=_section(snap, generation, origin),
        )

    def _lifetime_report(
        self, snap: OutsideSnapshot, generation: Generation, now: float
    ) -> DrainReport | None:
        view = snap.timeline
        origin = self._view.shutdown_began(generation, view)
        if origin is None:
            return None
        exit_ = _exit_of(view, generation)
        ended = exit_.noticed.started if exit_ is not None else generation.gone_noticed
        complete = generation.gone_noticed is not None
        rows, listeners = _listener_rows(view, generation)
        rows += _probe_rows(snap.probes, origin, ended)
        if ended is not None:
            last_alive = exit_.last_alive.finished if exit_ and exit_.last_alive else None
            detail = "the process was gone" + (
                f" (last seen alive {ended - last_alive:.3f} s before)" if last_alive else ""
            )
            rows.append(WaterfallStep("exit", EXIT, ended, ended, None, detail))
        rows.sort(key=lambda row: (row.started, row.finished is None, row.name))
        violations: list[Violation] = []
        if complete:
            order = _port_order(view, generation, origin)
            if order is not None:
                violations.append(order)
        took = (ended if ended is not None else now) - origin
        if took > self._budget:
            violations.append(
                Violation(
                    DRAIN_EXCEEDED_BUDGET,
                    f"the target took {took:.1f} s from the first sign of shutdown seen from "
                    f"outside to {'its exit' if ended else 'now'}; the budget is "
                    f"{self._budget:g} s, after which Kubernetes sends SIGKILL",
                    origin + self._budget,
                )
            )
        end = ended if ended is not None else now
        return DrainReport(
            service=generation.service,
            instance=f"pid-{generation.root.pid}",
            pid=generation.root.pid,
            phase="stopped" if complete else "stopping",
            complete=complete,
            killed=False,
            origin=origin,
            signals=(),
            exited=ended,
            exit_code=None,
            disconnected=None,
            ended=ended,
            readiness_off=None,
            budget_seconds=self._budget,
            drain_seconds=max(0.0, end - origin),
            shutdown_seconds=max(0.0, end - origin),
            steps=tuple(rows),
            listeners=tuple(listeners),
            inflight_at_exit=None,
            inflight_at_exit_source=None,
            requests=(),
            requests_counted_from="none",
            residual_channels=(),
            violations=tuple(violations),
            updated=now,
            rules=frozenset(v.rule for v in violations),
            outside=_section(snap, generation, origin),
            source=SOURCE,
        )


# -- pieces -------------------------------------------------------------------------------------


def _belongs(interval: PortInterval, generation: Generation) -> bool:
    """The port interval overlaps this lifetime of the target."""
    closed = interval.closed
    if closed is not None and closed.finished < generation.first_seen - 1.0:
        return False
    gone = generation.gone_noticed
    return gone is None or interval.opened.started <= gone


def _exit_of(view: TimelineView, generation: Generation) -> ProcessExit | None:
    exits = [item for item in view.exits if item.id == generation.root]
    return exits[-1] if exits else None


def _listener_rows(
    view: TimelineView, generation: Generation
) -> tuple[list[WaterfallStep], list[Listener]]:
    rows: list[WaterfallStep] = []
    listeners: list[Listener] = []
    for interval in view.intervals:
        if not _belongs(interval, generation):
            continue
        role = view.roles.role(interval.port)
        name = f"port {interval.port}"
        closed = interval.closed
        listeners.append(
            Listener(
                name,
                role,
                interval.port,
                interval.opened.started,
                None,
                None if closed is None else closed.started,
            )
        )
        if closed is None or interval.closed_by_exit:
            continue
        rows.append(
            WaterfallStep(
                name,
                LISTENER,
                interval.last_seen.started,
                closed.finished,
                None,
                "stopped listening between two samples "
                f"{closed.finished - interval.last_seen.started:.3f} s apart",
                role,
                interval.port,
            )
        )
    return rows, listeners


def _probe_rows(
    probes: tuple[ProbeStatus, ...], origin: float, ended: float | None
) -> list[WaterfallStep]:
    """Each failure of a probe since the shutdown began, until it recovered or the exit."""
    rows: list[WaterfallStep] = []
    for status in probes:
        ordered = sorted(status.transitions, key=lambda item: item.at)
        for index, item in enumerate(ordered):
            if item.ok or item.at < origin - 1.0:
                continue
            recovered = next((t.at for t in ordered[index + 1 :] if t.ok), ended)
            rows.append(
                WaterfallStep(
                    f"probe {status.name} failing", STEP, item.at, recovered, False, item.detail
                )
            )
    return rows


def _port_order(
    view: TimelineView, generation: Generation, origin: float | None
) -> Violation | None:
    verdict = health_closed_before_business(view, since=generation.first_seen - 1.0, origin=origin)
    if not verdict.violated:
        return None
    return Violation(
        HEALTH_CLOSED_BEFORE_BUSINESS,
        f"seen from outside (socket timeline): {verdict.explanation}",
        verdict.at,
    )


def _liveness(
    snap: OutsideSnapshot, report: DrainReport, origin: float, ended: float | None
) -> Violation | None:
    """Liveness failing while requests were in flight, the in-flight count taken from what the
    SDK report says: requests were in flight from the signal until the drain step ended (or,
    without one, until the exit when the exit cut requests off)."""
    inflight: list[tuple[float, int]] = []
    drain = next((step for step in report.steps if step.name == "drain"), None)
    cut = sum((report.inflight_at_exit or {}).values())
    if drain is not None and drain.finished is not None and drain.finished > drain.started:
        inflight = [(drain.started, 1), (drain.finished, 0)]
    elif cut > 0:
        inflight = [(origin, cut)]
    if not inflight:
        return None
    transitions: list[Transition] = [
        item for status in snap.probes if is_liveness(status) for item in status.transitions
    ]
    finding = liveness_failed_during_drain(transitions, (origin, ended), inflight)
    if not finding.violated:
        return None
    return Violation(
        LIVENESS_FAILED_DURING_DRAIN, f"probed by the agent: {finding.explanation}", finding.at
    )


def _offset(at: float | None, origin: float | None) -> float | None:
    if at is None or origin is None or not math.isfinite(at):
        return None
    return round(at - origin, 6)


def _section(snap: OutsideSnapshot, generation: Generation, origin: float | None) -> dict[str, Any]:
    """The ``outside`` part of a report (documented in docs/metrics.md, drain reports)."""
    view = snap.timeline
    exit_ = _exit_of(view, generation)
    sampler = snap.sampler
    section: dict[str, Any] = {
        "target": {
            "pid": generation.root.pid,
            "started": generation.root.create_time,
            "found_by": generation.found_by,
            "pids": sorted(generation.pids),
            "first_seen": generation.first_seen,
            "gone": None
            if generation.gone_noticed is None
            else {
                "reason": generation.gone_reason,
                "noticed": generation.gone_noticed,
                "last_seen_alive": None
                if exit_ is None or exit_.last_alive is None
                else exit_.last_alive.finished,
                "first_seen_gone": None if exit_ is None else exit_.noticed.started,
            },
        },
        "listeners": [
            {
                "port": item.port,
                "role": view.roles.role(item.port),
                "opened": item.opened.started,
                "last_seen": item.last_seen.started,
                "closed": None if item.closed is None else item.closed.started,
                "closed_offset": None
                if item.closed is None
                else _offset(item.closed.started, origin),
                "closed_by_exit": item.closed_by_exit,
            }
            for item in view.intervals
            if _belongs(item, generation)
        ],
        "probes": [_probe_json(status, origin) for status in snap.probes],
        "sampler": None
        if sampler is None
        else {
            "pid": sampler.pid,
            "available": not sampler.unavailable,
            "unavailable": dict(sampler.unavailable),
            "last_result": sampler.last_result,
            "last_sample_at": sampler.last_sample_at,
        },
        "blocked_threads": _blocked_threads(sampler, generation),
        "last_words": []
        if sampler is None
        else [words.to_dict() for words in sampler.last_words if words.pid in generation.pids],
    }
    return section


def _blocked_threads(sampler: SamplerSnapshot | None, generation: Generation) -> list[Any]:
    """The waiting threads of the latest dump of this lifetime: the live sample while it
    runs, the last words once it is gone."""
    if sampler is None:
        return []
    threads = sampler.threads if sampler.pid in generation.pids else ()
    if not threads:
        kept = [words for words in sampler.last_words if words.pid in generation.pids]
        threads = max(kept, key=lambda words: words.captured_at).threads if kept else ()
    return [thread.to_dict() for thread in threads if thread.waiting][:_MAX_THREADS_SHOWN]


def _probe_json(status: ProbeStatus, origin: float | None) -> Mapping[str, Any]:
    return {
        "name": status.name,
        "kind": status.kind,
        "target": status.target,
        "ok": status.ok,
        "transitions": [
            {
                "at": item.at,
                "offset": _offset(item.at, origin),
                "ok": item.ok,
                "detail": item.detail,
            }
            for item in status.transitions[-_MAX_TRANSITIONS_SHOWN:]
        ],
    }
