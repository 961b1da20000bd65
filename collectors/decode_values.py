"""Value checks shared by the record decoders (:mod:`.sdk_decode`, :mod:`.task_decode`).

Each check takes a value straight from ``json.loads`` and says whether it has the type and
range the protocol allows (docs/protocol.md). ``bool`` is never a number here, and a
number is never a ``bool``: JSON ``true`` is not 1.
"""

from __future__ import annotations

import math
from typing import Final

from drainwatch._histogram import WAIT_BUCKETS

MAX_STRING_CHARS: Final = 1024
# Timestamps beyond year 2200 or before 2000 are not from a real clock.
MIN_TIMESTAMP: Final = 946_684_800.0
MAX_TIMESTAMP: Final = 7_258_118_400.0
MAX_COUNT: Final = 2**63 - 1
MAX_SECONDS: Final = 1e9
BUCKET_COUNT: Final = len(WAIT_BUCKETS) + 1


def is_int(value: object, low: int = 0, high: int = MAX_COUNT) -> bool:
    return type(value) is int and low <= value <= high


def is_number(value: object, low: float, high: float) -> bool:
    if type(value) is float or type(value) is int:
        return low <= value <= high
    return False


def is_text(value: object, limit: int = MAX_STRING_CHARS) -> bool:
    return type(value) is str and 0 < len(value) <= limit


def is_optional_text(value: object, limit: int = MAX_STRING_CHARS) -> bool:
    return value is None or is_text(value, limit)


def is_timestamp(value: object) -> bool:
    return is_number(value, MIN_TIMESTAMP, MAX_TIMESTAMP)


def is_optional_timestamp(value: object) -> bool:
    return value is None or is_timestamp(value)


def is_one_of(value: object, choices: frozenset[str]) -> bool:
    # Checked as text first: a list or an object is unhashable and must not reach `in`.
    return type(value) is str and value in choices


def is_optional_bool(value: object) -> bool:
    # By type: 0 and 1 compare equal to False and True.
    return value is None or type(value) is bool


def is_seconds(value: object) -> bool:
    return is_number(value, 0.0, MAX_SECONDS)


def is_histogram(value: object) -> bool:
    """``{"counts": [18 ints], "sum": s, "count": n}`` with ``count`` = the sum of counts."""
    if type(value) is not dict:
        return False
    counts = value.get("counts")
    total = value.get("sum")
    return (
        type(counts) is list
        and len(counts) == BUCKET_COUNT
        and all(is_int(count) for count in counts)
        and is_number(total, 0.0, math.inf)
        and value.get("count") == sum(counts)
    )
