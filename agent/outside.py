"""The agent's outside view of its target: processes, listening ports, stacks and probes.

``OutsideView`` runs one sampling thread that finds the target (``TargetDiscovery``), samples
its processes and sockets (``ProcessCollector``) into the ``PortTimeline``, and steers the
py-spy sampler (its own thread) and the health probes (tasks on the agent's loop): all of them
go faster while the target drains. Each lifetime of a target's topmost process is a
``Generation``; the reports module turns a generation into the outside part of a drain report.

Why a thread and not the event loop: psutil and the netlink dump are blocking calls, and the
listener timeline needs samples every 20-50 ms whatever the loop is doing (serving a scrape
of thousands of series, say).

Locks: this view's lock is never held while taking the agent state's lock (the SDK processes
are copied first), and reports read this view with the state's lock held.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final

from drainwatch._clock import steady_time
from drainwatch.collectors.port_timeline import (
    PortRoles,
    PortTimeline,
    SamplingPlan,
    TimelineView,
)
from drainwatch.collectors.preflight import diagnose_denial, run_preflight
from drainwatch.collectors.probe_specs import GrpcProbeSpec, HttpProbeSpec
from drainwatch.collectors.probes import ProbeRunner, ProbeStatus, probe_from_spec
from drainwatch.collectors.process import ProcessCollector, ProcessSample
from drainwatch.collectors.pyspy import PySpyRunner
from drainwatch.collectors.pyspy_sampler import (
    ProcKernelWaits,
    PySpySampler,
    SamplerConfig,
    SamplerSnapshot,
)
from drainwatch.collectors.targets import (
    ProcessId,
    SdkProcess,
    TargetDiscovery,
    Targets,
    TargetSelector,
)

from .config import AgentConfig
from .state import State

logger = logging.getLogger("drainwatch.agent")

# How often to look for the target again: while none is found, while it runs (new workers,
# a cmdline match), and at most this often when a sample saw a process go.
_SEARCH_SECONDS: Final = 1.0
_RESCAN_SECONDS: Final = 5.0
_GENERATIONS_KEPT: Final = 16
LAST_WORDS_BUDGET: Final = "drain_budget"
LAST_WORDS_GONE: Final = "target_gone"


@dataclass(slots=True)
class Generation:
    """One lifetime of the target's topmost process (a restart starts a new one)."""

    root: ProcessId
    service: str
    found_by: str
    first_seen: float
    sdk_instances: set[str] = field(default_factory=set)
    pids: set[int] = field(default_factory=set)
    last_alive: float | None = None
    gone_noticed: float | None = None
    gone_reason: str | None = None
    shutdown_hint: float | None = None  # the SDK's signal or stop, if it reported one
    words_taken: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class SdkCopy:
    """What the outside view needs from the SDK's side, copied under the state's lock."""

    processes: tuple[SdkProcess, ...] = ()
    roles: tuple[tuple[int, str], ...] = ()  # port -> role the SDK named
    shutdown_starts: dict[int, float] = field(default_factory=dict)  # pid -> first sign
    services: dict[int, str] = field(default_factory=dict)  # pid -> service


@dataclass(frozen=True, slots=True)
class OutsideSnapshot:
    """Everything reports and metrics need, copied at one moment."""

    at: float
    timeline: TimelineView
    generations: tuple[Generation, ...]  # copies, oldest first
    targets: Targets | None
    last_sample: ProcessSample | None
    last_full_sample: ProcessSample | None  # the latest with CPU, memory, threads, fds
    probes: tuple[ProbeStatus, ...]
    sampler: SamplerSnapshot | None
    sampled_pid: int | None
    samples: int
    sample_cpu_seconds: float  # CPU time this agent spent sampling, in all


