"""The /metrics page, rendered directly: Prometheus text format 0.0.4 and OpenMetrics 1.0.0.

prometheus_client renders a family sample by sample, each a ``Sample`` with a dict of
labels formatted and escaped on every scrape: about 8 µs per line. An agent holding 3,000
channel names exposes some 200,000 lines (20 MB), most of them in a handful of families
(the channel and request families). Those are built as ``SeriesBlock``s: one row of label
values per series and a flat list of values. A block is rendered a few thousand lines at
a time, each piece with one ``%`` format of its row's line template repeated, into which
go each row's labels (ready-made bytes, kept between scrapes by a ``TextCache``) and its
values: about 100 ns a line, and the page is sent piece by piece, so it never sits in
memory whole. Every other family (a few hundred lines at most) is rendered by
prometheus_client as before.

A ``SeriesBlock`` is also an ordinary ``prometheus_client`` ``Metric``: its ``samples`` are
built on first use, so a registry holding blocks still works with prometheus_client's own
exposition (the Pushgateway push, tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain, repeat
from typing import Final, Literal

from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.exposition import generate_latest as _text_latest
from prometheus_client.openmetrics.exposition import generate_latest as _openmetrics_latest
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

Kind = Literal["counter", "gauge", "histogram"]
Number = int | float
Row = tuple[str, ...]

# Lines per piece of a page: big enough that formatting dominates, small enough that a
# page of 200,000 lines never sits in memory whole.
CHUNK_LINES: Final = 2_000
_LABEL_CACHE_SLACK: Final = 64
_MAX_NUMBER_TEXTS: Final = 20_000


def escape_label_value(value: str) -> str:
    """A label value as it goes between double quotes (both formats): ``\\``, ``"`` and
    newline escaped."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


class SeriesBlock(Metric):
    """A family as columns: ``rows`` are the label values of each series (in the order of
    ``labels``) and ``values`` their numbers, one per row for counters and gauges; for a
    histogram, per row, the cumulative count of each bucket of ``bounds`` (``"+Inf"``
    last), the count (the ``+Inf`` bucket's again), then the sum: the values in the order
    of the lines. Values must be finite; ``integral`` says every value is an ``int`` (a
    histogram's counts must be; its sums need not be).

    Rows are not copied: the caller hands them over and does not change them afterwards.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        kind: Kind,
        labels: Sequence[str],
        rows: list[Row],
        values: list[Number],
        *,
        bounds: Sequence[str] = (),
        integral: bool = False,
    ) -> None:
        super().__init__(name, documentation, kind)
        self.labels = tuple(labels)
        self.rows = rows
        self.values = values
        self.bounds = tuple(bounds)
        self.integral = integral
        self._samples: list[Sample] | None = None
        expected = len(rows) * (len(self.bounds) + 2 if kind == "histogram" else 1)
        if len(values) != expected:
            raise ValueError(
                f"{name}: {len(values)} values for {len(rows)} rows, expected {expected}"
            )

    # prometheus_client's Metric keeps samples in a plain attribute it sets in __init__.
    @property
    def samples(self) -> list[Sample]:
        if self._samples is None:
            self._samples = list(self._build_samples())
        return self._samples

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        self._samples = value or None

    def _build_samples(self) -> Iterator[Sample]:
        name, labels = self.name, self.labels
        if self.type == "counter":
            for row, value in zip(self.rows, self.values, strict=True):
                yield Sample(f"{name}_total", dict(zip(labels, row, strict=True)), value)
            return
        if self.type == "gauge":
            for row, value in zip(self.rows, self.values, strict=True):
                yield Sample(name, dict(zip(labels, row, strict=True)), value)
            return
        width = len(self.bounds) + 2
        for index, row in enumerate(self.rows):
            base = dict(zip(labels, row, strict=True))
            values = self.values[index * width : (index + 1) * width]
            for bound, value in zip(self.bounds, values[:-2], strict=True):
                yield Sample(f"{name}_bucket", {**base, "le": bound}, value)
            yield Sample(f"{name}_count", base, values[-2])
            yield Sample(f"{name}_sum", base, values[-1])

    # -- rendering --------------------------------------------------------------------------

    def header(self, openmetrics: bool) -> bytes:
        name = self.name
        shown = name if openmetrics or self.type != "counter" else f"{name}_total"
        text = _escape_help(self.documentation, openmetrics)
        return f"# HELP {shown} {text}\n# TYPE {shown} {self.type}\n".encode()

    def _row_template(self) -> tuple[bytes, int]:
        """The lines of one row, with ``%s`` where its labels go and a format code where
        each value goes (the same in both formats); and how many lines that is."""
        name = self.name.encode()
        if self.type == "histogram":
            lines = [
                name + b'_bucket{%s,le="' + bound.encode() + b'"} %d\n' for bound in self.bounds
            ]
            lines.append(name + b"_count{%s} %d\n")
            lines.append(name + b"_sum{%s} %s\n")
            return b"".join(lines), len(lines)
        sample = name + b"_total" if self.type == "counter" else name
        return sample + (b"{%s} %d\n" if self.integral else b"{%s} %s\n"), 1

    def chunks(self, openmetrics: bool, texts: TextCache) -> Iterator[bytes]:
        """The family's text, header first, in pieces of about ``CHUNK_LINES`` lines.

        Each piece is one ``%`` format of the row template repeated: the labels of each
        row go in as ready-made bytes, integers as numbers (``%d``), and other numbers as
        their text, both from ``texts``.
        """
        yield self.header(openmetrics)
        rows = self.rows
        if not rows:
            return
        row_template, per_row = self._row_template()
        step = max(1, CHUNK_LINES // per_row)
        labels = texts.labels(self.labels, rows)
        values = self.values
        histogram = self.type == "histogram"
        reals = not histogram and not self.integral
        for start in range(0, len(rows), step):
            count = min(step, len(rows) - start)
            arguments: list[object] = [None] * (2 * per_row * count)
            chunk_labels = labels[start : start + count]
            arguments[0::2] = (
                chunk_labels
                if per_row == 1
                else list(chain.from_iterable(map(repeat, chunk_labels, repeat(per_row, count))))
            )
            chunk_values = values[start * per_row : (start + count) * per_row]
            arguments[1::2] = texts.reals(chunk_values) if reals else chunk_values
            if histogram:  # each row's last value is its sum
                arguments[2 * per_row - 1 :: 2 * per_row] = texts.reals(
                    chunk_values[per_row - 1 :: per_row]
                )
            yield (row_template * count) % tuple(arguments)


class TextCache:
    """Text kept between scrapes, since a page has the same rows, and mostly the same
    numbers, scrape after scrape: each row's labels as they go between braces
    (``service="a",channel="b"``), and the text of non-integer numbers (timestamps, sums,
    seconds), whose ``repr`` costs about five times an integer's. Both are bounded (twice
    the most rows of a family using them; ``_MAX_NUMBER_TEXTS`` numbers). Safe to share
    between threads.

    Families of one page often share their rows (every channel family has the same): the
    texts of the last rows list asked for are reused while the same list is asked again.
    """

    def __init__(self) -> None:
        self._labels: dict[tuple[str, ...], dict[Row, bytes]] = {}
        self._peaks: dict[tuple[str, ...], int] = {}
        self._last: tuple[tuple[str, ...], list[Row], list[bytes]] | None = None
        self._numbers: dict[Number, bytes] = {}

    def labels(self, names: tuple[str, ...], rows: list[Row]) -> list[bytes]:
        """The label texts of ``rows``, in order."""
        last = self._last
        if last is not None and last[1] is rows and last[0] == names:
            return last[2]
        # Bounded by twice the most rows one family with these labels had: families with
        # a part of the same rows (closed channels only) must not empty it.
        peak = self._peaks[names] = max(self._peaks.get(names, 0), len(rows))
        known = self._labels.get(names)
        if known is None or len(known) > 2 * peak + _LABEL_CACHE_SLACK:
            known = self._labels[names] = {}
        found: list[bytes] = []
        add = found.append
        get = known.get
        for row in rows:
            text = get(row)
            if text is None:
                text = known[row] = _label_text(names, row)
            add(text)
        self._last = (names, rows, found)
        return found

    def reals(self, values: list[Number]) -> list[bytes]:
        """The text of each value: ``repr``, the shortest text that reads back as the same
        float (Go's ``strconv.FormatFloat(v, 'g', -1, 64)`` but for the exponent's form,
        which every Prometheus parser accepts)."""
        known = self._numbers
        if len(known) > _MAX_NUMBER_TEXTS:
            known = self._numbers = {}
        found: list[bytes | None] = list(map(known.get, values))
        if None in found:
            for index, text in enumerate(found):
                if text is None:
                    value = values[index]
                    found[index] = known[value] = repr(value).encode()
        return found  # type: ignore[return-value]  # no None is left


def _label_text(names: tuple[str, ...], row: Row) -> bytes:
    return ",".join(
        f'{name}="{escape_label_value(value)}"' for name, value in zip(names, row, strict=True)
    ).encode()


class _Families:
    """What prometheus_client's encoders take: anything with ``collect()``."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


