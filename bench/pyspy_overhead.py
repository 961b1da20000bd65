"""Figure 10: a target's throughput while py-spy dumps it once a second, against no sampling.

The agent samples a service's stacks with ``py-spy dump --nonblocking``, which reads the
target's memory without stopping it. The budget is what that may cost the service: at most
1 % of its throughput at one dump a second.

A target process (``bench.pyspy_target``) serves requests for the whole figure. The bench
cuts its run into windows of whole seconds, with and without sampling in alternating order
(``measure.alternate``), and at each window's edges reads the target's count of handled
requests and the target's clock. In a sampled window the bench runs the agent's
:class:`PySpyRunner`, with the agent's default dump settings, once per second, half a second
into it, so every dump starts and ends inside its window. Only the py-spy subprocess touches
the target, as in the agent; the bench process itself sleeps.

The target is one process, and all its threads run on one CPU; the bench, and so every
py-spy process it starts, runs on the others. Its Python threads hold the GIL in turn, so
they would keep only about one core busy anyway, but left free to move they hand the GIL
from core to core: on this 2-core machine the target's throughput then varied by a few
percent from one second to the next, against a few tenths of a percent pinned. Pinned, the
target also keeps a core to itself, as it would next to a sidecar with its own CPU, so what
the figure charges to py-spy is what its reads of the target's memory cost, not the CPU its
process start-up takes on a machine with no core to spare. The price: a pinned target cannot
move away from other processes that land on its CPU, so the note reports the share of its
CPU the target got, and warns when others took a noticeable part of it.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from drainwatch.collectors.pyspy import (
    BINARY_MISSING,
    DENIED,
    TARGET_GONE,
    UNSUPPORTED,
    DumpResult,
    PySpyRunner,
)
from drainwatch.collectors.pyspy_sampler import SamplerConfig

from .agent_process import LineReader, stop_process
from .figure import Figure, ratio_figure
from .measure import Sample, alternate
from .pyspy_target import HANDLERS, IDLE_THREADS, PRODUCERS, QUEUE_MAXSIZE

BUDGET_RATIO = 1.01  # time per request: unsampled throughput / sampled throughput
SAMPLING_INTERVAL_SECONDS = 1.0
# One dump per sampled window. Short windows pair best: the load of other processes on the
# machine drifts over seconds, and adjacent windows see nearly the same.
WINDOW_SECONDS = 1
# Time for the target's threads, queue and allocator to reach a steady state; the first,
# untimed dump also runs in it, so py-spy's binary and the target's symbols are cached.
SETTLE_SECONDS = 1.0
_AGENT_DEFAULTS = SamplerConfig()
# Outcomes that mean sampling cannot work here, as opposed to one dump failing: in
# non-blocking mode a dump fails now and then when the target's stacks change under py-spy's
# reads, and the agent counts that as a failed sample and carries on; so does the figure.
_CANNOT_SAMPLE = frozenset({DENIED, UNSUPPORTED, BINARY_MISSING, TARGET_GONE})
_FIRST_DUMP_ATTEMPTS = 10
# Below this median share of its CPU the target was kept waiting by other processes.
_BUSY_MACHINE_SHARE = 0.95
_READY_TIMEOUT_SECONDS = 15.0
_REPLY_TIMEOUT_SECONDS = 5.0
_REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class _Mark:
    handled: int
    clock_ns: int
    cpu_ns: int


@dataclass
class _Observed:
    """What the windows and dumps showed, for the figure's note."""

    throughput: dict[bool, list[float]] = field(default_factory=lambda: {False: [], True: []})
    cpu_share: dict[bool, list[float]] = field(default_factory=lambda: {False: [], True: []})
    dump_seconds: list[float] = field(default_factory=list)
    dump_cpu_seconds: list[float] = field(default_factory=list)
    failed_dumps: int = 0
    failure: str = ""  # the first failed dump's reason and py-spy's message