class OutsideView:
    """Owns the outside collectors of one agent. ``start``/``stop`` the sampling thread;
    ``start_probes``/``stop_probes`` on the event loop. Thread-safe readers."""

    def __init__(
        self,
        config: AgentConfig,
        state: State,
        *,
        discovery: TargetDiscovery | None = None,
        collector: ProcessCollector | None = None,
        sampler: PySpySampler | None = None,
        clock: Callable[[], float] = steady_time,
    ) -> None:
        settings = config.outside
        self._state = state
        self._budget = config.drain_budget_seconds
        self._clock = clock
        self.selector = TargetSelector(
            pid=settings.target.pid,
            cmdline=settings.target.cmdline,
            from_sdk=settings.target.from_sdk,
        )
        self.discovery = discovery or TargetDiscovery(self.selector, clock=clock)
        self.collector = collector or ProcessCollector(clock=clock)
        self._base_roles = PortRoles(
            health_ports=settings.ports.health,
            metrics_ports=settings.ports.metrics,
            probe_targets=settings.probes.targets,
        )
        self.timeline = PortTimeline(self._base_roles)
        self.plan = SamplingPlan(
            idle_seconds=settings.sampling.interval_seconds,
            draining_seconds=settings.sampling.draining_interval_seconds,
        )
        self._last_words_at = settings.pyspy.last_words_at
        self.sampler = sampler
        if sampler is None and settings.pyspy.enabled:
            pyspy = settings.pyspy
            self.sampler = PySpySampler(
                PySpyRunner(pyspy.binary),
                None,
                SamplerConfig(
                    interval=pyspy.interval_seconds,
                    draining_interval=pyspy.draining_interval_seconds,
                    timeout=pyspy.timeout_seconds,
                    max_per_minute=pyspy.max_per_minute,
                    nonblocking=not pyspy.blocking,
                    capture_locals=pyspy.locals,
                ),
                kernel_waits=ProcKernelWaits(),
                diagnose=diagnose_denial,
            )
        self._pyspy_binary = settings.pyspy.binary
        probes = settings.probes
        specs: list[HttpProbeSpec | GrpcProbeSpec] = [*probes.http, *probes.grpc]
        self.probes: ProbeRunner | None = None
        if specs:  # names were checked unique with the config
            self.probes = ProbeRunner(
                [probe_from_spec(spec, probes.timeout_seconds) for spec in specs],
                probes.interval_seconds,
                probes.fast_interval_seconds,
                clock=clock,
            )
        self._lock = threading.Lock()
        self._generations: deque[Generation] = deque(maxlen=_GENERATIONS_KEPT)
        self._targets: Targets | None = None
        self._last_sample: ProcessSample | None = None
        self._last_full: ProcessSample | None = None
        self._sampled_pid: int | None = None
        self._samples = 0
        self._sample_cpu = 0.0
        self._sdk_key: tuple[tuple[int, str], ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._preflight_logged = False

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """False when nothing could ever be a target (no selector at all)."""
        return self.selector.configured

    def start(self) -> None:
        if self._thread is not None or not self.active:
            return
        self._stop.clear()
        if self.sampler is not None:
            self.sampler.start()
        self._thread = threading.Thread(target=self._run, name="drainwatch-outside", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5.0)
        if self.sampler is not None:
            self.sampler.stop(timeout=self.sampler.config.timeout + 2.0)

    async def start_probes(self) -> None:
        if self.probes is not None:
            await self.probes.start()

    async def stop_probes(self) -> None:
        if self.probes is not None:
            await self.probes.stop()

    # -- the sampling loop ----------------------------------------------------------------------

    def _run(self) -> None:
        next_scan = 0.0
        while not self._stop.is_set():
            try:
                delay, next_scan = self._step(next_scan)
            except Exception:  # never let one odd sample end the outside view
                logger.exception("drainwatch agent: outside sampling failed; retrying")
                delay = _SEARCH_SECONDS
            self._stop.wait(delay)

    def _step(self, next_scan: float) -> tuple[float, float]:
        """One round: maybe discover, sample, steer. Returns (delay, next scan time)."""
        sdk = self.copy_sdk()
        now = self._clock()
        sdk_key = tuple(sorted((process.pid, process.instance) for process in sdk.processes))
        targets = self._targets
        only_sdk = self.selector.pid is None and self.selector.cmdline is None
        if only_sdk and not sdk.processes and (targets is None or not targets.up):
            # Nothing to look for: no scan of /proc (it costs ~0.1 ms per process).
            targets = self._targets = Targets(at=now, processes=())
            self._sdk_key = sdk_key
        elif now >= next_scan or sdk_key != self._sdk_key or targets is None:
            self._sdk_key = sdk_key
            targets = self.discover(sdk)
            next_scan = now + (_RESCAN_SECONDS if targets.up else _SEARCH_SECONDS)
        hint = self._note_hints(sdk.shutdown_starts) or self._probe_failing()
        with self._lock:
            last = self._last_sample
        # Keep sampling the processes seen alive last time: the sample that finds them gone
        # is what closes their ports "by exit" and dates the exit.
        previous = last.alive if last is not None else ()
        ids = tuple(dict.fromkeys((*targets.ids, *(process.id for process in previous))))
        if not ids:
            return _SEARCH_SECONDS, next_scan
        _, full = self.plan.next_sample(self.timeline.view(), self._clock(), hint)
        sample = self.collector.sample(ids, full=full)
        self.timeline.feed(sample)
        alive = {process.id for process in sample.alive}
        with self._lock:
            self._last_sample = sample
            if sample.full:
                self._last_full = sample
            for generation in self._generations:
                if generation.root in alive:
                    generation.last_alive = sample.started
            self._samples += 1
            self._sample_cpu += sample.cost_seconds
        if any(not process.alive for process in sample.processes):
            # Notice the exit now, in the same round: the report completes with it, and a
            # stopping agent waits for exactly that.
            self.discover(self.copy_sdk())
            next_scan = self._clock() + (_RESCAN_SECONDS if self._targets_up() else _SEARCH_SECONDS)
        view = self.timeline.view()
        now = self._clock()
        fast = self.plan.draining(view, now, hint)
        if self.sampler is not None:
            self.sampler.set_draining(fast)
        if self.probes is not None:
            self.probes.set_fast(fast)
        self._maybe_last_words(now)
        delay, _ = self.plan.next_sample(view, now, hint)
        return delay, next_scan

    def discover(self, sdk: SdkCopy | None = None) -> Targets:
        """Find the target now and update the generations and the sampler's target."""
        sdk = sdk or SdkCopy()
        targets = self.discovery.discover(sdk.processes)
        if sdk.roles:
            self.timeline.set_roles(replace(self._base_roles, sdk_roles=sdk.roles))
        by_pid = {process.pid: process.instance for process in sdk.processes}
        now = self._clock()
        words: list[str] = []
        with self._lock:
            self._targets = targets
            live_roots = set(targets.roots)
            current = {generation.root: generation for generation in self._generations}
            for process in targets.processes:
                generation = current.get(process.root)
                if generation is None:
                    service = next(
                        (
                            sdk.services[p.id.pid]
                            for p in targets.processes
                            if p.root == process.root and p.id.pid in sdk.services
                        ),
                        self._state.default_service,
                    )
                    generation = Generation(process.root, service, process.found_by, now)
                    self._generations.append(generation)
                    current[process.root] = generation
                    logger.info(
                        "drainwatch agent: target %s found (%s)", process.root, process.found_by
                    )
                generation.pids.add(process.id.pid)
                generation.last_alive = targets.at
                if process.id.pid in by_pid:
                    generation.sdk_instances.add(by_pid[process.id.pid])
            for generation in self._generations:
                if generation.gone_noticed is None and generation.root not in live_roots:
                    gone = next((g for g in targets.gone if g.id == generation.root), None)
                    generation.gone_noticed = gone.noticed if gone is not None else now
                    generation.gone_reason = gone.reason if gone is not None else "exited"
                    logger.info(
                        "drainwatch agent: target %s gone (%s)",
                        generation.root,
                        generation.gone_reason,
                    )
                    sampled = self._sampled_pid in generation.pids
                    if sampled and LAST_WORDS_GONE not in generation.words_taken:
                        generation.words_taken.add(LAST_WORDS_GONE)
                        words.append(LAST_WORDS_GONE)
            pid = _sampled_pid(targets)
            changed = pid != self._sampled_pid
            self._sampled_pid = pid
        if words and self.sampler is not None:
            # No new dump: the PID may already belong to an unrelated process.
            self.sampler.target_gone(LAST_WORDS_GONE)
        if changed and self.sampler is not None and pid is not None:
            self._check_sampling(pid)
            self.sampler.set_target(pid)
        return targets

    def copy_sdk(self) -> SdkCopy:
        """The SDK processes still running, the ports they named, their shutdown starts."""
        processes: list[SdkProcess] = []
        roles: dict[int, str] = {}
        starts: dict[int, float] = {}
        services: dict[int, str] = {}
        with self._state.lock:
            for _, instance in self._state.instances():
                shutdown = instance.shutdown or {}
                if instance.connected and shutdown.get("exited") is None:
                    processes.append(
                        SdkProcess(
                            instance.pid, instance.instance, instance.first_seen, instance.started
                        )
                    )
                    services[instance.pid] = instance.service
                for listener in (shutdown.get("listeners") or {}).values():
                    port = listener.get("port")
                    if isinstance(port, int) and isinstance(listener.get("role"), str):
                        roles[port] = listener["role"]
                if shutdown.get("phase", "running") != "running":
                    starts[instance.pid] = _sdk_shutdown_start(shutdown, self._clock())
        return SdkCopy(tuple(processes), tuple(sorted(roles.items())), starts, services)

    def _note_hints(self, hints: dict[int, float]) -> bool:
        """Remember when the SDK said a target process began shutting down."""
        if not hints:
            return False
        found = False
        with self._lock:
            for generation in self._generations:
                if generation.gone_noticed is not None:
                    continue
                starts = [at for pid, at in hints.items() if pid in generation.pids]
                if starts:
                    found = True
                    if generation.shutdown_hint is None:
                        generation.shutdown_hint = min(starts)
        return found

    def _probe_failing(self) -> bool:
        if self.probes is None:
            return False
        return any(status.ok is False for status in self.probes.snapshot())

    # -- last words -----------------------------------------------------------------------------

    def shutdown_began(self, generation: Generation, view: TimelineView) -> float | None:
        """The first sign of this generation's shutdown seen from outside: the SDK's signal, a
        port that stopped listening while the process lived on, a probe that started failing."""
        signs: list[float] = []
        if generation.shutdown_hint is not None:
            signs.append(generation.shutdown_hint)
        for interval in view.intervals:
            closed = interval.closed
            # a port closed by this generation, not by an earlier lifetime of the target
            by_this = closed is not None and closed.started >= generation.first_seen - 1.0
            if by_this and not interval.closed_by_exit:
                signs.append(interval.last_seen.started)
        if self.probes is not None:
            for status in self.probes.snapshot():
                for transition in status.transitions:
                    if not transition.ok and transition.at >= generation.first_seen:
                        signs.append(transition.at)
        if generation.gone_noticed is not None:
            signs.append(generation.last_alive or generation.gone_noticed)
        return min(signs) if signs else None

    def _maybe_last_words(self, now: float) -> None:
        if self.sampler is None:
            return
        view = self.timeline.view()
        due: list[str] = []
        with self._lock:
            for generation in self._generations:
                if generation.gone_noticed is not None:
                    continue
                if LAST_WORDS_BUDGET in generation.words_taken:
                    continue
                began = self.shutdown_began(generation, view)
                if began is not None and now - began >= self._last_words_at * self._budget:
                    generation.words_taken.add(LAST_WORDS_BUDGET)
                    due.append(LAST_WORDS_BUDGET)
        for reason in due:
            self._take_last_words(reason)

    def _take_last_words(self, reason: str) -> None:
        sampler = self.sampler
        if sampler is None:
            return
        # A dump takes 50-500 ms: off the sampling thread, so listener closes stay ordered.
        threading.Thread(
            target=sampler.capture_last_words,
            args=(reason,),
            name=f"drainwatch-last-words-{reason}",
            daemon=True,
        ).start()

    def _check_sampling(self, pid: int) -> None:
        """Run the preflight once for a new target and say, in one line, what is missing."""
        checks = run_preflight(pid, binary=self._pyspy_binary)
        failed = [check for check in checks if not check.ok]
        if failed and not self._preflight_logged:
            self._preflight_logged = True
            logger.warning(
                "drainwatch agent: py-spy cannot sample pid %d: %s; the agent goes on without "
                "stacks (drainwatch_sampler_unavailable; `drainwatch doctor --target-pid %d`)",
                pid,
                "; ".join(f"{check.reason}: {check.message}" for check in failed),
                pid,
            )

    # -- readers --------------------------------------------------------------------------------

    def snapshot(self) -> OutsideSnapshot:
        view = self.timeline.view()
        probes = self.probes.snapshot() if self.probes is not None else ()
        sampler = self.sampler.snapshot() if self.sampler is not None else None
        with self._lock:
            return OutsideSnapshot(
                at=self._clock(),
                timeline=view,
                generations=tuple(replace(g, pids=set(g.pids)) for g in self._generations),
                targets=self._targets,
                last_sample=self._last_sample,
                last_full_sample=self._last_full,
                probes=probes,
                sampler=sampler,
                sampled_pid=self._sampled_pid,
                samples=self._samples,
                sample_cpu_seconds=self._sample_cpu,
            )

    def _targets_up(self) -> bool:
        with self._lock:
            return self._targets is not None and self._targets.up

    def target_alive(self) -> bool:
        """Some target process is alive as of the latest sample (or discovery), or its exit
        has not been taken into its lifetime's record yet."""
        with self._lock:
            sample, targets = self._last_sample, self._targets
            unnoticed = any(g.gone_noticed is None for g in self._generations)
        if sample is not None:
            return bool(sample.alive) or unnoticed
        return (targets is not None and targets.up) or unnoticed


def _sdk_shutdown_start(shutdown: dict[str, object], now: float) -> float:
    """The SDK's first sign of shutdown: its first signal, else its earliest step."""
    times: list[float] = []
    signals = shutdown.get("signals")
    for entry in signals if isinstance(signals, list) else ():
        if isinstance(entry, dict) and isinstance(entry.get("at"), int | float):
            times.append(float(entry["at"]))
    if not times:
        steps = shutdown.get("steps")
        for step in steps.values() if isinstance(steps, dict) else ():
            if isinstance(step, dict) and isinstance(step.get("started"), int | float):
                times.append(float(step["started"]))
    return min(times) if times else now


def _sampled_pid(targets: Targets) -> int | None:
    """py-spy samples one process: a worker when the service has them (the master of
    gunicorn or ``uvicorn --workers`` only supervises), else the service's own process."""
    if not targets.processes:
        return None
    parents = {process.ppid for process in targets.processes}
    leaves = sorted(p.id.pid for p in targets.processes if p.id.pid not in parents)
    return leaves[0] if leaves else targets.processes[0].id.pid