def render(metrics: Iterable[Metric], openmetrics: bool, texts: TextCache) -> Iterator[bytes]:
    """The page for ``metrics`` (a registry's ``collect()``, consumed as the page is), in
    pieces to send in order: blocks rendered here, then every other family by
    prometheus_client (whose OpenMetrics page ends with the ``# EOF`` line)."""
    others: list[Metric] = []
    for metric in metrics:
        if isinstance(metric, SeriesBlock):
            yield from metric.chunks(openmetrics, texts)
        else:
            others.append(metric)
    encode = _openmetrics_latest if openmetrics else _text_latest
    yield encode(_Families(others))


def take(pieces: Iterator[bytes], size: int) -> list[bytes]:
    """The next pieces of a page, at least ``size`` bytes of them unless the page ends
    first (then fewer, or none)."""
    taken: list[bytes] = []
    total = 0
    for piece in pieces:
        taken.append(piece)
        total += len(piece)
        if total >= size:
            break
    return taken


class Exposition:
    """Renders a registry's page for a scrape, keeping texts between scrapes.

    Pages are rendered in one thread of its own (``executor``), a batch at a time: scrapes
    that overlap take turns, and the memory a page needs while it is rendered comes and
    goes in one place rather than in every worker thread's allocator. ``close()`` stops
    that thread.
    """

    def __init__(self, registry: Collector) -> None:
        self._registry = registry
        self._texts = TextCache()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="drainwatch-metrics")
        return self._executor

    def page(self, accept: str) -> tuple[Iterator[bytes], str]:
        """(the page's pieces, rendered as they are taken; its content type) for a
        request's ``Accept`` header: OpenMetrics when the scraper asks for it, else the
        text format. Nothing is collected before the first piece is taken."""
        # The format prometheus_client's own handler would choose, and its content type.
        _, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        return render(self._registry.collect(), openmetrics, self._texts), content_type

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
