"""Reading a drain report back from its JSON (``DrainReport.to_json``): the state directory.

A report read back is served and exported as it was saved, with ``source`` "restored". The
file is the agent's own, but a disk can be corrupted or a volume shared: every field is
checked, and anything that does not fit raises ``ReportFormatError`` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .drain_report import DrainReport, RequestCounts, WaterfallStep
from .shutdown_facts import Listener
from .verdicts import RULES, Violation

T = TypeVar("T")
_MAX_ITEMS = 10_000
RESTORED = "restored"


class ReportFormatError(ValueError):
    """A saved report that cannot be read back; ``str()`` names the field."""


def _field(doc: Mapping[str, Any], name: str, check: Callable[[object, str], T]) -> T:
    return check(doc.get(name), name)


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ReportFormatError(f"{where}: expected text, got {type(value).__name__}")
    if len(value) > 4096:
        raise ReportFormatError(f"{where}: text of {len(value)} characters, over 4096")
    return value


def _opt_text(value: object, where: str) -> str | None:
    return None if value is None else _text(value, where)


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ReportFormatError(f"{where}: expected a number, got {value!r:.40}")
    return float(value)


def _opt_number(value: object, where: str) -> float | None:
    return None if value is None else _number(value, where)


def _whole(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReportFormatError(f"{where}: expected a whole number, got {value!r:.40}")
    return value


def _opt_whole(value: object, where: str) -> int | None:
    return None if value is None else _whole(value, where)


def _flag(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ReportFormatError(f"{where}: expected true or false, got {value!r:.40}")
    return value


def _opt_flag(value: object, where: str) -> bool | None:
    return None if value is None else _flag(value, where)


def _list(value: object, where: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > _MAX_ITEMS:
        raise ReportFormatError(f"{where}: expected a list")
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise ReportFormatError(f"{where}[{index}]: expected an object")
    return value


def _counts(value: object, where: str) -> dict[str, int]:
    if not isinstance(value, Mapping) or len(value) > _MAX_ITEMS:
        raise ReportFormatError(f"{where}: expected an object of counts")
    return {_text(key, where): _whole(count, f"{where}.{key}") for key, count in value.items()}


def _step(item: Mapping[str, Any], where: str) -> WaterfallStep:
    return WaterfallStep(
        name=_text(item.get("name"), f"{where}.name"),
        kind=_text(item.get("kind"), f"{where}.kind"),
        started=_number(item.get("started"), f"{where}.started"),
        finished=_opt_number(item.get("finished"), f"{where}.finished"),
        ok=_opt_flag(item.get("ok"), f"{where}.ok"),
        detail=_opt_text(item.get("detail"), f"{where}.detail"),
        role=_opt_text(item.get("role"), f"{where}.role"),
        port=_opt_whole(item.get("port"), f"{where}.port"),
    )


def _listener(item: Mapping[str, Any], where: str) -> Listener:
    return Listener(
        name=_text(item.get("name"), f"{where}.name"),
        role=_text(item.get("role"), f"{where}.role"),
        port=_opt_whole(item.get("port"), f"{where}.port"),
        opened=_opt_number(item.get("opened"), f"{where}.opened"),
        stop_started=_opt_number(item.get("stop_started"), f"{where}.stop_started"),
        closed=_opt_number(item.get("closed"), f"{where}.closed"),
    )


def _request(item: Mapping[str, Any], where: str) -> RequestCounts:
    return RequestCounts(
        protocol=_text(item.get("protocol"), f"{where}.protocol"),
        method=_text(item.get("method"), f"{where}.method"),
        active=_whole(item.get("active"), f"{where}.active"),
        started_during_drain=_whole(
            item.get("started_during_drain"), f"{where}.started_during_drain"
        ),
        outcomes=_counts(item.get("outcomes"), f"{where}.outcomes"),
        at_shutdown=None,
        series=_series(item.get("inflight_series"), f"{where}.inflight_series"),
    )


def _series(value: object, where: str) -> tuple[tuple[float, int], ...]:
    """``[[at, active], ...]``; absent in reports saved before the series existed."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > _MAX_ITEMS:
        raise ReportFormatError(f"{where}: expected a list of [time, count] pairs")
    points: list[tuple[float, int]] = []
    for index, point in enumerate(value):
        if not isinstance(point, list) or len(point) != 2:
            raise ReportFormatError(f"{where}[{index}]: expected a [time, count] pair")
        points.append(
            (_number(point[0], f"{where}[{index}][0]"), _whole(point[1], f"{where}[{index}][1]"))
        )
    return tuple(points)


