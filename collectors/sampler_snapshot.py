"""What the py-spy sampler hands out: its threads' waits, last words and a state snapshot.

Frozen data copied out of :class:`~drainwatch.collectors.pyspy_sampler.PySpySampler` under
its lock, safe to read from any thread; ``to_dict`` gives the JSON shape of the report.
"""

from __future__ import annotations

from dataclasses import dataclass

from drainwatch._thread_waits import NOT_WAITING
from drainwatch.collectors.pyspy import PySpyFrame


@dataclass(frozen=True, slots=True)
class ThreadWait:
    """One thread as of the last successful sample. Times: wall-clock Unix seconds."""

    label: str  # thread name, made unique within the dump
    name: str
    os_thread_id: int | None
    thread_id: int | None
    reason: str  # a thread_waits reason
    evidence: str  # frames | kernel | activity | none
    active: bool | None
    owns_gil: bool | None
    since: float  # first sample that saw this thread in this wait at this place
    blocked_seconds: float  # sampled_at - since: a lower bound, resolution = the interval
    samples: int  # consecutive samples in this wait
    site: str  # the frame that decided, as "Queue.get (queue.py:171)"
    frames: tuple[PySpyFrame, ...]

    @property
    def waiting(self) -> bool:
        return self.reason not in NOT_WAITING

    def to_dict(self) -> dict[str, object]:
        return {
            "thread": self.label,
            "os_thread_id": self.os_thread_id,
            "reason": self.reason,
            "evidence": self.evidence,
            "active": self.active,
            "blocked_seconds": round(self.blocked_seconds, 3),
            "since": self.since,
            "site": self.site,
            "stack": [frame.describe() for frame in self.frames],
            **(
                {"locals": [[(v.name, v.repr) for v in f.locals or ()] for f in self.frames]}
                if any(f.locals for f in self.frames)
                else {}
            ),
        }


@dataclass(frozen=True, slots=True)
class LastWords:
    """The stacks kept for the report; ``stale`` when they come from an earlier sample."""

    reason: str
    pid: int
    captured_at: float
    stale: bool
    note: str
    threads: tuple[ThreadWait, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "reason": self.reason,
            "pid": self.pid,
            "captured_at": self.captured_at,
            "stale": self.stale,
            "note": self.note,
            "threads": [thread.to_dict() for thread in self.threads],
        }


@dataclass(frozen=True, slots=True)
class SamplerSnapshot:
    """A consistent copy of the sampler's state for one scrape or one report."""

    pid: int | None
    draining: bool
    samples: dict[str, int]  # by result, including busy and rate_limited skips
    last_result: str | None
    last_reason: str
    last_sample_at: float | None  # wall clock of the last successful sample
    last_duration_seconds: float | None
    duration_sum: float
    duration_count: int
    duration_buckets: tuple[tuple[float, int], ...]  # (le, cumulative count); +Inf = count
    unavailable: dict[str, str]  # reason -> message; empty while sampling works
    consecutive_failures: int
    threads: tuple[ThreadWait, ...]
    last_words: tuple[LastWords, ...]
