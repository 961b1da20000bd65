"""The channel families (docs/metrics.md, "Channels") as columns, straight from the state.

These are most of the agent's series: about 56 lines per channel name, so 170,000 for
3,000 names. The objects of each (service, name) are folded as ``channel_summary.fold``
does; a name with one live object and nothing retired (the common case) is read off that
object directly, without building a summary, and every other name goes through ``fold``
itself (``tests/agent/test_exposition.py`` holds both to the same values). The values go
into one column per family, rendered by ``exposition.SeriesBlock``.
"""

from __future__ import annotations

from itertools import accumulate, chain, repeat
from operator import attrgetter, itemgetter
from typing import Final

from drainwatch._histogram import WAIT_BUCKETS

from .channel_summary import ChannelSummary, fold, health_score
from .exposition import Number, Row, SeriesBlock
from .state import ChannelObject, Service, State

BOUNDS: Final = (*(f"{bound:g}" for bound in WAIT_BUCKETS), "+Inf")
_LABELS: Final = ("service", "channel")
_OP_LABELS: Final = ("service", "channel", "op")
_COUNTERS: Final = (
    ("sent", "drainwatch_channel_sent", "Items put into the channel."),
    ("received", "drainwatch_channel_received", "Items got from the channel."),
    (
        "discarded",
        "drainwatch_channel_discarded",
        "Items dropped by an immediate close (close(immediate=True)).",
    ),
    (
        "read_after_close",
        "drainwatch_channel_read_after_close",
        "Receives attempted on a closed, empty channel (a get that raised ChannelClosed).",
    ),
    (
        "send_after_close",
        "drainwatch_channel_send_after_close",
        "Sends attempted on a closed channel, including puts woken by the close.",
    ),
    (
        "double_close",
        "drainwatch_channel_double_close",
        "close() called on an already closed channel.",
    ),
)


Entry = ChannelObject | ChannelSummary
"""A name's values: its single live object, or its summary (same attribute names)."""


def _health(entry: Entry) -> float:
    """The health score, kept on a live object until its inputs change."""
    if isinstance(entry, ChannelSummary):
        return entry.health_score
    counts, oldest = entry.counters, entry.oldest_wait
    misuse = counts["read_after_close"] + counts["send_after_close"]
    undrained = entry.closed is not None and entry.drained is None and (entry.residual or 0) > 0
    send, receive = oldest["send"], oldest["receive"]
    double_closed = counts["double_close"] > 0
    if send or receive or misuse or undrained or double_closed:
        score = health_score(max(send, receive), misuse, undrained, double_closed)
    else:
        score = 100.0
    entry.health = score
    return score


def _wait_lines(entry: Entry) -> tuple[list[Number], list[Number]]:
    """Both histograms of a name as their lines' values, send then receive, kept on a live
    object until its histograms change."""
    lines = histogram_lines(entry.wait["send"]), histogram_lines(entry.wait["receive"])
    if isinstance(entry, ChannelObject):
        entry.wait_lines = lines
    return lines


_NAME: Final = attrgetter("name")
_GONE: Final = attrgetter("gone")
_COUNTS: Final = attrgetter("counters")
_DEPTH: Final = attrgetter("depth")
_CAPACITY: Final = attrgetter("capacity")
_CLOSED: Final = attrgetter("closed")
_CREATED: Final = attrgetter("created")
_BOTH_OPS: Final = itemgetter("send", "receive")


def _per_op(entries: list[Entry], attribute: str) -> list[Number]:
    """Each entry's ``attribute`` (a dict by op), send then receive: the op rows' values."""
    return list(chain.from_iterable(map(_BOTH_OPS, map(attrgetter(attribute), entries))))


def _subset(rows: list[Row], values: list[Number | None]) -> tuple[list[Row], list[Number]]:
    """The rows (and values) of a family whose series exist only for some names."""
    if None not in values:
        return rows, values  # type: ignore[return-value]  # no None in it
    kept = [(row, value) for row, value in zip(rows, values, strict=True) if value is not None]
    return [row for row, _ in kept], [value for _, value in kept]


