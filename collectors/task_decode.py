"""Validation of the SDK's ``loop`` and ``threads`` records (docs/protocol.md).

Like every record, these come from any process that can write to the ingest socket: each
field is checked for type and range, every list is bounded, and a record that fails any
check is rejected whole (``schema``). Wait reasons are short snake_case words; the agent
folds those it does not know into ``other`` when it exports them, so a newer SDK may add one.
"""

from __future__ import annotations

import re
from typing import Any, Final, TypeGuard

from .decode_values import (
    is_histogram,
    is_int,
    is_optional_text,
    is_seconds,
    is_text,
    is_timestamp,
)

MAX_LISTED: Final = 64  # top waits, sites, threads, frames per stack, reasons
MAX_NAMES: Final = 16  # task names per site
MAX_STALLS: Final = 16
MAX_IDENT: Final = 2**64 - 1  # thread idents are pthread_t values
_REASON: Final = re.compile(r"[a-z][a-z_]{0,31}")


def is_reason(value: object) -> bool:
    return type(value) is str and _REASON.fullmatch(value) is not None


def _is_list(value: object, limit: int = MAX_LISTED) -> TypeGuard[list[Any]]:
    return type(value) is list and len(value) <= limit


def _is_stack(value: object) -> bool:
    return _is_list(value) and all(is_text(frame) for frame in value)


def _is_counts(value: object) -> bool:
    """``{reason: count}`` with at most ``MAX_LISTED`` reasons."""
    return (
        type(value) is dict
        and len(value) <= MAX_LISTED
        and all(is_reason(key) and is_int(count) for key, count in value.items())
    )


def _is_task(entry: object) -> bool:
    return (
        type(entry) is dict
        and is_text(entry.get("task"))
        and is_reason(entry.get("reason"))
        and is_optional_text(entry.get("target"))
        and is_timestamp(entry.get("since"))
        and is_seconds(entry.get("wait"))
        and is_seconds(entry.get("age"))
    )


def _is_named(entry: object) -> bool:
    return (
        type(entry) is dict
        and is_text(entry.get("name"))
        and is_seconds(entry.get("wait"))
        and is_seconds(entry.get("age"))
    )


def _is_site(entry: object) -> bool:
    if type(entry) is not dict:
        return False
    tasks = entry.get("tasks")
    return (
        is_reason(entry.get("reason"))
        and is_optional_text(entry.get("target"))
        and is_int(entry.get("count"), 1)
        and is_seconds(entry.get("oldest"))
        and is_seconds(entry.get("newest"))
        and _is_list(tasks, MAX_NAMES)
        and all(_is_named(task) for task in tasks)
        and _is_stack(entry.get("stack"))
    )


def _is_stall(entry: object) -> bool:
    return (
        type(entry) is dict
        and is_timestamp(entry.get("at"))
        and is_seconds(entry.get("seconds"))
        and type(entry.get("ongoing")) is bool
        and _is_stack(entry.get("stack"))
    )


def check_loop(record: dict[str, Any]) -> bool:
    """A ``loop`` record: one watched event loop's tasks and lag."""
    top, sites, stalls = record.get("top"), record.get("sites"), record.get("stalls")
    return (
        is_int(record.get("id"), 1)
        and is_text(record.get("thread"))
        and type(record.get("running")) is bool
        and type(record.get("closed")) is bool
        and is_timestamp(record.get("sampled_at"))
        and is_int(record.get("tasks"))
        and is_int(record.get("sampled"))
        and _is_counts(record.get("blocked"))
        and _is_list(top)
        and all(_is_task(entry) for entry in top)
        and _is_list(sites)
        and all(_is_site(entry) for entry in sites)
        and is_histogram(record.get("lag"))
        and is_seconds(record.get("lag_max"))
        and is_seconds(record.get("threshold"))
        and is_int(record.get("stalls_total"))
        and _is_list(stalls, MAX_STALLS)
        and all(_is_stall(entry) for entry in stalls)
        and type(record.get("truncated", False)) is bool
    )


def _is_thread(entry: object) -> bool:
    if type(entry) is not dict:
        return False
    native_id = entry.get("native_id")
    return (
        is_text(entry.get("thread"))
        and is_int(entry.get("ident"), 0, MAX_IDENT)
        and (native_id is None or is_int(native_id))
        and is_reason(entry.get("reason"))
        and is_optional_text(entry.get("target"))
        and is_timestamp(entry.get("since"))
        and is_seconds(entry.get("wait"))
        and is_optional_text(entry.get("site"))
        and _is_stack(entry.get("stack"))
    )


def check_threads(record: dict[str, Any]) -> bool:
    """A ``threads`` record: the process's waiting threads as the SDK sees them."""
    top = record.get("top")
    return (
        is_timestamp(record.get("sampled_at"))
        and is_int(record.get("threads"))
        and _is_counts(record.get("waiting"))
        and _is_list(top)
        and all(_is_thread(entry) for entry in top)
        and type(record.get("truncated", False)) is bool
    )
