"""Wait classification from real py-spy stacks: one thread stuck in each primitive.

The recordings in ``recorded/`` come from :data:`SCENARIO` run under several Pythons and
dumped by the real py-spy, with each thread's ``/proc/PID/task/TID/syscall`` and the fd it
names. Re-record with ``python -m tests.collectors.test_thread_waits [PYTHON ...]``.
Each thread is named ``<expected reason>/<variant>``; names starting with ``_`` are helpers.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from drainwatch import _thread_waits as thread_waits
from drainwatch._thread_waits import KernelWait, classify, parse_syscall
from drainwatch.collectors.kernel_waits import ProcKernelWaits, classify_thread
from drainwatch.collectors.pyspy import (
    PySpyFrame,
    PySpyRunner,
    PySpyThread,
    parse_dump,
)

RECORDED = Path(__file__).parent / "recorded"
CASES = ("py310", "py311", "py312", "py313")
STARTUP_SECONDS = 20.0

SCENARIO = r"""
import asyncio, multiprocessing, os, queue, selectors, signal, socket, subprocess, sys
import threading, time
from concurrent.futures import ThreadPoolExecutor

if __name__ == "__main__":
    forever = threading.Event()
    fork = multiprocessing.get_context("fork")
    child = fork.Process(target=time.sleep, args=(1000,), daemon=True)
    child.start()  # forked before any thread starts
    mp_queue = fork.Queue()
    mp_queue.put(None); mp_queue.get()  # starts nothing, but opens the pipe

    def spawn(name, target):
        threading.Thread(target=target, name=name, daemon=True).start()

    q = queue.Queue()
    spawn("queue_get/queue", lambda: q.get())
    full = queue.Queue(maxsize=1); full.put(1)
    spawn("queue_put/full_queue", lambda: full.put(2))
    spawn("queue_get/multiprocessing", lambda: mp_queue.get())
    held = threading.Lock(); held.acquire()
    spawn("lock/raw", lambda: held.acquire())
    rlock = threading.RLock()
    spawn("_rlock_owner", lambda: (rlock.acquire(), forever.wait()))
    time.sleep(0.05)
    spawn("lock/rlock", lambda: rlock.acquire())
    semaphore = threading.Semaphore(0)
    spawn("lock/semaphore", lambda: semaphore.acquire())
    condition = threading.Condition()
    spawn("condition/wait", lambda: (condition.acquire(), condition.wait()))
    spawn("event/wait", lambda: threading.Event().wait())
    server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
    spawn("socket/accept", lambda: server.accept())
    left, right = socket.socketpair()
    spawn("socket/recv", lambda: left.recv(10))
    selector = selectors.DefaultSelector(); a, b = socket.socketpair()
    selector.register(a, selectors.EVENT_READ)
    spawn("socket/select", lambda: selector.select())
    spawn("sleep/time_sleep", lambda: time.sleep(1000))
    spawn("signal_wait/pause", signal.pause)
    spawn("loop_idle/asyncio_run", lambda: asyncio.run(asyncio.sleep(1000)))
    blocking = queue.Queue()
    async def blocks_the_loop():
        blocking.get()
    spawn("queue_get/inside_event_loop", lambda: asyncio.run(blocks_the_loop()))
    spawn("subprocess/run", lambda: subprocess.run(["sleep", "1000"]))
    piped = {"stdout": subprocess.PIPE}
    spawn("subprocess/communicate", lambda: subprocess.run(["sleep", "1000"], **piped))
    def waitpid():
        process = subprocess.Popen(["sleep", "1000"]); os.waitpid(process.pid, 0)
    spawn("process_wait/waitpid", waitpid)
    spawn("process_wait/multiprocessing_join", lambda: child.join())
    never = threading.Thread(target=forever.wait, name="_never_ends", daemon=True); never.start()
    spawn("thread_join/join", lambda: never.join())
    busy_pool = ThreadPoolExecutor(1, thread_name_prefix="_busy_pool")
    pending = busy_pool.submit(forever.wait)
    spawn("future/result", lambda: pending.result())
    idle_pool = ThreadPoolExecutor(1, thread_name_prefix="_idle_pool")
    idle_pool.submit(lambda: None).result()
    read_end, write_end = os.pipe()
    spawn("io/pipe_read", lambda: os.read(read_end, 10))
    def spin():
        count = 0
        while True:
            count += 1
    spawn("running/spin", spin)
    try:
        import grpc
    except ImportError:
        grpc = None
    if grpc is not None:
        grpc_server = grpc.server(ThreadPoolExecutor(2))
        grpc_server.add_insecure_port("127.0.0.1:0"); grpc_server.start()
        spawn("grpc/wait_for_termination", lambda: grpc_server.wait_for_termination())
    time.sleep(0.5)
    for thread in threading.enumerate():
        if thread.name.startswith("_busy_pool"):
            thread.name = "event/executor_task"
        elif thread.name.startswith("_idle_pool"):
            thread.name = "queue_get/idle_executor_worker"
        elif thread.name.endswith("(_serve)"):
            thread.name = "grpc/server_poller"
    threading.current_thread().name = "sleep/main_thread"
    print("ready", flush=True)
    time.sleep(1000)
