"""The reporter: a daemon thread that sends snapshots, plus the synchronous event path.

A thread rather than a task, so reports keep flowing while the application's event loop is
blocked, which is exactly when they matter. Rare events (close, after-close use) are sent
from the thread where they happen, at once, so a SIGKILL right after ``close()`` loses
nothing; counters and gauges follow in periodic snapshots.
"""

from __future__ import annotations

import platform
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from . import _inflight, _shutdown
from ._caps import CAPPED
from ._clock import steady_time
from ._protocol import Packer
from ._settings import Settings
from ._tracking import TRACKING
from ._transport import Transport
from ._version import __version__

if TYPE_CHECKING:
    from ._channel_base import ChannelBase

# When woken early (after-close bursts), snapshots still come no closer than this.
_MIN_HASTENED_GAP_SECONDS = 0.05
_RETRY_PAUSE_SECONDS = 0.005
_PATIENT_RECONNECT_SECONDS = 0.05
_MAX_PENDING_RETIRED = 10_000
# While the process shuts down every 100 ms matters: the agent's last view of what was in
# flight is at most this old if the process is SIGKILLed.
SHUTDOWN_INTERVAL_SECONDS = 0.1


class Reporter:
    """Owns the transport, the set of live channels, and the snapshot thread.

    Thread safety: every public method may be called from any thread and never raises
    into the caller; ``emit`` and ``retire`` never block on the network.
    """

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        channels: dict[int, weakref.ref[ChannelBase]] | None = None,
        packer: Packer | None = None,
    ) -> None:
        self.settings = settings
        self._transport = transport
        self._packer = Packer(settings.service) if packer is None else packer
        self._channels: dict[int, weakref.ref[ChannelBase]] = dict(channels or {})
        # Final records of collected channels, appended from __del__ without any lock: a
        # collection can run inside an allocation made while this thread holds _lock.
        self._retired: deque[tuple[int, dict[str, Any]]] = deque()
        self._lock = threading.Lock()
        self._drop_lock = threading.RLock()
        self._wake = threading.Event()
        # Set with _wake when a snapshot is wanted now; _wake alone only re-reads the tick.
        self._hastened = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = steady_time()
        self.internal_errors = 0

    # -- channels --------------------------------------------------------------------------

    def register(self, channel: ChannelBase) -> None:
        with self._lock:
            self._channels[channel._id] = weakref.ref(channel)

    def retire(self, channel_id: int, final_record: dict[str, Any]) -> None:
        """Keep a collected channel's final state for the next snapshot.

        Called from ``__del__``, so it takes no lock. Bounded: when reporting is off, or
        the thread cannot keep up with channels being collected, the final state is
        dropped (and counted) instead of piling up in memory.
        """
        if self.settings.enabled and len(self._retired) < _MAX_PENDING_RETIRED:
            self._retired.append((channel_id, final_record))
            return
        with self._drop_lock:
            self._packer.dropped += 1

    def channel_refs(self) -> dict[int, weakref.ref[ChannelBase]]:
        with self._lock:
            return dict(self._channels)

    @property
    def packer(self) -> Packer:
        return self._packer

    @property
    def transport(self) -> Transport:
        return self._transport

    # -- sending -----------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Records this process could not hand to the kernel (no agent, agent behind)."""
        return self._packer.dropped

    def emit(self, record: dict[str, Any]) -> None:
        """Send one record now, from the calling thread, without waiting."""
        # When the agent is only behind, a snapshot soon carries the same cumulative state;
        # when it is absent, an early snapshot would be refused too, so wait for the tick.
        if not self._send([record], deadline=None) and self._transport.connected:
            self.hasten()

    def emit_many(self, records: list[dict[str, Any]]) -> None:
        """Send several records now, packed together, then wake the thread so it picks up
        the shutdown interval (and resends soon if this send was refused)."""
        self._send(records, deadline=None)
        self.hasten()

    def _send(self, records: list[dict[str, Any]], deadline: float | None) -> bool:
        """Pack and send; retry a refused datagram until ``deadline`` (monotonic), if any.

        Every record of a datagram that is finally refused is counted as dropped.
        """
        delivered = True
        for datagram, count in self._packer.pack(records):
            while not self._transport.send(datagram):
                if deadline is None or time.monotonic() >= deadline:
                    delivered = False
                    with self._drop_lock:
                        self._packer.dropped += count
                    break
                # An agent that restarted is reconnected to within the deadline, not only
                # after the idle backoff (longer than the flush at exit).
                self._transport.shorten_backoff(_PATIENT_RECONNECT_SECONDS)
                time.sleep(_RETRY_PAUSE_SECONDS)
        return delivered

    def snapshot_records(self) -> list[dict[str, Any]]:
        retired: list[dict[str, Any]] = []
        with self._lock:
            while self._retired:
                channel_id, final_record = self._retired.popleft()
                self._channels.pop(channel_id, None)
                retired.append(final_record)
            refs = list(self._channels.values())
        records: list[dict[str, Any]] = [self._process_record(len(refs))]
        records.extend(self.shutdown_records())
        try:
            records.extend(TRACKING.records(self.settings, refs))
        except Exception:  # tracking is a view; the snapshot goes out without it
            self.internal_errors += 1
        for ref in refs:
            channel = ref()
            if channel is None:
                continue
            try:
                records.append(channel.record())
            except Exception:  # a channel mid-teardown; it is retired with its final state
                self.internal_errors += 1
        records.extend(retired)
        return records

    @staticmethod
    def shutdown_records() -> list[dict[str, Any]]:
        """The shutdown state and the in-flight counters: what the agent judges a drain by."""
        return [_shutdown.STATE.record(), *_inflight.REGISTRY.records()]

    def _process_record(self, channel_count: int) -> dict[str, Any]:
        return {
            "type": "process",
            "started": self._started_at,
            "python": platform.python_version(),
            "sdk": __version__,
            "channels": channel_count,
            "internal_errors": self.internal_errors,
            **({"capped": capped} if (capped := CAPPED.counts()) else {}),
        }

    def flush(self, timeout: float = 0.0) -> bool:
        """Send a full snapshot from the calling thread; True if every datagram went out.

        With ``timeout`` > 0, a datagram the kernel refuses (agent behind or restarting) is
        retried until the timeout; the reporter thread itself never waits.
        """
        deadline = time.monotonic() + timeout if timeout > 0 else None
        try:
            return self._send(self.snapshot_records(), deadline)
        except Exception:
            self.internal_errors += 1
            return False

    def hasten(self) -> None:
        """Ask the thread for a snapshot soon (rate-limited) instead of at the next tick."""
        self._hastened = True
        self._wake.set()

    def retick(self) -> None:
        """A loop started or stopped being watched: re-read how often to check for stalls."""
        self._wake.set()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="drainwatch-reporter", daemon=True)
        self._thread.start()

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's thread, locks and socket."""
        self._lock = threading.Lock()
        self._drop_lock = threading.RLock()
        self._thread = None
        self._transport.close()

    def stop(self, timeout: float = 1.0, close_transport: bool = True) -> None:
        """Stop the thread, send one final snapshot from the caller, close the transport
        (unless a successor goes on with it)."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self.settings.enabled:
            self.flush(timeout=min(timeout, 0.5))
        if close_transport:
            self._transport.close()

    def _run(self) -> None:
        last_snapshot = time.monotonic()
        while not self._stopping.is_set():
            interval = self.settings.interval
            if _shutdown.STATE.shutting_down:
                interval = min(interval, SHUTDOWN_INTERVAL_SECONDS)
            # Between snapshots, wake when a watched loop's probe is overdue by the stall
            # threshold, so that a blocked loop's stack is read while it is still blocked.
            check = TRACKING.next_check() if self.settings.tracking else None
            due = last_snapshot + interval
            until = due if check is None else min(due, max(check, time.monotonic() + 0.001))
            self._wake.wait(max(0.0, until - time.monotonic()))
            self._wake.clear()
            if self._stopping.is_set():
                return
            if check is not None:
                TRACKING.check_stalls()
            woken_early, self._hastened = self._hastened, False
            if not woken_early and time.monotonic() < last_snapshot + interval:
                continue
            self.flush()
            last_snapshot = time.monotonic()
            if woken_early:
                time.sleep(_MIN_HASTENED_GAP_SECONDS)

    @property
    def thread_ident(self) -> int | None:
        """The reporter thread's ident (dumps leave it out), once it runs."""
        thread = self._thread
        return None if thread is None else thread.ident

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