def _blocks(rows: list[Row], entries: list[Entry]) -> list[SeriesBlock]:
    op_rows = [(*row, op) for row in rows for op in ("send", "receive")]
    # Close facts count only for a closed name (a summary has none otherwise).
    closed = list(map(_CLOSED, entries))
    # A comprehension rather than a call per name: most names have both kept.
    waits = list(
        chain.from_iterable(
            chain.from_iterable(
                kept if (kept := entry.wait_lines) is not None else _wait_lines(entry)
                for entry in entries
            )
        )
    )
    return [
        SeriesBlock(
            "drainwatch_channel_created_timestamp_seconds",
            "When the channel was created (Unix seconds).",
            "gauge",
            _LABELS,
            *_subset(rows, list(map(_CREATED, entries))),
        ),
        SeriesBlock(
            "drainwatch_channel_closed_timestamp_seconds",
            "When the channel was closed (Unix seconds); absent while open.",
            "gauge",
            _LABELS,
            *_subset(rows, list(closed)),
        ),
        SeriesBlock(
            "drainwatch_channel_drained_timestamp_seconds",
            "When a closed channel became empty (Unix seconds).",
            "gauge",
            _LABELS,
            *_subset(
                rows,
                [
                    None if at is None else entry.drained
                    for at, entry in zip(closed, entries, strict=True)
                ],
            ),
        ),
        SeriesBlock(
            "drainwatch_channel_residual_items_at_close",
            "Items still buffered at the moment of close (the drain check).",
            "gauge",
            _LABELS,
            *_subset(
                rows,
                [
                    None if at is None else entry.residual
                    for at, entry in zip(closed, entries, strict=True)
                ],
            ),
            integral=True,
        ),
        SeriesBlock(
            "drainwatch_channel_depth",
            "Items buffered now.",
            "gauge",
            _LABELS,
            rows,
            list(map(_DEPTH, entries)),
            integral=True,
        ),
        SeriesBlock(
            "drainwatch_channel_capacity",
            "maxsize of the channel (0 = unbounded).",
            "gauge",
            _LABELS,
            rows,
            list(map(_CAPACITY, entries)),
            integral=True,
        ),
        *(
            SeriesBlock(
                name,
                text,
                "counter",
                _LABELS,
                rows,
                list(map(itemgetter(key), map(_COUNTS, entries))),
                integral=True,
            )
            for key, name, text in _COUNTERS
        ),
        SeriesBlock(
            "drainwatch_channel_blocked_waiters",
            "Tasks or threads blocked on the channel now.",
            "gauge",
            _OP_LABELS,
            op_rows,
            _per_op(entries, "waiters"),
            integral=True,
        ),
        SeriesBlock(
            "drainwatch_channel_oldest_wait_seconds",
            "How long the longest current waiter has waited.",
            "gauge",
            _OP_LABELS,
            op_rows,
            _per_op(entries, "oldest_wait"),
        ),
        SeriesBlock(
            "drainwatch_channel_wait_seconds",
            "Completed waits in put (op=send) and get (op=receive).",
            "histogram",
            _OP_LABELS,
            op_rows,
            waits,
            bounds=BOUNDS,
        ),
        SeriesBlock(
            "drainwatch_channel_health_score",
            "0..100 from close state, after-close use and blocked time (formula in "
            "docs/metrics.md).",
            "gauge",
            _LABELS,
            rows,
            [score if (score := entry.health) is not None else _health(entry) for entry in entries],
        ),
        SeriesBlock(
            "drainwatch_channel_objects",
            "Live channel objects reporting under this name (workers, restarts).",
            "gauge",
            _LABELS,
            rows,
            [entry.objects if isinstance(entry, ChannelSummary) else 1 for entry in entries],
            integral=True,
        ),
    ]


def histogram_lines(histogram: list[float]) -> list[Number]:
    """A stored histogram (per-bucket counts, ``+Inf`` last, then the sum) as a
    ``SeriesBlock`` histogram row: cumulative counts, the count, the sum."""
    lines: list[Number] = list(accumulate(histogram[:-1]))
    lines.append(lines[-1])
    lines.append(histogram[-1])
    return lines


def extend_histogram(values: list[Number], histogram: list[float]) -> None:
    """Append a stored histogram to ``values`` as ``histogram_lines`` has it."""
    values += histogram_lines(histogram)


def _add_unique(service: Service, rows: list[Row], entries: list[Entry]) -> bool:
    """The common case in one sweep: a service with one process, whose channels each have
    a name of their own and are all alive, and nothing retired. False (and nothing added)
    for any other service."""
    if service.retired or len(service.instances) != 1:
        return False
    [instance] = service.instances.values()
    objects = sorted(instance.channels.values(), key=_NAME)
    names = list(map(_NAME, objects))
    if len(set(names)) != len(names) or any(map(_GONE, objects)):
        return False
    rows += zip(repeat(service.name), names)
    entries += objects
    return True


def channel_blocks(state: State) -> list[SeriesBlock]:
    """Every channel family. Call with the state lock held; the blocks hold no reference
    into the state, so they can be rendered after it is released."""
    rows: list[Row] = []
    entries: list[Entry] = []
    for service in state.services.values():
        if _add_unique(service, rows, entries):
            continue
        live: dict[str, list[ChannelObject]] = {}
        for instance in service.instances.values():
            for channel in instance.channels.values():
                group = live.get(channel.name)
                if group is None:
                    live[channel.name] = [channel]
                else:
                    group.append(channel)
        retired = service.retired
        names = sorted(live.keys() | retired.keys()) if retired else sorted(live)
        service_name = service.name
        for name in names:
            rows.append((service_name, name))
            channels = live.get(name)
            totals = retired.get(name)
            if totals is None and channels is not None and len(channels) == 1:
                only = channels[0]
                if not only.gone:
                    entries.append(only)
                    continue
            entries.append(fold(service_name, name, channels or [], totals))
    return _blocks(rows, entries)