"""

# Waits inside C code: only the kernel hint tells them apart, and py-spy gives no OS thread
# id (so no hint and no reliable activity) on Python 3.10 and older.
C_LEVEL = frozenset(
    {
        "lock/raw",
        "lock/rlock",
        "socket/recv",
        "sleep/time_sleep",
        "sleep/main_thread",
        "signal_wait/pause",
        "process_wait/waitpid",
        "io/pipe_read",
        "running/spin",
    }
)


@contextmanager
def running_script(source: str, python: str = sys.executable) -> Iterator[subprocess.Popen[str]]:
    """Run ``source`` in its own session until it prints ``ready``; kill the whole group after."""
    with tempfile.TemporaryDirectory(prefix="dw-pyspy-") as directory:
        script = Path(directory) / "target.py"
        script.write_text(source)
        process = subprocess.Popen(
            [python, str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            assert process.stdout is not None
            deadline = time.monotonic() + STARTUP_SECONDS
            line = ""
            while time.monotonic() < deadline and "ready" not in line:
                line = process.stdout.readline()
                if not line and process.poll() is not None:
                    raise RuntimeError(f"target exited with {process.returncode}")
            yield process
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(10)
            if process.stdout is not None:
                process.stdout.close()


def _load(case: str) -> tuple[list[PySpyThread], dict[str, Any]]:
    dump = parse_dump((RECORDED / f"pyspy_{case}.json").read_bytes())
    kernel = json.loads((RECORDED / f"pyspy_{case}.kernel.json").read_text())
    return list(dump.threads), kernel


def _fake_proc(root: Path, kernel: dict[str, Any]) -> ProcKernelWaits:
    """A /proc tree with the recorded syscall files and fd links of the recorded target."""
    pid = kernel["pid"]
    for tid, text in kernel["syscall"].items():
        task = root / str(pid) / "task" / tid
        task.mkdir(parents=True)
        (task / "syscall").write_text(text)
    fds = root / str(pid) / "fd"
    fds.mkdir(parents=True, exist_ok=True)
    for fd, link in kernel["fd"].items():
        os.symlink(link, fds / fd)
    return ProcKernelWaits(str(root), machine=kernel["machine"])


def _expected(name: str, case: str) -> str:
    if case == "py310" and name in C_LEVEL:
        return thread_waits.UNKNOWN
    return name.split("/", 1)[0]


def _scenario_threads(threads: list[PySpyThread]) -> list[PySpyThread]:
    return [t for t in threads if t.thread_name and "/" in t.thread_name]


@pytest.mark.parametrize("case", CASES)
def test_recorded_stacks_are_classified_as_their_thread_names_say(
    case: str, tmp_path: Path
) -> None:
    """Every scenario thread of a real recorded dump gets the reason its name announces."""
    threads, kernel = _load(case)
    reader = _fake_proc(tmp_path, kernel)
    scenario = _scenario_threads(threads)
    assert len(scenario) >= 25
    got = {t.thread_name: classify_thread(t, kernel["pid"], reader).reason for t in scenario}
    want = {t.thread_name: _expected(t.thread_name or "", case) for t in scenario}
    assert got == want


def test_live_scenario_under_real_pyspy_matches_the_names() -> None:
    """The same scenario, started now and dumped now by the real py-spy, classifies the same."""
    with running_script(SCENARIO) as process:
        result = PySpyRunner().dump(process.pid, timeout=10.0)
        assert result.ok, result.message
        reader = ProcKernelWaits()
        got = {
            t.thread_name: classify_thread(t, process.pid, reader).reason
            for t in _scenario_threads(list(result.threads))
        }
    want = {name: name.split("/", 1)[0] for name in got if name}
    assert got == want


def test_grpc_threads_were_recorded_where_grpc_is_installed() -> None:
    """The 3.11 recording (the venv has grpcio) holds grpc's own server and waiting threads."""
    threads, _ = _load("py311")
    names = {t.thread_name for t in threads}
    assert {"grpc/server_poller", "grpc/wait_for_termination"} <= names


