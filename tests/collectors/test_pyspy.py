"""py-spy runner, parser and sampler: real py-spy on real targets, fakes built from recordings."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from drainwatch.collectors import pyspy
from drainwatch.collectors.kernel_waits import ProcKernelWaits
from drainwatch.collectors.preflight import diagnose_denial
from drainwatch.collectors.pyspy import (
    DENIED,
    FAILED,
    OK,
    TARGET_GONE,
    TIMEOUT,
    UNSUPPORTED,
    DumpResult,
    PySpyRunner,
    PySpyThread,
    parse_dump,
)
from drainwatch.collectors.pyspy_sampler import PySpySampler, SamplerConfig
from drainwatch.collectors.sampler_snapshot import LastWords, ThreadWait

from tests.collectors.test_thread_waits import RECORDED, running_script

RECORDING = (RECORDED / "pyspy_py311.json").read_bytes()

QUEUE_TARGET = """
import queue, threading, time
jobs = queue.Queue()
threading.Thread(target=jobs.get, name="consumer", daemon=True).start()
print("ready", flush=True)
time.sleep(60)
"""


def fake_binary(directory: Path, body: str) -> str:
    """An executable shell script standing in for py-spy."""
    path = directory / "py-spy"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# -- parser ----------------------------------------------------------------------------------------


def test_recorded_dump_parses_into_typed_threads() -> None:
    """A real py-spy dump gives every thread with its ids, flags and frames innermost first."""
    parsed = parse_dump(RECORDING)
    assert parsed.valid
    assert parsed.problems == ()
    assert len(parsed.threads) == len(json.loads(RECORDING))
    consumer = next(t for t in parsed.threads if t.thread_name == "queue_get/queue")
    assert isinstance(consumer.thread_id, int)
    assert isinstance(consumer.os_thread_id, int)
    assert (consumer.active, consumer.owns_gil) == (False, False)
    assert [f.name for f in consumer.frames[:2]] == ["Condition.wait", "Queue.get"]
    assert consumer.frames[1].short_filename == "queue.py"
    assert consumer.frames[1].describe().startswith("Queue.get (queue.py:")
    assert consumer.frames[0].locals is None


def test_missing_and_wrong_typed_fields_are_tolerated() -> None:
    """Absent fields become None or defaults, wrong types are ignored, odd entries are noted."""
    document = [
        {"frames": [{"name": "f"}]},
        {
            "thread_id": "12",
            "os_thread_id": True,
            "active": "yes",
            "thread_name": 7,
            "frames": [{"name": 1, "filename": None, "line": "3", "locals": 5}, "junk", None],
        },
        {"frames": {"not": "a list"}},
        "not a thread",
        None,
    ]
    parsed = parse_dump(json.dumps(document))
    assert parsed.valid
    assert len(parsed.threads) == 3
    first, second, third = parsed.threads
    assert first.frames[0].name == "f"
    assert (first.frames[0].filename, first.frames[0].line) == ("", 0)
    assert (second.thread_id, second.os_thread_id, second.active, second.thread_name) == (
        None,
        None,
        None,
        None,
    )
    assert [f.name for f in second.frames] == ["?"]
    assert third.frames == ()
    assert any("bad frames" in p for p in parsed.problems)
    assert any("not an object" in p for p in parsed.problems)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"{}",
        b'"text"',
        b"null",
        b"[" * 100_000,
        b"[1, 2, 3]",
        b"\xff\xfe\x00garbage",
        b'[{"frames": [{"name": NaN}]}]',
        RECORDING[: len(RECORDING) // 2],
    ],
)
def test_broken_input_never_raises(data: bytes) -> None:
    """Truncated, non-JSON, deeply nested or oddly typed documents parse to what can be read."""
    parsed = parse_dump(data)
    assert isinstance(parsed.threads, tuple)


def test_random_mutations_of_a_real_dump_never_raise() -> None:
    """Hundreds of byte-level mutations of a real dump: the parser returns every time."""
    rng = random.Random(4)
    for _ in range(300):
        data = bytearray(RECORDING)
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(data))
            data[position] = rng.choice(b'{}[]":,0123456789aZ \\\x00\xff')
        parse_dump(bytes(data))


def test_huge_dumps_are_bounded() -> None:
    """Threads, frames and strings are capped; an oversized document is refused unparsed."""
    small = {"thread_name": "t", "frames": [{"name": "f", "filename": "f.py", "line": 1}]}
    deep = {"frames": [{"name": "x" * 5000, "line": 1}] * (pyspy.MAX_FRAMES + 50)}
    parsed = parse_dump(json.dumps([deep] + [small] * (pyspy.MAX_THREADS + 10)))
    assert len(parsed.threads) == pyspy.MAX_THREADS
    assert len(parsed.threads[0].frames) == pyspy.MAX_FRAMES
    assert parsed.threads[0].frames_truncated
    assert len(parsed.threads[0].frames[0].name) == pyspy.MAX_TEXT
    assert any("kept the first" in p for p in parsed.problems)
    too_big = parse_dump(b" " * (pyspy.MAX_OUTPUT_BYTES + 1))
    assert not too_big.valid
    assert "over" in too_big.problems[0]


# -- runner: the real py-spy -----------------------------------------------------------------------


@pytest.fixture
def queue_target() -> Iterator[subprocess.Popen[str]]:
    """A plain threaded Python process with a thread stuck in queue.Queue.get."""
    with running_script(QUEUE_TARGET) as process:
        yield process


def test_real_dump_of_a_live_target(queue_target: subprocess.Popen[str]) -> None:
    """The real py-spy dumps a live target non-blocking, without locals."""
    runner = PySpyRunner()
    assert "--nonblocking" in runner.command(queue_target.pid)
    result = runner.dump(queue_target.pid, timeout=10.0)
    assert result.result == OK, result.message
    names = {t.thread_name for t in result.threads}
    assert {"MainThread", "consumer"} <= names
    assert all(f.locals is None for t in result.threads for f in t.frames)
    assert 0 < result.duration_seconds < 10


def test_locals_are_captured_only_when_asked(queue_target: subprocess.Popen[str]) -> None:
    """With locals=True py-spy adds each frame's variables (off by default: they hold secrets)."""
    result = PySpyRunner().dump(queue_target.pid, locals=True, timeout=10.0)
    assert result.ok, result.message
    consumer = next(t for t in result.threads if t.thread_name == "consumer")
    get = next(f for f in consumer.frames if f.name == "Queue.get")
    assert get.locals is not None
    assert {v.name for v in get.locals} >= {"self", "block", "timeout"}


