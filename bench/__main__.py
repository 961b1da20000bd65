"""``python -m bench [--quick] [--only NAME] [--output docs/performance.md]``: run the suite,
print the table.

``--only`` runs the named figures alone; with ``--output`` naming an existing report their
rows replace (or join) the ones there and the others are kept (``bench.doc_update``).

Exit codes: 0 all figures ran (and, in full mode, met their budgets); 1 a budget was missed
in full mode; 2 a benchmark could not run.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import drainwatch

from .agent_idle import agent_idle
from .agent_overhead import agent_overhead
from .channels import awaited_handoff, nowait_pair
from .close_latency import close_latency
from .doc_update import update_doc
from .figure import Figure
from .grpc_latency import grpc_unary
from .http_latency import http_request
from .ingest_rate import ingest_budget, ingest_scaling
from .pyspy_overhead import pyspy_overhead
from .report import console_table, load_average, performance_doc, this_machine, write_doc
from .scrape_cost import Load, scrape_budget, scrape_scaling
from .tasks_overhead import lag_monitor_cpu, task_tracking_throughput
from .threads import thread_handoff

EXIT_BUDGET_MISSED = 1
EXIT_ERROR = 2
_DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


@dataclass(frozen=True)
class Plan:
    """Iteration counts for one mode."""

    pairs: int
    pair_rounds: int
    handoff_items: int
    handoff_rounds: int
    thread_items: int
    thread_rounds: int
    close_batches: int
    churn_cycles: int
    churn_rounds: int
    grpc_calls: int
    grpc_rounds: int
    pyspy_rounds: int
    task_window: float
    task_rounds: int
    lag_window: float
    lag_rounds: int
    http_calls: int = 200
    http_rounds: int = 3
    ingest_seconds: float = 1.0
    ingest_sizes: tuple[int, ...] = (100,)
    scrape_load: Load = Load(3, 100, 50)  # noqa: RUF009 - Load is frozen: a shared default is safe
    scrapes: int = 3
    scrape_sizes: tuple[int, ...] = (100,)
    idle_window: float = 2.0
    idle_settle: float = 2.0


QUICK = Plan(
    pairs=20_000,
    pair_rounds=5,
    handoff_items=5_000,
    handoff_rounds=5,
    thread_items=5_000,
    thread_rounds=5,
    close_batches=4,
    churn_cycles=2_000,
    churn_rounds=3,
    grpc_calls=200,
    grpc_rounds=5,
    pyspy_rounds=1,
    task_window=0.5,
    task_rounds=2,
    lag_window=0.5,
    lag_rounds=2,
)
FULL = Plan(
    pairs=50_000,
    pair_rounds=41,
    handoff_items=20_000,
    handoff_rounds=31,
    thread_items=50_000,
    thread_rounds=31,
    close_batches=40,
    churn_cycles=20_000,
    churn_rounds=15,
    # As for HTTP below: short rounds, many of them, over many server processes (each
    # process sets its servers a fraction of a percent apart for its whole life).
    grpc_calls=500,
    grpc_rounds=84,
    pyspy_rounds=30,
    task_window=2.0,
    task_rounds=15,
    lag_window=2.0,
    lag_rounds=9,
    # Many short rounds: a round's ratio wanders by a few percent whatever its length (the
    # spread did not narrow from 500 to 8,000 requests a round), so the median steadies
    # with the number of rounds only: 336 put its standard error near 0.25 %.
    http_calls=500,
    http_rounds=336,
    ingest_seconds=10.0,
    ingest_sizes=(100, 1_000, 10_000),
    scrape_load=Load(3, 1_000, 500),
    scrapes=25,
    scrape_sizes=(100, 1_000, 10_000),
    idle_window=60.0,
    idle_settle=6.0,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run drainwatch's benchmark suite."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="few iterations: check that everything runs (< 60 s); budgets are not enforced",
    )
    parser.add_argument(
        "--only",
        metavar="NAME",
        action="append",
        choices=sorted(label for label, _ in _benchmarks(QUICK)),
        help="run only this figure (repeatable); with --output, update those rows of an "
        "existing report and keep the others",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        type=Path,
        help="write the Markdown report here (full mode default: docs/performance.md)",
    )
    return parser


def _benchmarks(plan: Plan) -> list[tuple[str, Callable[[], Figure | list[Figure]]]]:
    return [
        ("nowait pair", lambda: nowait_pair(plan.pairs, plan.pair_rounds)),
        ("awaited handoff", lambda: awaited_handoff(plan.handoff_items, plan.handoff_rounds)),
        ("thread handoff", lambda: thread_handoff(plan.thread_items, plan.thread_rounds)),
        ("close latency", lambda: close_latency(plan.close_batches)),
        ("agent overhead", lambda: agent_overhead(plan.churn_cycles, plan.churn_rounds)),
        ("gRPC unary (sync)", lambda: grpc_unary("sync", plan.grpc_calls, plan.grpc_rounds)),
        ("gRPC unary (aio)", lambda: grpc_unary("aio", plan.grpc_calls, plan.grpc_rounds)),
        ("py-spy overhead", lambda: pyspy_overhead(plan.pyspy_rounds)),
        ("task tracking", lambda: task_tracking_throughput(plan.task_window, plan.task_rounds)),
        ("lag monitor", lambda: lag_monitor_cpu(plan.lag_window, plan.lag_rounds)),
        ("HTTP aiohttp", lambda: http_request("aiohttp", plan.http_calls, plan.http_rounds)),
        ("HTTP ASGI", lambda: http_request("asgi", plan.http_calls, plan.http_rounds)),
        ("agent ingest", lambda: ingest_budget(plan.ingest_seconds)),
        ("ingest scaling", lambda: ingest_scaling(plan.ingest_seconds, plan.ingest_sizes)),
        ("scrape", lambda: scrape_budget(plan.scrapes, plan.scrape_load)),
        ("scrape scaling", lambda: scrape_scaling(plan.scrapes, plan.scrape_sizes)),
        ("agent idle", lambda: agent_idle(plan.idle_window, plan.idle_settle)),
    ]


def _run(plan: Plan, only: Sequence[str] | None) -> tuple[list[Figure], list[str]]:
    figures: list[Figure] = []
    errors: list[str] = []
    # The micro-benchmarks never touch the reporter; keep its thread and socket out of them.
    drainwatch.configure(enabled=False)
    for label, benchmark in _benchmarks(plan):
        if only and label not in only:
            continue
        started = time.monotonic()
        print(f"running {label} ...", file=sys.stderr, flush=True)
        try:
            result = benchmark()
        except Exception:
            errors.append(f"{label}: {traceback.format_exc()}")
            print(f"  {label} failed:\n{traceback.format_exc()}", file=sys.stderr)
            continue
        figures.extend(result if isinstance(result, list) else [result])
        print(f"  done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return figures, errors


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(arguments)
    plan = QUICK if args.quick else FULL
    load_at_start = load_average()
    started = time.monotonic()
    figures, errors = _run(plan, args.only)
    print()
    print(console_table(figures))
    print(f"\n{len(figures)} figures in {time.monotonic() - started:.0f} s")
    if errors:
        print(f"{len(errors)} benchmark(s) could not run; no report written", file=sys.stderr)
        return EXIT_ERROR
    output: Path | None = args.output or (None if args.quick else _DEFAULT_OUTPUT)
    if output is not None:
        command = shlex.join(["python", "-m", "bench", *arguments])
        if args.only and output.exists():
            machine = this_machine(load_at_start)
            write_doc(output, update_doc(output.read_text(), figures, command, machine))
        else:
            write_doc(
                output, performance_doc(figures, command, this_machine(load_at_start), args.quick)
            )
        print(f"wrote {output}")
    missed = [figure for figure in figures if not figure.meets]
    if args.quick:
        return 0
    for figure in missed:
        print(
            f"budget missed: {figure.name}: ratio {figure.ratio}, budget {figure.budget}",
            file=sys.stderr,
        )
    return EXIT_BUDGET_MISSED if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