def _frames(*specs: str) -> tuple[PySpyFrame, ...]:
    """Frames from ``"name@file"`` specs, innermost first."""
    found = []
    for spec in specs:
        name, _, filename = spec.partition("@")
        found.append(PySpyFrame(name, filename, filename.rsplit("/", 1)[-1], None, 1))
    return tuple(found)


def test_a_queue_get_run_by_a_grpc_handler_is_a_queue_get() -> None:
    """Refinement stops at the first non-library frame: grpc frames further out do not count."""
    frames = _frames(
        "Condition.wait@/usr/lib/python3.11/threading.py",
        "Queue.get@/usr/lib/python3.11/queue.py",
        "Pay@/app/payments.py",
        "_call_behavior@/venv/lib/python3.11/site-packages/grpc/_server.py",
    )
    assert classify(frames, active=False).reason == thread_waits.QUEUE_GET


def test_without_a_kernel_hint_activity_decides() -> None:
    """Frames that show no wait fall back to py-spy's idle flag: idle is sleep, active running."""
    frames = _frames("handler@/app/main.py")
    assert classify(frames, active=False).reason == thread_waits.SLEEP
    assert classify(frames, active=True).reason == thread_waits.RUNNING
    assert classify(frames, active=None).reason == thread_waits.UNKNOWN
    assert classify((), active=None) == thread_waits.Wait(thread_waits.UNKNOWN, None, "none")


def test_kernel_hint_beats_activity_for_waits_in_c_code() -> None:
    """A futex is a lock, a read on a socket is a socket, even for a thread py-spy calls active."""
    frames = _frames("handler@/app/main.py")
    assert classify(frames, active=True, kernel=KernelWait("futex")).reason == "lock"
    assert classify(frames, active=True, kernel=KernelWait("read", "socket")).reason == "socket"
    assert classify(frames, active=True, kernel=KernelWait("read", "pipe")).reason == "io"
    assert classify(frames, active=False, kernel=KernelWait("running")).reason == "running"
    assert classify(frames, active=False, kernel=KernelWait(None)).reason == "sleep"


def test_grpc_innermost_frame_is_grpc_unless_the_thread_runs() -> None:
    """An innermost grpc frame is a completion-queue wait, except when the thread is running."""
    frames = _frames("_serve@/venv/lib/python3.11/site-packages/grpc/_server.py")
    assert classify(frames, active=False).reason == thread_waits.GRPC
    assert classify(frames, active=True).reason == thread_waits.RUNNING
    assert classify(frames, active=None, kernel=KernelWait("running")).reason == "running"