def test_a_pid_that_does_not_exist_is_target_gone() -> None:
    """A PID with no process behind it is target_gone, not a failure."""
    process = subprocess.Popen(["true"])
    process.wait(10)
    result = PySpyRunner().dump(process.pid, timeout=10.0)
    assert (result.result, result.reason) == (TARGET_GONE, TARGET_GONE)
    assert "Stack backtrace" not in result.stderr


def test_a_process_that_is_not_python_is_unsupported() -> None:
    """py-spy on a non-Python process says so: unsupported / not_python, with py-spy's words."""
    process = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.1)
        result = PySpyRunner().dump(process.pid, timeout=10.0)
    finally:
        process.kill()
        process.wait(10)
    assert (result.result, result.reason) == (UNSUPPORTED, "not_python")
    assert "python version" in result.stderr.lower()


def test_permission_message_is_denied(tmp_path: Path) -> None:
    """py-spy's own permission message (exit 1) becomes denied / no_ptrace with the fix."""
    binary = fake_binary(
        tmp_path,
        "echo \"Permission Denied: Try running again with elevated permissions by going 'sudo "
        'env "PATH=$PATH" !!\'" >&2\nexit 1\n',
    )
    result = PySpyRunner(binary).dump(os.getpid(), timeout=5.0)
    assert (result.result, result.reason, result.returncode) == (DENIED, "no_ptrace", 1)
    assert "SYS_PTRACE" in result.message
    assert "drainwatch doctor" in result.message


