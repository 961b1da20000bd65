"""The results table (console and Markdown) and ``docs/performance.md``."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .figure import Figure

_HEADER = ("Figure", "Baseline", "Candidate", "Ratio (median)", "Spread", "Budget", "Verdict")


@dataclass(frozen=True)
class Machine:
    cores: int
    cpu: str
    python: str
    system: str
    # The machine's load average over 1, 5 and 15 minutes when the run began and ended:
    # how much else was running beside the figures.
    load: str = ""

    def describe(self) -> str:
        described = (
            f"{self.cores} cores, {self.cpu}, Python {self.python} "
            f"({platform.python_implementation()}), {self.system}"
        )
        return f"{described}, {self.load}" if self.load else described


def load_average() -> str:
    """The load average over 1, 5 and 15 minutes, as ``1.20 0.98 0.75``."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown CPU"


def this_machine(load_at_start: str = "") -> Machine:
    """This machine; with ``load_at_start``, the load average then and now."""
    load = f"load average {load_at_start} at the start, {load_average()} at the end"
    return Machine(
        cores=os.cpu_count() or 1,
        cpu=_cpu_model(),
        python=platform.python_version(),
        system=f"{platform.system()} {platform.release()}",
        load=load if load_at_start else "",
    )


def _rows(figures: Sequence[Figure]) -> list[tuple[str, ...]]:
    return [
        (f.name, f.baseline, f.candidate, f.ratio, f.spread, f.budget, f.verdict) for f in figures
    ]


def console_table(figures: Sequence[Figure]) -> str:
    rows = [_HEADER, *_rows(figures)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_HEADER))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(figures: Sequence[Figure]) -> str:
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(figures)]
    return "\n".join(lines)


def _notes(figures: Sequence[Figure]) -> str:
    return "\n".join(f"{index}. **{f.name}**: {f.note}." for index, f in enumerate(figures, 1))


def performance_doc(figures: Sequence[Figure], command: str, machine: Machine, quick: bool) -> str:
    """The whole ``docs/performance.md``, from one run of the suite."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = " (quick mode: few iterations, a smoke test rather than a measurement)" if quick else ""
    return f"""# Performance

drainwatch's channels replace `asyncio.Queue` and `queue.Queue` in application hot paths, its
gRPC interceptors and HTTP middleware sit on every request, and the SDK reports to a sidecar
agent. This page holds the figures that keep them honest: each channel against the stdlib
queue it replaces, the time from `close()` to the agent's `/metrics`, what a missing agent
costs, what in-flight tracking adds to a gRPC call and an HTTP request, next to what
OpenTelemetry's tracing adds, and what the agent does with one core and how much memory: the
events it ingests per second, the time a big `/metrics` page takes, how both grow, and its
cost while it watches a service from outside. It is generated; do not edit it by hand.

- Command (from the repository root, in the dev environment): `{command}`{mode}
- Machine: {machine.describe()}
- Date: {now}

## Results

{markdown_table(figures)}

Ratios are candidate / baseline (below 1 means the candidate is faster). "Spread" is the
interquartile range of the per-round ratios; for the added-time rows, of the per-round added
times.

## Profiles: what was slow, and what changed

Measured with py-spy on a real agent and cProfile in-process, on this machine, before and
after the changes below (same benchmarks as the figures above):

- **`/metrics` with 3,000 channel names and 500 methods** (178,839 lines, 17.7 MB): p50 1,648
  ms (text) and 2,472 ms (OpenMetrics), agent RSS 175 MB, before; about 45 ms and 69 MB
  after. The page went through prometheus_client's families, a `Sample` with a dict of
  labels per line, formatted and escaped on every scrape: about 8 µs a line, and the whole
  page held in memory two or three times while it was written. The channel and request
  families are now columns (`agent/exposition.py`, `agent/channel_series.py`), rendered a
  few thousand lines at a time with one `%` format of a row template into which go label
  texts kept between scrapes and the values (about 100 ns a line), and sent as they are
  rendered, from one thread of their own. A first version that kept a template of the whole
  page made scrapes fast but held 20 MB per format (RSS 171 MB); the row templates need
  none. What the fold of the objects into names cost (4.2 µs a name) went down by keeping
  each object's histogram lines and health score until a record changes them (the merge
  says when) and by folding a service whose names are all different in one sweep.