class _TargetProcess:
    """A running ``bench.pyspy_target``, marked on request."""

    def __init__(self, cpu: int | None) -> None:
        pinned = [] if cpu is None else [str(cpu)]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.pyspy_target", *pinned],
            cwd=_REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if self._process.stdout is None or self._process.stderr is None:
            raise RuntimeError("the target's pipes are missing")  # pragma: no cover
        self._stdout = LineReader(self._process.stdout, "pyspy-target-stdout")
        self._stderr = LineReader(self._process.stderr, "pyspy-target-stderr")
        if self._stdout.next_line(_READY_TIMEOUT_SECONDS) != "ready\n":
            raise RuntimeError(f"the target did not start; its stderr:\n{self._stderr.tail()}")

    @property
    def pid(self) -> int:
        return self._process.pid

    def mark(self) -> _Mark:
        if self._process.stdin is None:  # pragma: no cover - stdin=PIPE always sets it
            raise RuntimeError("the target's stdin pipe is missing")
        self._process.stdin.write("mark\n")
        self._process.stdin.flush()
        line = self._stdout.next_line(_REPLY_TIMEOUT_SECONDS)
        fields = line.split() if line is not None else []
        if len(fields) != 3:
            raise RuntimeError(
                f"the target did not answer a mark (got {line!r}); its stderr:\n"
                f"{self._stderr.tail()}"
            )
        handled, clock_ns, cpu_ns = map(int, fields)
        return _Mark(handled, clock_ns, cpu_ns)

    def stop(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()
        stop_process(self._process)


class _Dumper:
    """Dumps the target the way the agent's sampler does, and records what each dump cost."""

    def __init__(self, pid: int, observed: _Observed) -> None:
        self._runner = PySpyRunner()
        self._pid = pid
        self._observed = observed

    def _dump(self) -> tuple[DumpResult, float]:
        """One dump and the CPU seconds py-spy used for it; raises when py-spy cannot sample
        the target at all, as opposed to one dump failing."""
        # The target is a child too, but RUSAGE_CHILDREN counts only children that have
        # been waited for: until the figure ends, the delta is the py-spy process alone.
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = self._runner.dump(
            self._pid, nonblocking=_AGENT_DEFAULTS.nonblocking, timeout=_AGENT_DEFAULTS.timeout
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.result in _CANNOT_SAMPLE or result.reason in _CANNOT_SAMPLE:
            raise RuntimeError(
                f"py-spy cannot sample the target (pid {self._pid}): {result.result} "
                f"({result.reason}): {result.message}"
            )
        return result, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime

    def first(self) -> int:
        """Dump until one succeeds; the number of threads it read."""
        for _ in range(_FIRST_DUMP_ATTEMPTS):
            result, _ = self._dump()
            if result.ok:
                return len(result.threads)
        raise RuntimeError(
            f"py-spy failed {_FIRST_DUMP_ATTEMPTS} dumps of the target in a row (pid "
            f"{self._pid}); the last: {result.result} ({result.reason}): {result.message}"
        )

    def dump(self) -> None:
        """One dump, recorded whether or not it succeeded: a failed one read the target too."""
        result, cpu_seconds = self._dump()
        observed = self._observed
        observed.dump_seconds.append(result.duration_seconds)
        observed.dump_cpu_seconds.append(cpu_seconds)
        if not result.ok:
            observed.failed_dumps += 1
            # py-spy's innermost causes say what went wrong; the outer ones only where.
            causes = [part.partition(": ")[2] or part for part in result.stderr.split(" / ")]
            causes = list(dict.fromkeys(causes))[-2:]
            observed.failure = observed.failure or f"{result.reason}: {' / '.join(causes)}"


def _split_cpus() -> tuple[int | None, set[int]]:
    """(the CPU for the target, the CPUs for the bench and py-spy); no split with one CPU."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, set(allowed)
    return allowed[-1], set(allowed[:-1])


@contextmanager
def _running_on(cpus: set[int]) -> Iterator[None]:
    """Pin the calling thread, and the processes and threads it starts, to ``cpus``."""
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def _sleep_until(deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


def _windows(
    target: _TargetProcess, seconds: int, dumper: _Dumper | None, observed: _Observed
) -> Sample:
    sampled = dumper is not None

    def sample() -> float:
        start = target.mark()
        begun = time.monotonic()
        if dumper is not None:
            for second in range(seconds):
                _sleep_until(begun + (second + 0.5) * SAMPLING_INTERVAL_SECONDS)
                dumper.dump()
        _sleep_until(begun + seconds)
        end = target.mark()
        handled = end.handled - start.handled
        elapsed_ns = end.clock_ns - start.clock_ns
        if handled <= 0 or elapsed_ns <= 0:
            raise RuntimeError(f"the target handled {handled} requests in a {seconds} s window")
        observed.throughput[sampled].append(handled / elapsed_ns * 1e9)
        observed.cpu_share[sampled].append((end.cpu_ns - start.cpu_ns) / elapsed_ns)
        return elapsed_ns / handled

    return sample


def _note(
    observed: _Observed, seconds: int, rounds: int, threads: int, target_cpu: int | None
) -> str:
    dumps = observed.dump_seconds
    per_dump_ms = statistics.mean(observed.dump_cpu_seconds) * 1000
    where = (
        "sharing the only CPU with py-spy"
        if target_cpu is None
        else f"pinned to CPU {target_cpu}, py-spy and the bench to the others"
    )
    note = (
        f"one target process with {threads} threads ({PRODUCERS} producers handing requests "
        f"through a queue.Queue({QUEUE_MAXSIZE}) to {HANDLERS} handlers, {IDLE_THREADS} idle, "
        f"the main thread), {where}; {rounds} rounds of a {seconds} s window each way; the target "
        f"handled {statistics.median(observed.throughput[False]):,.0f} requests/s unsampled and "
        f"{statistics.median(observed.throughput[True]):,.0f} sampled, using "
        f"{statistics.median(observed.cpu_share[False]):.2f} and "
        f"{statistics.median(observed.cpu_share[True]):.2f} of its CPU; {len(dumps)} dumps with "
        f"PySpyRunner (non-blocking, one per second), {statistics.mean(dumps) * 1000:.1f} ms "
        f"wall on average (max {max(dumps) * 1000:.1f} ms), {per_dump_ms:.1f} ms of py-spy "
        "CPU per dump (user + system, from RUSAGE_CHILDREN)"
    )
    # Another process taking the target's CPU slows its requests in wall time but not in CPU
    # time, so this ratio tells a busy machine from a cost; it misses costs that make the
    # target wait rather than work.
    cpu_ratio = statistics.median(
        (share_sampled / sampled) / (share / unsampled)
        for share, unsampled, share_sampled, sampled in zip(
            observed.cpu_share[False],
            observed.throughput[False],
            observed.cpu_share[True],
            observed.throughput[True],
            strict=True,
        )
    )
    note += (
        f"; the target's CPU time per request, sampled over unsampled, {cpu_ratio:.3f} "
        "(median over rounds)"
    )
    if observed.failed_dumps:
        note += (
            f"; {observed.failed_dumps} of {len(dumps)} dumps failed, their reads racing the "
            f"running target (the first: {observed.failure}); the agent records such a dump "
            "as a failed sample, and the figure counts them like the others"
        )
    note += (
        "; the ratio is time per request sampled over unsampled, i.e. unsampled over sampled "
        "throughput, so the budget is a throughput of at least 99 % of the unsampled one"
    )
    least = min(statistics.median(shares) for shares in observed.cpu_share.values())
    if target_cpu is not None and least < _BUSY_MACHINE_SHARE:
        # py-spy runs on other CPUs, so only other processes can have taken the target's.
        note += (
            f"; WARNING: the target had only {least:.2f} of its CPU, so other processes "
            "competed for it and the ratio says more about them than about py-spy"
        )
    return note


def pyspy_overhead(rounds: int) -> Figure:
    """The target's time per request with py-spy dumping it at 1 Hz / without sampling, in
    ``rounds`` pairs of windows."""
    observed = _Observed()
    target_cpu, bench_cpus = _split_cpus()
    with _running_on(bench_cpus):
        target = _TargetProcess(target_cpu)
        try:
            settled = time.monotonic() + SETTLE_SECONDS
            dumper = _Dumper(target.pid, observed)
            # Fails here, before any window, when py-spy may not read the target (no ptrace).
            threads = dumper.first()
            _sleep_until(settled)
            comparison = alternate(
                _windows(target, WINDOW_SECONDS, None, observed),
                _windows(target, WINDOW_SECONDS, dumper, observed),
                rounds,
                warmup=0,
            )
        finally:
            target.stop()
    return ratio_figure(
        "Target cost of py-spy dumps at 1 Hz (non-blocking)",
        comparison,
        baseline="no sampling",
        candidate="py-spy every 1 s",
        unit="request",
        budget=BUDGET_RATIO,
        note=_note(observed, WINDOW_SECONDS, rounds, threads, target_cpu),
    )