def test_real_py_spy_denied_as_an_unprivileged_user(
    tmp_path: Path, queue_target: subprocess.Popen[str]
) -> None:
    """The real py-spy run as user nobody against a root target is denied."""
    real = pyspy.find_pyspy()
    if os.geteuid() != 0 or real is None or not os.path.exists("/usr/bin/setpriv"):
        pytest.skip("needs root, setpriv and py-spy")
    binary = fake_binary(
        tmp_path,
        f'exec /usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups {real} "$@"\n',
    )
    result = PySpyRunner(binary).dump(queue_target.pid, timeout=10.0)
    assert (result.result, result.reason) == (DENIED, "no_ptrace"), result.stderr


def test_unsupported_python_message_is_unsupported(tmp_path: Path) -> None:
    """py-spy's "Unsupported version of Python" becomes unsupported / unsupported_python."""
    binary = fake_binary(
        tmp_path, 'echo "Error: Unsupported version of Python: 3.99.0" >&2\nexit 1\n'
    )
    result = PySpyRunner(binary).dump(os.getpid(), timeout=5.0)
    assert (result.result, result.reason) == (UNSUPPORTED, "unsupported_python")
    assert "3.99.0" in result.message


def test_timeout_kills_py_spy_and_its_children(tmp_path: Path) -> None:
    """A dump that hangs is killed at the timeout, with anything it started."""
    child_file = tmp_path / "child.pid"
    binary = fake_binary(tmp_path, f"sleep 30 &\necho $! > {child_file}\nwait\n")
    start = time.monotonic()
    result = PySpyRunner(binary).dump(os.getpid(), timeout=0.5)
    elapsed = time.monotonic() - start
    assert result.result == TIMEOUT
    assert "--pyspy-timeout" in result.message
    assert 0.5 <= elapsed < 3.0
    child = int(child_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _exists(child):
        time.sleep(0.02)
    assert not _exists(child)


def _exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_blocking_mode_timeout_lets_the_target_run_again(
    tmp_path: Path, queue_target: subprocess.Popen[str]
) -> None:
    """After a blocking-mode dump is killed, a target left stopped gets SIGCONT."""
    binary = fake_binary(tmp_path, "exec sleep 30\n")
    os.kill(queue_target.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while _state(queue_target.pid) != "T" and time.monotonic() < deadline:
        time.sleep(0.01)
    result = PySpyRunner(binary).dump(queue_target.pid, nonblocking=False, timeout=0.3)
    assert result.result == TIMEOUT
    deadline = time.monotonic() + 5
    while _state(queue_target.pid) == "T" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _state(queue_target.pid) != "T"


def test_missing_binary_is_a_clear_failure(tmp_path: Path) -> None:
    """No py-spy at the configured path: failed / binary_missing, saying how to install it."""
    result = PySpyRunner(str(tmp_path / "py-spy")).dump(os.getpid(), timeout=1.0)
    assert (result.result, result.reason) == (FAILED, "binary_missing")
    assert "drainwatch[agent]" in result.message
    assert "--pyspy-path" in result.message


def test_output_that_is_not_a_dump_is_a_failure(tmp_path: Path) -> None:
    """Exit 0 with something that is not a JSON list is failed / bad_output, never an exception."""
    binary = fake_binary(tmp_path, 'echo "hello"\n')
    result = PySpyRunner(binary).dump(os.getpid(), timeout=5.0)
    assert (result.result, result.reason) == (FAILED, "bad_output")


TARGET_THAT_EXITS = """
import os, sys, threading, time
def deep(n):
    return deep(n - 1) if n else time.sleep(100)
for _ in range(150):
    threading.Thread(target=deep, args=(120,), daemon=True).start()
print("ready", flush=True)
time.sleep(0.6)
os._exit(0)
"""


def test_target_exiting_mid_dump_is_target_gone() -> None:
    """Dumping a big target while it exits gives ok or target_gone, never failed or a raise."""
    runner = PySpyRunner()
    results: list[DumpResult] = []
    with running_script(TARGET_THAT_EXITS) as process:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            results.append(runner.dump(process.pid, timeout=5.0))
            if results[-1].result == TARGET_GONE and process.poll() is not None:
                break
    kinds = [r.result for r in results]
    assert set(kinds) <= {OK, TARGET_GONE}, [(r.result, r.stderr) for r in results]
    assert kinds[-1] == TARGET_GONE


# -- sampler with fakes made from the recording ---------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeRunner:
    """Returns queued results (the last one repeats); ``gate`` makes a dump wait."""

    def __init__(self, *results: DumpResult) -> None:
        self.results = list(results)
        self.calls = 0
        self.gate: threading.Event | None = None
        self.started = threading.Event()

    def dump(
        self, pid: int, *, nonblocking: bool = True, locals: bool = False, timeout: float = 5.0
    ) -> DumpResult:
        self.calls += 1
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        result = self.results[0] if len(self.results) == 1 else self.results.pop(0)
        return replace(result, pid=pid)


def ok(threads: Sequence[PySpyThread] | None = None, duration: float = 0.07) -> DumpResult:
    parsed = parse_dump(RECORDING).threads if threads is None else tuple(threads)
    return DumpResult(OK, "", "", 1, threads=parsed, duration_seconds=duration)


def _thread(sampler: PySpySampler, name: str) -> ThreadWait:
    return next(t for t in sampler.snapshot().threads if t.name == name)


def _sampler(runner: FakeRunner, clock: Clock, config: SamplerConfig | None = None) -> PySpySampler:
    return PySpySampler(runner, 1, config, clock=clock, wall_clock=lambda: clock.now + 1e9)


def test_blocked_seconds_grow_while_the_stack_stays() -> None:
    """A thread seen in the same wait at the same place for three samples is blocked 10 s."""
    clock = Clock()
    sampler = _sampler(FakeRunner(ok()), clock)
    for _ in range(3):
        assert sampler.sample_once() is not None
        clock.now += 5
    consumer = _thread(sampler, "queue_get/queue")
    assert (consumer.reason, consumer.evidence, consumer.samples) == ("queue_get", "frames", 3)
    assert consumer.blocked_seconds == 10.0
    assert consumer.since == 1000.0 + 1e9
    assert consumer.site.startswith("Queue.get (queue.py:")
    assert consumer.waiting


def test_a_changed_stack_restarts_the_clock() -> None:
    """When the stack moves (another line), the wait starts again from that sample."""
    clock = Clock()
    threads = parse_dump(RECORDING).threads
    moved = [
        replace(t, frames=(replace(t.frames[0], line=t.frames[0].line + 1), *t.frames[1:]))
        if t.thread_name == "queue_get/queue"
        else t
        for t in threads
    ]
    sampler = _sampler(FakeRunner(ok(), ok(), ok(moved)), clock)
    for _ in range(3):
        sampler.sample_once()
        clock.now += 5
    assert _thread(sampler, "queue_get/queue").blocked_seconds == 0.0
    assert _thread(sampler, "event/wait").blocked_seconds == 10.0


def test_threads_that_end_are_forgotten() -> None:
    """A thread absent from the latest dump is no longer reported."""
    clock = Clock()
    threads = parse_dump(RECORDING).threads
    fewer = [t for t in threads if t.thread_name != "lock/raw"]
    sampler = _sampler(FakeRunner(ok(), ok(fewer)), clock)
    sampler.sample_once()
    sampler.sample_once()
    assert "lock/raw" not in {t.name for t in sampler.snapshot().threads}
    assert len(sampler.snapshot().threads) == len(fewer)


def test_duplicate_thread_names_get_distinct_labels() -> None:
    """Two threads with one name are labelled apart by their thread id."""
    thread = PySpyThread(1, "worker", 11, False, False, ())
    sampler = _sampler(FakeRunner(ok([thread, replace(thread, os_thread_id=12)])), Clock())
    sampler.sample_once()
    assert sorted(t.label for t in sampler.snapshot().threads) == ["worker [11]", "worker [12]"]


def test_rate_cap_per_minute() -> None:
    """At most max_per_minute dumps start in any 60 s; the rest are counted as rate_limited."""
    clock = Clock()
    runner = FakeRunner(ok())
    sampler = _sampler(runner, clock, SamplerConfig(max_per_minute=3))
    outcomes = [sampler.sample_once() for _ in range(5)]
    assert [o is not None for o in outcomes] == [True, True, True, False, False]
    assert sampler.snapshot().samples["rate_limited"] == 2
    clock.now += 60.5
    assert sampler.sample_once() is not None
    assert runner.calls == 4


def test_never_two_dumps_in_flight() -> None:
    """While a dump runs, another sample is skipped as busy and last words wait for it."""
    runner = FakeRunner(ok())
    runner.gate = threading.Event()
    sampler = _sampler(runner, Clock())
    worker = threading.Thread(target=sampler.sample_once)
    worker.start()
    assert runner.started.wait(5)
    assert sampler.sample_once() is None
    assert sampler.snapshot().samples["busy"] == 1
    words: list[LastWords | None] = []
    catcher = threading.Thread(target=lambda: words.append(sampler.capture_last_words("drain")))
    catcher.start()
    time.sleep(0.1)
    assert runner.calls == 1
    runner.gate.set()
    worker.join(5)
    catcher.join(5)
    assert runner.calls == 2
    assert words[0] is not None
    assert not words[0].stale


def test_denial_is_explained_logged_once_and_cleared_by_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A denied dump sets unavailable{reason} from the diagnosis, logs once, and clears on ok."""
    denied = DumpResult(DENIED, "no_ptrace", "refused", 1)
    runner = FakeRunner(denied, denied, ok())
    clock = Clock()
    sampler = PySpySampler(
        runner,
        1,
        clock=clock,
        diagnose=lambda pid, result: ("ptrace_scope", "kernel.yama.ptrace_scope=2: ..."),
    )
    with caplog.at_level(logging.INFO, logger="drainwatch.collectors.pyspy"):
        sampler.sample_once()
        sampler.sample_once()
        snapshot = sampler.snapshot()
        assert snapshot.unavailable == {"ptrace_scope": "kernel.yama.ptrace_scope=2: ..."}
        assert snapshot.samples["denied"] == 2
        assert snapshot.consecutive_failures == 2
        sampler.sample_once()
    assert sampler.snapshot().unavailable == {}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ptrace_scope" in warnings[0].getMessage()
    assert any("works again" in r.getMessage() for r in caplog.records)


def test_real_diagnosis_plugs_into_the_sampler() -> None:
    """preflight.diagnose_denial fits the sampler's diagnose hook (here every check passes)."""
    sampler = PySpySampler(
        FakeRunner(DumpResult(DENIED, "no_ptrace", "refused", 1)),
        os.getpid(),
        diagnose=diagnose_denial,
    )
    sampler.sample_once()
    (reason,) = sampler.snapshot().unavailable
    assert reason == "no_ptrace"


def test_structural_failures_back_off() -> None:
    """While sampling is impossible, retries slow down: 5, 10, 20, ... up to max_backoff."""
    clock = Clock()
    sampler = _sampler(FakeRunner(DumpResult(UNSUPPORTED, "unsupported_python", "", 1)), clock)
    assert sampler.next_delay() == 0.0
    delays = []
    for _ in range(6):
        sampler.sample_once()
        delays.append(sampler.next_delay())
    assert delays == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert sampler.snapshot().unavailable.keys() == {"unsupported_python"}


def test_draining_uses_the_faster_interval() -> None:
    """set_draining(True) switches the schedule to draining_interval."""
    clock = Clock()
    sampler = _sampler(FakeRunner(ok()), clock, SamplerConfig(draining_interval=0.5))
    sampler.sample_once()
    assert sampler.next_delay() == 5.0
    sampler.set_draining(True)
    assert sampler.next_delay() == 0.5
    assert sampler.snapshot().draining


def test_target_gone_keeps_last_words_and_stops_sampling() -> None:
    """When the target goes, its last stacks are kept as stale last words and sampling stops."""
    clock = Clock()
    sampler = _sampler(FakeRunner(ok(), DumpResult(TARGET_GONE, TARGET_GONE, "gone", 1)), clock)
    sampler.sample_once()
    clock.now += 5
    sampler.sample_once()
    snapshot = sampler.snapshot()
    assert snapshot.unavailable.keys() == {"target_gone"}
    (words,) = snapshot.last_words
    assert (words.reason, words.stale, words.captured_at) == ("target_gone", True, 1000.0 + 1e9)
    assert any(t.reason == "queue_get" for t in words.threads)
    document = words.to_dict()
    assert json.loads(json.dumps(document))["reason"] == "target_gone"
    assert sampler.next_delay() == float("inf")
    sampler.set_target(2)
    assert sampler.next_delay() == 0.0
    assert sampler.snapshot().threads == ()


def test_last_words_fall_back_to_the_last_sample_and_stay_bounded() -> None:
    """A failed on-demand dump keeps the last good stacks marked stale; at most four are kept."""
    clock = Clock()
    timeout = DumpResult(TIMEOUT, TIMEOUT, "slow", 1)
    sampler = _sampler(FakeRunner(ok(), ok(), timeout), clock)
    sampler.sample_once()
    fresh = sampler.capture_last_words("budget_50")
    assert fresh is not None
    assert not fresh.stale
    stale = sampler.capture_last_words("budget_90")
    assert stale is not None
    assert stale.stale
    assert "timeout" in stale.note
    for reason in ("a", "b", "c"):
        sampler.capture_last_words(reason)
    assert [w.reason for w in sampler.snapshot().last_words] == ["budget_90", "a", "b", "c"]


def test_last_words_without_any_sample_is_none() -> None:
    """With no target, or nothing ever sampled and a failing dump, there are no last words."""
    assert PySpySampler(FakeRunner(ok()), None).capture_last_words("x") is None
    failing = FakeRunner(DumpResult(TIMEOUT, TIMEOUT, "slow", 1))
    assert PySpySampler(failing, 1).capture_last_words("x") is None


def test_a_runner_that_raises_is_a_failed_sample() -> None:
    """An exception from the runner is counted as failed and the sampler carries on."""

    class Exploding:
        def dump(
            self, pid: int, *, nonblocking: bool = True, locals: bool = False, timeout: float = 5.0
        ) -> DumpResult:
            raise RuntimeError("boom")

    sampler = PySpySampler(Exploding(), 1)
    result = sampler.sample_once()
    assert result is not None
    assert (result.result, result.reason) == (FAILED, "pyspy_error")
    assert sampler.snapshot().samples["failed"] == 1


def test_sample_duration_is_exported_as_a_histogram() -> None:
    """Each dump's wall time lands in cumulative buckets with a sum, a count and the last value."""
    sampler = _sampler(FakeRunner(ok(duration=0.04), ok(duration=0.3), ok(duration=20)), Clock())
    for _ in range(3):
        sampler.sample_once()
    snapshot = sampler.snapshot()
    buckets = dict(snapshot.duration_buckets)
    assert (buckets[0.025], buckets[0.05], buckets[0.5], buckets[10.0]) == (0, 1, 2, 2)
    assert snapshot.duration_count == 3
    assert snapshot.duration_sum == pytest.approx(20.34)
    assert snapshot.last_duration_seconds == 20


def test_retargeting_during_a_dump_discards_its_threads() -> None:
    """A dump that finishes after set_target() belongs to the old target and is not tracked."""
    runner = FakeRunner(ok())
    runner.gate = threading.Event()
    sampler = _sampler(runner, Clock())
    worker = threading.Thread(target=sampler.sample_once)
    worker.start()
    assert runner.started.wait(5)
    sampler.set_target(99)
    runner.gate.set()
    worker.join(5)
    assert sampler.snapshot().threads == ()
    assert sampler.snapshot().pid == 99


def test_snapshots_are_consistent_while_sampling() -> None:
    """Snapshots taken during sampling always show one whole dump and matching counters."""
    threads = parse_dump(RECORDING).threads
    runner = FakeRunner(*[ok(threads if i % 2 else threads[:5], duration=0) for i in range(400)])
    sampler = _sampler(runner, Clock(), SamplerConfig(max_per_minute=600))
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            sampler.sample_once()

    worker = threading.Thread(target=sample)
    worker.start()
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            snapshot = sampler.snapshot()
            assert len(snapshot.threads) in (0, 5, len(threads))
            assert snapshot.duration_count == sum(snapshot.samples[r] for r in pyspy.RESULTS)
    finally:
        stop.set()
        worker.join(5)


def test_background_thread_samples_and_stops_promptly() -> None:
    """start() samples on the interval in a daemon thread; stop() ends it at once."""
    runner = FakeRunner(ok())
    sampler = PySpySampler(runner, 1, SamplerConfig(interval=0.05))
    sampler.start()
    try:
        deadline = time.monotonic() + 5
        while runner.calls < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        start = time.monotonic()
        sampler.stop()
    assert runner.calls >= 3
    assert time.monotonic() - start < 1.0


def test_background_thread_waits_for_last_words_instead_of_spinning() -> None:
    """While last words are being dumped the loop waits; it neither spins nor dumps twice."""
    runner = FakeRunner(ok())
    runner.gate = threading.Event()
    sampler = PySpySampler(runner, 1, SamplerConfig(interval=0.05))
    catcher = threading.Thread(target=sampler.capture_last_words, args=("drain",))
    catcher.start()
    assert runner.started.wait(5)
    sampler.start()
    try:
        time.sleep(0.3)
        assert (runner.calls, sampler.snapshot().samples["busy"]) == (1, 0)
        runner.gate.set()
        catcher.join(5)
        deadline = time.monotonic() + 5
        while runner.calls < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        sampler.stop()
    assert runner.calls >= 2


def test_timeouts_back_off_too() -> None:
    """Repeated timeouts slow the schedule down like other failures, and a success resets it."""
    clock = Clock()
    timeout = DumpResult(TIMEOUT, TIMEOUT, "slow", 1)
    sampler = _sampler(FakeRunner(timeout, timeout, timeout, ok()), clock)
    delays = []
    for _ in range(4):
        sampler.sample_once()
        delays.append(sampler.next_delay())
    assert delays == [5.0, 10.0, 20.0, 5.0]
    assert sampler.snapshot().unavailable == {}


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("interval", 0, '"pyspy_interval" must be a number of seconds > 0: 0'),
        ("timeout", float("nan"), '"pyspy_timeout" must be a number of seconds > 0: nan'),
        ("draining_interval", -1, '"pyspy_draining_interval" must be'),
        ("max_per_minute", 0, '"pyspy_max_per_minute" must be a whole number from 1 to 600: 0'),
        ("max_per_minute", True, '"pyspy_max_per_minute" must be a whole number'),
    ],
)
def test_config_errors_name_the_setting(setting: str, value: object, message: str) -> None:
    """A bad sampler setting is refused with its name, the rule and the value."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        SamplerConfig(**{setting: value})  # type: ignore[arg-type]


# -- sampler with the real py-spy -----------------------------------------------------------------


def test_real_thread_stuck_in_queue_get_is_reported_with_its_duration(
    queue_target: subprocess.Popen[str],
) -> None:
    """Real py-spy every 0.5 s finds the consumer in queue_get, blocked >= 2 s; then the exit."""
    sampler = PySpySampler(
        PySpyRunner(),
        queue_target.pid,
        SamplerConfig(interval=0.5, timeout=5.0),
        kernel_waits=ProcKernelWaits(),
    )
    sampler.start()
    try:
        deadline = time.monotonic() + 10
        consumer = None
        while time.monotonic() < deadline:
            consumer = next((t for t in sampler.snapshot().threads if t.name == "consumer"), None)
            if consumer is not None and consumer.blocked_seconds >= 2.0:
                break
            time.sleep(0.1)
    finally:
        sampler.stop()
    assert consumer is not None
    assert (consumer.reason, consumer.evidence) == ("queue_get", "frames")
    assert consumer.blocked_seconds >= 2.0
    assert consumer.samples >= 5
    assert consumer.site.startswith("Queue.get (queue.py:")
    main = next(t for t in sampler.snapshot().threads if t.name == "MainThread")
    assert (main.reason, main.evidence) == ("sleep", "kernel")
    snapshot = sampler.snapshot()
    assert snapshot.samples["ok"] >= 5
    assert snapshot.last_duration_seconds is not None

    queue_target.kill()
    queue_target.wait(10)
    result = sampler.sample_once()
    assert result is not None
    assert result.result == TARGET_GONE
    after = sampler.snapshot()
    assert after.unavailable.keys() == {"target_gone"}
    (words,) = after.last_words
    assert any(t.name == "consumer" and t.reason == "queue_get" for t in words.threads)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