def test_odd_frames_never_raise() -> None:
    """Frames with missing attributes or odd names classify as something, never raise."""

    class Broken:
        name = None
        filename = 3

    assert classify([Broken()], active=None).reason == thread_waits.UNKNOWN  # type: ignore[list-item]
    assert classify(_frames("@"), active=None).reason == thread_waits.UNKNOWN


@pytest.mark.parametrize(
    ("text", "machine", "expected"),
    [
        ("202 0x55 0x189 0x0 0x0 0x0 0x0 0x7ffd 0x7f12\n", "x86_64", ("futex", 0x55)),
        ("230 0x1 0x1 0x7ffd 0x0 0x0 0x0 0x7ffd 0x7f12\n", "x86_64", ("clock_nanosleep", 1)),
        ("98 0xffff 0x80 0x0 0x0 0x0 0x0 0xfffe 0xffff\n", "aarch64", ("futex", 0xFFFF)),
        ("207 0x7 0x0 0x0 0x0 0x0 0x0 0xfffe 0xffff\n", "arm64", ("recvfrom", 7)),
        ("running\n", "x86_64", ("running", None)),
        ("-1 0x7ffd 0x7f12\n", "x86_64", (None, None)),
        ("202 0x55\n", "riscv64", (None, 0x55)),
        ("garbage", "x86_64", (None, None)),
        ("", "x86_64", (None, None)),
    ],
)
def test_syscall_file_parsing(
    text: str, machine: str, expected: tuple[str | None, int | None]
) -> None:
    """``/proc/PID/task/TID/syscall`` reads as (call name, first argument) on x86_64 and arm64."""
    assert parse_syscall(text, machine) == expected


def test_every_reason_is_listed() -> None:
    """REASONS lists each reason once, so metric label values are known up front."""
    assert len(set(thread_waits.REASONS)) == len(thread_waits.REASONS)
    assert set(thread_waits.REASONS) >= thread_waits.NOT_WAITING


# -- recording -------------------------------------------------------------------------------------


def record(python: str, case: str) -> None:
    """Run the scenario under ``python``, dump it with the real py-spy, save the recordings."""
    runner = PySpyRunner()
    with running_script(SCENARIO, python) as process:
        time.sleep(0.5)
        result = subprocess.run(
            runner.command(process.pid),
            capture_output=True,
            timeout=30,
            check=True,
            env={**os.environ, "RUST_BACKTRACE": "0"},
        )
        syscalls: dict[str, str] = {}
        fds: dict[str, str] = {}
        for thread in json.loads(result.stdout):
            tid = thread.get("os_thread_id")
            if tid is None:
                continue
            path = f"/proc/{process.pid}/task/{tid}/syscall"
            syscalls[str(tid)] = Path(path).read_text()
        for fd in os.listdir(f"/proc/{process.pid}/fd"):
            try:
                fds[fd] = os.readlink(f"/proc/{process.pid}/fd/{fd}")
            except OSError:
                pass
    (RECORDED / f"pyspy_{case}.json").write_bytes(result.stdout)
    kernel = {"pid": process.pid, "machine": platform.machine(), "syscall": syscalls, "fd": fds}
    (RECORDED / f"pyspy_{case}.kernel.json").write_text(json.dumps(kernel, indent=1) + "\n")


if __name__ == "__main__":
    RECORDED.mkdir(exist_ok=True)
    pythons = sys.argv[1:] or [
        f"/root/.pyenv/versions/{v}/bin/python" for v in ("3.10.13", "3.12.1", "3.13.0")
    ] + [sys.executable]
    for python in pythons:
        version = subprocess.run(
            [python, "-c", "import sys; print('py%d%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        record(python, version)
        print(f"recorded {version} from {python}")