- **Ingest**: 63,000 channel records per second of the agent's CPU before, 270,000 after.
  Parsing a datagram with the json module took 5 µs a record and the checks, value by value
  in Python, 10 µs. A datagram of channel records is now parsed and checked against their
  schema in one pass by msgspec (`collectors/channel_decode.py`), anything else takes the
  general path (msgspec's parser, then the checks record by record), and the merge no longer
  loops over `getattr`/`setattr` nor sums stored histograms again.
- **An HTTP request through aiohttp** cost 12 % more with drainwatch's middleware, and an
  empty middleware alone 5 %: with any middleware, aiohttp builds a chain for each request
  and adds one of its own that sets the current app. `setup(app)` counts from the route
  handlers instead (`sdk/integrations/_aiohttp_count.py`): 3.9 % (+4.6 µs). Measured next
  in instructions rather than time (the server under `valgrind --tool=callgrind`, counters
  zeroed after 300 warm-up requests, 1,000 requests to one variant): the plain server runs
  232k instructions and about 2,800 bytecodes per request, and the count added 9.3k
  instructions; a handler wrapper that only awaits the handler adds about 0.3k, so the cost
  was the count's own bytecodes: even written out in one wrapper, 118 there plus calls to
  `prepared`, `status`, `transport` and `is_closing`, each a Python frame (9.0k
  instructions). Now the wrapper counts inline into a
  shard the route keeps (an app serves from one loop), a request that ends writes one
  count (its outcome and duration bucket together) and a sum, requests in flight are
  started less ended, and a common response (returned unsent, on a connection nothing is
  closing) is told from aiohttp's fields; anything else takes the full check. 5.2k to
  6.2k instructions added (`python -m bench.http_instructions aiohttp`, two runs), at the
  budget's edge when timed. An ASGI
  request adds about 410 bytecodes (30k instructions, 4.8 %, `... asgi`): the call and two message
  wrappers (coroutines that see the status, completion and a client gone), and the route
  match of each new path, needed before the app runs to label the request in flight.
  Plain routes are matched on their compiled patterns (5.1 -> 3.1 µs in-process) rather
  than through Starlette's `matches`, which converts parameters and builds scopes.
  Since cut to about 280 bytecodes: the nested-middleware check is a scope key rather than
  a context variable (0.35k instructions instead of 1.9k), the message observer for `send`
  is a plain function returning the server's awaitable (no coroutine per message), the
  per-request object is made without `__init__`, the plain-route match is written out with
  the loop thread's shard kept per route and method, and a request ending within the first
  bucket skips the bucket search. Called directly (the Starlette app alone, 95.5k
  instructions per request under callgrind), drainwatch added 24.6k before and 16.6k after.
  Timed, that was 1.029 in a run on a busier machine: still over the budget. The route
  match itself was the largest part left (6.3k of 17.6k instructions added to the app
  called directly): for an app of plain routes a request is now labelled when it ends, by
  the route Starlette's router put in the scope (its kept shard found by the route's id),
  and counts its start and end together then. Meanwhile it sits in its loop's set of
  requests in flight, which readers label: by that route once routed, else by matching
  the path. A read of the records with 1,000 requests held costs 0.26 ms routed and
  2.3 to 2.5 ms unrouted (20 routes), with 10,000 held 6.4 to 7.8 ms and 23 ms, on the
  reporter's thread (`python -m bench.pending_labels`, two runs): a price paid per report
  and per request in flight, instead of per request served. Added now: 14.7k instructions
  to the app called directly, 14.5k to the server's 638k per request (2.3 %,
  `python -m bench.http_instructions asgi`; 30k at the start). The aiohttp route handlers
  now also skip the bucket search for requests that end within the first bucket and test
  the common response in one condition: 6.9k to 5.5k instructions added (2.4 % of the
  server's 231k). Both are over 2 % of the server's own instructions; the table times a
  request as its client sees it, loopback and client included. Two runs of the HTTP
  figures alone gave 1.014 (ASGI) and 1.016 (aiohttp) each, where they were 1.029 and
  1.022; a full run right after, on a machine that ran a third faster (the ASGI baseline
  at 153 µs, not 225 µs), 1.022 and 1.017: the added time stayed near 3 µs while the rest
  of the request shrank. The ASGI budget is met or missed by the machine's pace; getting
  clear of it takes cutting the per-request path further. What is left, called directly:
  the extra coroutine any middleware costs (2.2k), the `send` observer (2.3k: two calls
  and the bound methods), the per-request object (1k) and the count itself. FastAPI's
  `APIRoute` in an app's own routes list matches as Starlette's `Route` does, so such an
  app takes the same path: with 21 routes and a new id in each path, drainwatch added
  27.3 µs to a request (FastAPI's own matching of each new path) and now adds 2.6 µs
  (in-process, the app called directly; 62 µs without drainwatch). An app with an
  included router or a mount is still matched by FastAPI's matching when a request starts.
- **A sync gRPC unary call** (the server under callgrind, counters zeroed after 300 warm-up
  calls, 1,000 calls to one server: `python -m bench.grpc_instructions sync`): drainwatch
  added 7.6k to 8.3k instructions to the server's 345k per call (2.2 to 2.4 %), where a
  handler wrapper that only calls the handler adds none that shows; timed, 1.011 over eight
  server processes of ten rounds. The handler counted through the registry's `start` and
  `finish`, four calls per RPC. It now writes the pool thread's own shard inline (only that
  thread writes it, so no lock) and skips the bucket search for calls that end within the
  first bucket: 4.2k to 5.1k instructions added (1.2 to 1.5 %), 1.006 timed over the same
  eight processes. On `grpc.aio` the count adds 14k instructions of 470k, most of it in the
  context's done callback, which runs after the response went out: its timed figure is
  1.002.
- **The outside view** dumped every TCP socket of the node every 50 ms, including those in
  TIME_WAIT, which belong to no process (a busy node has thousands); it no longer asks for
  them. py-spy's sampler thread was woken on every step of the outside view; it is woken
  only when the draining state changes.

## Method

Every ratio comes from rounds in which the baseline and the candidate are timed back to back
in the same process, alternating which goes first, so slow drift and noisy neighbours hit
both sides alike; the figure is the median of the per-round ratios and the spread its
interquartile range. Timings use `time.perf_counter_ns`, each side is warmed up first, and
the cyclic garbage collector is off while a sample runs. The channel micro-benchmarks run
with reporting disabled, since their hot paths never touch the reporter; figure 5 measures
the reporting path. The close latency is not a ratio: it is measured end to end with real
processes and judged on its p99.

The gRPC figures time a unary call on loopback (a raw-bytes method whose handler returns the
request at once) against three servers running side by side in one server process: no
interceptor, drainwatch's, OpenTelemetry's. The bench process is the client and calls the
three in turn, call by call (A B C, C B A, ...; the first server rotates from round to
round), timing every call, so a noisy neighbour's slice of CPU lands on all three alike; a
server's figure for a round is its mean call latency, and "added time" is that minus the
baseline's in the same round. Timing a block of calls per server instead, one server at a
time, gave spreads of 0.03 to 0.30 over six runs, against 0.01 to 0.04 interleaved in the
same period. The server runs in its own process, as it would in production. Measured both
ways on this 2-core machine, neither placement was consistently steadier (median
interquartile width of the per-round ratios over seven paired sync runs 0.07 with a separate
process, 0.04 in the bench process; over four aio runs 0.03 both ways), so the figure uses
the placement that charges the interceptor what production would: in one process the
server's work competes with the client's for the GIL (sync) or runs on the client's event
loop (aio). The server process runs with reporting off and its cyclic garbage collector on
(a collection is charged to the calls whose allocations trigger it); the client's collector
is off during a round. Within one server process its three servers sit a fraction of a
percent apart for the process's whole life, differently in the next (eight processes of ten
sync rounds each gave medians from 0.999 to 1.014 with the same code; two plain servers
side by side, 0.986 to 1.004), so the full run times 84 rounds of 500 calls over 12 server
processes rather than 21 rounds of 2,000 over 3.