def _violation(item: Mapping[str, Any], where: str) -> Violation:
    rule = _text(item.get("rule"), f"{where}.rule")
    if rule not in RULES:
        raise ReportFormatError(f"{where}.rule: unknown rule {rule!r:.60}")
    return Violation(
        rule,
        _text(item.get("explanation"), f"{where}.explanation"),
        _opt_number(item.get("at"), f"{where}.at"),
    )


def _residual(item: Mapping[str, Any], where: str) -> tuple[str, int, float | None, int | None]:
    return (
        _text(item.get("name"), f"{where}.name"),
        _whole(item.get("depth"), f"{where}.depth"),
        _opt_number(item.get("closed"), f"{where}.closed"),
        _opt_whole(item.get("residual_at_close"), f"{where}.residual_at_close"),
    )


def _each(
    doc: Mapping[str, Any], name: str, read: Callable[[Mapping[str, Any], str], T]
) -> tuple[T, ...]:
    return tuple(
        read(item, f"{name}[{index}]") for index, item in enumerate(_list(doc.get(name), name))
    )


def report_from_json(doc: object) -> DrainReport:
    """The report a saved ``to_json`` document describes, marked ``restored``."""
    if not isinstance(doc, Mapping):
        raise ReportFormatError("the report is not a JSON object")
    signals = tuple(
        (_text(item.get("name"), f"signals[{i}].name"), _number(item.get("at"), f"signals[{i}].at"))
        for i, item in enumerate(_list(doc.get("signals"), "signals"))
    )
    readiness = doc.get("readiness_off")
    readiness_at = (
        _number(readiness.get("at"), "readiness_off.at") if isinstance(readiness, Mapping) else None
    )
    at_exit = doc.get("inflight_at_exit")
    violations = _each(doc, "violations", _violation)
    outside = doc.get("outside")
    if outside is not None and not isinstance(outside, Mapping):
        raise ReportFormatError("outside: expected an object")
    at_deadline = doc.get("tasks_at_deadline")  # absent in reports saved before it existed
    if at_deadline is not None and not isinstance(at_deadline, Mapping):
        raise ReportFormatError("tasks_at_deadline: expected an object")
    return DrainReport(
        service=_field(doc, "service", _text),
        instance=_field(doc, "instance", _text),
        pid=_field(doc, "pid", _whole),
        phase=_field(doc, "phase", _text),
        complete=_field(doc, "complete", _flag),
        killed=_field(doc, "killed", _flag),
        origin=_field(doc, "started", _opt_number),
        signals=signals,
        exited=_field(doc, "exited", _opt_number),
        exit_code=_field(doc, "exit_code", _opt_whole),
        disconnected=_field(doc, "disconnected", _opt_number),
        ended=_field(doc, "ended", _opt_number),
        readiness_off=readiness_at,
        budget_seconds=_field(doc, "budget_seconds", _number),
        drain_seconds=_field(doc, "drain_seconds", _opt_number),
        shutdown_seconds=_field(doc, "shutdown_seconds", _opt_number),
        steps=_each(doc, "steps", _step),
        listeners=_each(doc, "listeners", _listener),
        inflight_at_exit=None if at_exit is None else _counts(at_exit, "inflight_at_exit"),
        inflight_at_exit_source=_field(doc, "inflight_at_exit_source", _opt_text),
        requests=_each(doc, "requests", _request),
        requests_counted_from=_field(doc, "requests_counted_from", _text),
        residual_channels=_each(doc, "channels_with_residual", _residual),
        violations=violations,
        updated=_field(doc, "updated", _number),
        rules=frozenset(violation.rule for violation in violations),
        outside=outside,
        source=RESTORED,
        tasks_at_deadline=at_deadline,
        loop_stalls=tuple(_list(doc.get("loop_stalls"), "loop_stalls")),
    )
