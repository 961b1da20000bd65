"""The py-spy sampler: dumps one target on an interval under rate caps, and tracks stuck threads.

:class:`PySpySampler` classifies every thread (:mod:`drainwatch.collectors.kernel_waits`),
tracks how long each has been stuck in the same wait, keeps "last words", and hands the agent
a consistent :class:`SamplerSnapshot` (:mod:`drainwatch.collectors.sampler_snapshot`). It
lives apart from :mod:`drainwatch.collectors.pyspy` (the runner and the parser of one dump)
to keep each module a readable size; it uses the runner only through the :class:`DumpRunner`
protocol.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from drainwatch._clock import steady_time
from drainwatch._thread_waits import Wait
from drainwatch.collectors.kernel_waits import KernelWaitReader, ProcKernelWaits, classify_thread
from drainwatch.collectors.pyspy import (
    BINARY_MISSING,
    DENIED,
    FAILED,
    PYSPY_ERROR,
    RESULTS,
    TARGET_GONE,
    UNSUPPORTED,
    DumpResult,
    PySpyFrame,
    PySpyThread,
)
from drainwatch.collectors.sampler_snapshot import LastWords, SamplerSnapshot, ThreadWait

# The kernel-wait reader and the snapshot types are how a sampler is built and read, so
# callers get them from here along with the sampler.
__all__ = [
    "DURATION_BUCKETS",
    "SKIPPED_BUSY",
    "SKIPPED_RATE",
    "DumpRunner",
    "KernelWaitReader",
    "LastWords",
    "ProcKernelWaits",
    "PySpySampler",
    "SamplerConfig",
    "SamplerSnapshot",
    "ThreadWait",
    "classify_thread",
]

# -- sampler --------------------------------------------------------------------------------------

SKIPPED_BUSY: Final = "busy"  # a dump of this target was still running
SKIPPED_RATE: Final = "rate_limited"  # the per-minute cap was reached
DURATION_BUCKETS: Final = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Failures that make sampling impossible until something changes (not a one-off hiccup).
_STRUCTURAL: Final = frozenset({DENIED, UNSUPPORTED})
_MAX_LAST_WORDS: Final = 4

_log = logging.getLogger("drainwatch.collectors.pyspy")


class DumpRunner(Protocol):
    """What the sampler needs from :class:`PySpyRunner`; tests hand in fakes."""

    def dump(
        self, pid: int, *, nonblocking: bool = True, locals: bool = False, timeout: float = 5.0
    ) -> DumpResult: ...


def _positive(name: str, value: float) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and value > 0 and value != float("inf")):
        raise ValueError(f'"{name}" must be a number of seconds > 0: {value!r}')


@dataclass(frozen=True, slots=True)
class SamplerConfig:
    """How often and how gently to sample. Flags: ``--pyspy-interval``, ``--pyspy-timeout``, ..."""

    interval: float = 5.0
    draining_interval: float = 1.0  # used between set_draining(True) and set_draining(False)
    timeout: float = 3.0
    max_per_minute: int = 60
    nonblocking: bool = True  # blocking mode pauses the target for every dump
    capture_locals: bool = False  # locals can hold secrets
    max_backoff: float = 60.0  # longest wait between retries while sampling is impossible

    def __post_init__(self) -> None:
        _positive("pyspy_interval", self.interval)
        _positive("pyspy_draining_interval", self.draining_interval)
        _positive("pyspy_timeout", self.timeout)
        _positive("pyspy_max_backoff", self.max_backoff)
        if isinstance(self.max_per_minute, bool) or not (
            isinstance(self.max_per_minute, int) and 1 <= self.max_per_minute <= 600
        ):
            raise ValueError(
                f'"pyspy_max_per_minute" must be a whole number from 1 to 600: '
                f"{self.max_per_minute!r}"
            )


@dataclass(slots=True)
class _Track:
    reason: str
    fingerprint: str
    since_wall: float
    since_mono: float
    samples: int


def _fingerprint(frames: tuple[PySpyFrame, ...]) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for frame in frames:
        digest.update(f"{frame.filename}\0{frame.name}\0{frame.line}\n".encode())
    return digest.hexdigest()


class PySpySampler:
    """Samples one target with py-spy, at most one dump in flight and ``max_per_minute``.

    Thread-safe: :meth:`sample_once`, :meth:`capture_last_words`, :meth:`snapshot` and the
    setters may be called from any thread; dumps run outside the lock. Nothing here raises
    out of a sample: every failure is a counted result and, when sampling is impossible, an
    ``unavailable`` reason with a message and one log line.

    ``diagnose(pid, result)`` (``preflight.diagnose_denial``) names the precise reason when
    py-spy is refused: ``no_ptrace``, ``ptrace_scope``, ``proc_root_unreadable``, ...
    """

    def __init__(
        self,
        runner: DumpRunner,
        pid: int | None,
        config: SamplerConfig | None = None,
        *,
        kernel_waits: KernelWaitReader | None = None,
        diagnose: Callable[[int, DumpResult], tuple[str, str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = steady_time,
    ) -> None:
        self.config = config or SamplerConfig()
        self._runner = runner
        self._kernel = kernel_waits
        self._diagnose = diagnose
        self._clock = clock
        self._wall = wall_clock
        self._cond = threading.Condition()
        self._pid = pid
        self._draining = False
        self._in_flight = False
        self._starts: deque[float] = deque()
        self._last_start: float | None = None
        self._samples: dict[str, int] = dict.fromkeys((*RESULTS, SKIPPED_BUSY, SKIPPED_RATE), 0)
        self._last_result: str | None = None
        self._last_reason = ""
        self._last_ok_at: float | None = None
        self._last_duration: float | None = None
        self._duration_sum = 0.0
        self._bucket_counts = [0] * len(DURATION_BUCKETS)
        self._unavailable: dict[str, str] = {}
        self._failures = 0
        self._gone = False
        self._tracks: dict[tuple[int | None, str], _Track] = {}
        self._threads: tuple[ThreadWait, ...] = ()
        self._last_words: dict[str, LastWords] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- control ----------------------------------------------------------------------------------

    def set_target(self, pid: int | None) -> None:
        """Sample ``pid`` from now on (``None``: nothing); forgets the previous target's threads."""
        with self._cond:
            if pid != self._pid or self._gone:
                self._pid = pid
                self._gone = False
                self._tracks.clear()
                self._threads = ()
                self._unavailable.clear()
                self._failures = 0
                self._last_start = None
            self._cond.notify_all()

    def set_draining(self, draining: bool) -> None:
        """Use ``draining_interval`` while the target drains (the loop wakes up at once
        when that changes). Called on every outside-view step: the same value again wakes
        nothing."""
        with self._cond:
            if draining == self._draining:
                return
            self._draining = draining
            self._cond.notify_all()

    def next_delay(self) -> float:
        """Seconds until the next sample is due; ``inf`` with no target or a gone one."""
        with self._cond:
            return self._next_delay_locked(self._clock())

    def _next_delay_locked(self, now: float) -> float:
        if self._pid is None or self._gone:
            return float("inf")
        if self._last_start is None:
            return 0.0
        base = self.config.draining_interval if self._draining else self.config.interval
        if self._failures:
            # Whatever failed (denied, unsupported, timeouts), retry ever more slowly.
            base = min(base * 2 ** min(self._failures - 1, 16), self.config.max_backoff)
        return max(0.0, self._last_start + base - now)

    def start(self) -> None:
        """Sample in a daemon thread until :meth:`stop`."""
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="drainwatch-pyspy", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread; waits for a dump in progress (bounded by the dump timeout)."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._cond.notify_all()
        if thread is not None:
            thread.join(self.config.timeout + 6.0 if timeout is None else timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                if self._in_flight:  # last words being captured: wait for them, then schedule
                    self._cond.wait()
                    continue
                delay = self._next_delay_locked(self._clock())
                if delay > 0:
                    self._cond.wait(None if delay == float("inf") else delay)
                    continue
            self.sample_once()

    # -- sampling ---------------------------------------------------------------------------------

    def sample_once(self) -> DumpResult | None:
        """One dump now unless one is in flight or the per-minute cap is reached (``None``)."""
        with self._cond:
            pid = self._pid
            if pid is None:
                return None
            if self._in_flight:
                self._samples[SKIPPED_BUSY] += 1
                return None
            now = self._clock()
            while self._starts and self._starts[0] <= now - 60.0:
                self._starts.popleft()
            if len(self._starts) >= self.config.max_per_minute:
                self._samples[SKIPPED_RATE] += 1
                self._last_start = now  # try again one interval later
                return None
            self._claim_locked(now)
        return self._dump_and_record(pid)

    def capture_last_words(self, reason: str) -> LastWords | None:
        """Dump now (past the interval and the per-minute cap, never two at once) and keep it
        as last words for ``reason``; if the dump fails, keep the last successful sample
        instead, marked stale. ``None`` when there is nothing at all."""
        with self._cond:
            free = self._cond.wait_for(lambda: not self._in_flight, self.config.timeout + 2.0)
            pid = self._pid
            if pid is None:
                return None
            if free and not self._gone:
                self._claim_locked(self._clock())
        result = self._dump_and_record(pid) if free and not self._gone else None
        with self._cond:
            words = self._words_locked(reason, pid, result)
            if words is not None:
                self._keep_words_locked(words)
            return words

    def target_gone(self, reason: str) -> LastWords | None:
        """The agent saw the target exit: keep the last successful sample as last words for
        ``reason`` without dumping again (the PID may already belong to another process)
        and stop sampling that PID until ``set_target``."""
        with self._cond:
            pid = self._pid
            words = None
            if pid is not None and self._threads and self._last_ok_at is not None:
                note = "the target had exited; these stacks are from the last successful sample"
                words = LastWords(reason, pid, self._last_ok_at, True, note, self._threads)
                self._keep_words_locked(words)
            self._gone = True
            self._tracks.clear()
            self._threads = ()
            self._cond.notify_all()
            return words

    def _claim_locked(self, now: float) -> None:
        self._in_flight = True
        self._starts.append(now)
        self._last_start = now

    def _dump_and_record(self, pid: int) -> DumpResult:
        config = self.config
        try:
            result = self._runner.dump(
                pid,
                nonblocking=config.nonblocking,
                locals=config.capture_locals,
                timeout=config.timeout,
            )
        except Exception as error:  # a runner must not take the sampler down
            result = DumpResult(FAILED, PYSPY_ERROR, f"py-spy runner raised {error!r}", pid)
        threads = self._classify(pid, result) if result.ok else []
        unavailable = self._explain(pid, result)
        with self._cond:
            try:
                self._record_locked(pid, result, threads, unavailable)
            finally:
                self._in_flight = False
                self._cond.notify_all()
        return result

    def _classify(self, pid: int, result: DumpResult) -> list[tuple[PySpyThread, Wait]]:
        return [(thread, classify_thread(thread, pid, self._kernel)) for thread in result.threads]

    def _explain(self, pid: int, result: DumpResult) -> tuple[str, str] | None:
        if result.result == DENIED and self._diagnose is not None:
            try:
                return self._diagnose(pid, result)
            except Exception:  # the diagnosis is a refinement; the denial stands without it
                return result.reason, result.message
        if result.result in _STRUCTURAL or result.reason in (BINARY_MISSING, TARGET_GONE):
            return result.reason, result.message
        return None

    def _record_locked(
        self,
        pid: int,
        result: DumpResult,
        threads: list[tuple[PySpyThread, Wait]],
        unavailable: tuple[str, str] | None,
    ) -> None:
        self._samples[result.result] = self._samples.get(result.result, 0) + 1
        self._last_result, self._last_reason = result.result, result.reason
        self._last_duration = result.duration_seconds
        self._duration_sum += result.duration_seconds
        for index, bound in enumerate(DURATION_BUCKETS):
            if result.duration_seconds <= bound:
                self._bucket_counts[index] += 1
        if pid != self._pid:
            return  # retargeted while this dump ran: its threads belong to the old target
        if result.ok:
            if self._unavailable:
                _log.info("py-spy sampling of pid %d works again", pid)
            self._unavailable.clear()
            self._failures = 0
            self._track_locked(threads)
            return
        self._failures += 1
        if result.result == TARGET_GONE:
            self._gone = True
            words = self._stale_words_locked(TARGET_GONE, pid, result)
            if words is not None and TARGET_GONE not in self._last_words:
                self._keep_words_locked(words)
        if unavailable is not None:
            reason, message = unavailable
            if reason not in self._unavailable:
                _log.warning(
                    "py-spy sampling of pid %d is unavailable (%s): %s", pid, reason, message
                )
            self._unavailable = {reason: message}

    def _track_locked(self, threads: list[tuple[PySpyThread, Wait]]) -> None:
        now_mono, now_wall = self._clock(), self._wall()
        names = [thread.thread_name or "" for thread, _ in threads]
        repeated = {name for name, count in Counter(names).items() if count > 1}
        tracks: dict[tuple[int | None, str], _Track] = {}
        found = []
        for (thread, wait), name in zip(threads, names, strict=True):
            tid = thread.os_thread_id if thread.os_thread_id is not None else thread.thread_id
            key = (tid, name)
            fingerprint = _fingerprint(thread.frames)
            track = self._tracks.get(key)
            if track is None or (track.reason, track.fingerprint) != (wait.reason, fingerprint):
                track = _Track(wait.reason, fingerprint, now_wall, now_mono, 0)
            track.samples += 1
            tracks[key] = track
            label = name or f"thread-{tid}"
            if name in repeated:
                label = f"{label} [{tid}]"
            index = wait.frame_index
            found.append(
                ThreadWait(
                    label=label,
                    name=name,
                    os_thread_id=thread.os_thread_id,
                    thread_id=thread.thread_id,
                    reason=wait.reason,
                    evidence=wait.evidence,
                    active=thread.active,
                    owns_gil=thread.owns_gil,
                    since=track.since_wall,
                    blocked_seconds=max(0.0, now_mono - track.since_mono),
                    samples=track.samples,
                    site=thread.frames[index].describe() if index is not None else "",
                    frames=thread.frames,
                )
            )
        self._tracks = tracks
        self._threads = tuple(found)
        self._last_ok_at = now_wall

    def _words_locked(self, reason: str, pid: int, result: DumpResult | None) -> LastWords | None:
        if result is not None and result.ok and pid == self._pid:
            return LastWords(reason, pid, self._wall(), False, "captured on demand", self._threads)
        return self._stale_words_locked(reason, pid, result)

    def _stale_words_locked(
        self, reason: str, pid: int, result: DumpResult | None
    ) -> LastWords | None:
        if not self._threads or self._last_ok_at is None:
            return None
        why = f"the dump failed ({result.result}: {result.message})" if result else "no dump"
        note = f"{why}; these stacks are from the last successful sample"
        return LastWords(reason, pid, self._last_ok_at, True, note, self._threads)

    def _keep_words_locked(self, words: LastWords) -> None:
        self._last_words.pop(words.reason, None)
        self._last_words[words.reason] = words
        while len(self._last_words) > _MAX_LAST_WORDS:
            del self._last_words[next(iter(self._last_words))]

    def snapshot(self) -> SamplerSnapshot:
        """A copy of everything the agent exports or reports, taken under the lock."""
        with self._cond:
            cumulative = tuple(zip(DURATION_BUCKETS, self._bucket_counts, strict=True))
            count = sum(v for k, v in self._samples.items() if k in RESULTS)
            return SamplerSnapshot(
                pid=self._pid,
                draining=self._draining,
                samples=dict(self._samples),
                last_result=self._last_result,
                last_reason=self._last_reason,
                last_sample_at=self._last_ok_at,
                last_duration_seconds=self._last_duration,
                duration_sum=self._duration_sum,
                duration_count=count,
                duration_buckets=cumulative,
                unavailable=dict(self._unavailable),
                consecutive_failures=self._failures,
                threads=self._threads,
                last_words=tuple(self._last_words.values()),
            )