The HTTP figures work as the gRPC ones do: one server process serves the same app three
times (plain, with drainwatch's middleware, with OpenTelemetry's), and the bench calls the
three in turn, request by request, over one kept-alive connection each, each request for a
new item (`GET /items/<n>`), so nothing keyed by the concrete path is reused. The client is
a few lines over a blocking socket rather than `http.client`: the less the client spends
per request, the larger the server's share of each latency and the stricter the ratio.
A round's ratio wanders by a few percent on this machine whatever the round's length
(interquartile width of the per-round ratios about 0.05 with 500, 2,000 and 8,000 requests
a round), and neither pinning the server and the client to a CPU each nor turning the
server's garbage collector off narrowed it; the median steadies with the number of rounds
only. With the same code, 21 rounds of 2,000 requests gave ASGI medians of 1.007 and 1.025
in two runs; 84 rounds of 500 gave 1.005 to 1.020 for ASGI and 1.010 to 1.022 for aiohttp
over six runs, a spread that matches the median's standard error (about 0.5 %). The full
run therefore times 336 rounds of 500 requests over 6 server processes (about 2.5 minutes
a server kind): two runs gave 1.014 and 1.014 for ASGI, 1.016 and 1.016 for aiohttp. What
the rounds do not even out is the machine's pace from one run to the next: the full run
that followed found every server a third faster, and ASGI at 1.022; the full run of
2026-12-03 16:49 UTC gave 1.019, and ASGI alone right after it 1.017.

The agent figures run a real agent process. Ingest: the agent is pinned to one CPU and a
sender, pinned to the other, stands in for SDK processes, offering channel snapshots 40 to
a datagram on non-blocking sockets (a refused datagram is dropped and counted, as by the
SDK); the figure is events accepted per second of the agent's CPU time, and the accounting
must close exactly. `/metrics`: one real SDK process per service keeps reporting its
channels and methods while the bench scrapes, timing each scrape from the request to the
page's last byte, and reads the agent's resident memory after each. The idle figure watches
a service without the SDK from outside with the production settings.

{_notes(figures)}

Run `python -m bench --quick` for a smoke run (about a minute, never fails on noise) and
`python -m bench` for these figures; the full run exits 1 when a budget is missed.
"""


def write_doc(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
