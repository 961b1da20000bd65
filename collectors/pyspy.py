"""py-spy from the sidecar: run ``py-spy dump --json`` and parse it.

- :class:`PySpyRunner` runs one dump as a subprocess (synchronous: the agent calls it from a
  worker thread, never from its event loop), non-blocking by default, killed at a timeout,
  and turns every outcome into a :class:`DumpResult` with a result and a reason.
- :func:`parse_dump` turns py-spy's JSON into frozen dataclasses; it never raises and bounds
  what it keeps (threads, frames, locals, string lengths).

The sampler that dumps on an interval and tracks stuck threads is in
:mod:`drainwatch.collectors.pyspy_sampler`.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# Results, as in drainwatch_pyspy_samples_total{result}.
OK: Final = "ok"
TIMEOUT: Final = "timeout"
DENIED: Final = "denied"
TARGET_GONE: Final = "target_gone"
UNSUPPORTED: Final = "unsupported"
FAILED: Final = "failed"
RESULTS: Final = (OK, TIMEOUT, DENIED, TARGET_GONE, UNSUPPORTED, FAILED)

# Reasons, as in drainwatch_sampler_unavailable{reason} (preflight uses the same codes).
NO_PTRACE: Final = "no_ptrace"
PTRACE_SCOPE: Final = "ptrace_scope"
PID_NAMESPACE: Final = "pid_namespace"
PROC_ROOT_UNREADABLE: Final = "proc_root_unreadable"
UNSUPPORTED_PYTHON: Final = "unsupported_python"
NOT_PYTHON: Final = "not_python"
BINARY_MISSING: Final = "binary_missing"
# TARGET_GONE is also one. The agent can export all of them, 1 for the current one, 0 else.
UNAVAILABLE_REASONS: Final = (
    NO_PTRACE,
    PTRACE_SCOPE,
    PID_NAMESPACE,
    PROC_ROOT_UNREADABLE,
    UNSUPPORTED_PYTHON,
    NOT_PYTHON,
    BINARY_MISSING,
    TARGET_GONE,
)
# Reasons of failed dumps that say nothing about whether sampling can work:
OUTPUT_TOO_LARGE: Final = "output_too_large"
BAD_OUTPUT: Final = "bad_output"
PYSPY_ERROR: Final = "pyspy_error"

MAX_THREADS: Final = 1024
MAX_FRAMES: Final = 64  # the innermost ones: a wait is decided by the first few
MAX_LOCALS: Final = 32
MAX_TEXT: Final = 512
MAX_OUTPUT_BYTES: Final = 8 << 20  # ~1000 threads x 30 frames; json.loads needs ~10x
_MAX_STDERR_BYTES: Final = 64 << 10
_MAX_PROBLEMS: Final = 10


# -- parsed dump -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PySpyLocal:
    name: str
    repr: str | None
    arg: bool


@dataclass(frozen=True, slots=True)
class PySpyFrame:
    """One frame; ``name`` is the qualified function name on Python 3.11+ (``Queue.get``)."""

    name: str
    filename: str
    short_filename: str
    module: str | None
    line: int
    locals: tuple[PySpyLocal, ...] | None = None

    def describe(self) -> str:
        """``Queue.get (queue.py:171)``, as py-spy prints it."""
        return f"{self.name} ({self.short_filename or self.filename}:{self.line})"


@dataclass(frozen=True, slots=True)
class PySpyThread:
    """One thread of a dump; frames innermost first, at most ``MAX_FRAMES`` of them."""

    thread_id: int | None
    thread_name: str | None
    os_thread_id: int | None
    active: bool | None
    owns_gil: bool | None
    frames: tuple[PySpyFrame, ...]
    frames_truncated: bool = False


@dataclass(frozen=True, slots=True)
class ParsedDump:
    """Threads that could be read, and what was wrong with the rest (at most 10 notes)."""

    threads: tuple[PySpyThread, ...]
    problems: tuple[str, ...] = ()
    valid: bool = True  # False when the document itself was not a JSON list


def _text(value: object, default: str = "") -> str:
    if isinstance(value, str):
        return value[:MAX_TEXT]
    return default


def _optional_text(value: object) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


def _int(value: object) -> int | None:
    # bool is an int in Python; py-spy never sends one where a number belongs.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _locals(value: object) -> tuple[PySpyLocal, ...] | None:
    if not isinstance(value, list):
        return None
    found = []
    for item in value[:MAX_LOCALS]:
        if isinstance(item, dict):
            found.append(
                PySpyLocal(
                    _text(item.get("name"), "?"),
                    _optional_text(item.get("repr")),
                    item.get("arg") is True,
                )
            )
    return tuple(found)


def _frame(value: object) -> PySpyFrame | None:
    if not isinstance(value, dict):
        return None
    line = _int(value.get("line"))
    return PySpyFrame(
        name=_text(value.get("name"), "?"),
        filename=_text(value.get("filename")),
        short_filename=_text(value.get("short_filename")),
        module=_optional_text(value.get("module")),
        line=line if line is not None else 0,
        locals=_locals(value.get("locals")),
    )


def _thread(value: object, problems: list[str], index: int) -> PySpyThread | None:
    if not isinstance(value, dict):
        problems.append(f"thread {index}: not an object")
        return None
    raw_frames = value.get("frames")
    if not isinstance(raw_frames, list):
        if raw_frames is not None:
            problems.append(f"thread {index}: frames is not a list")
        raw_frames = []
    frames = [frame for frame in map(_frame, raw_frames[:MAX_FRAMES]) if frame is not None]
    if len(frames) < min(len(raw_frames), MAX_FRAMES):
        problems.append(
            f"thread {index}: {min(len(raw_frames), MAX_FRAMES) - len(frames)} bad frames"
        )
    return PySpyThread(
        thread_id=_int(value.get("thread_id")),
        thread_name=_optional_text(value.get("thread_name")),
        os_thread_id=_int(value.get("os_thread_id")),
        active=_bool(value.get("active")),
        owns_gil=_bool(value.get("owns_gil")),
        frames=tuple(frames),
        frames_truncated=len(raw_frames) > MAX_FRAMES,
    )


def parse_dump(data: str | bytes) -> ParsedDump:
    """Parse ``py-spy dump --json`` output. Never raises; odd parts are skipped and noted."""
    if len(data) > MAX_OUTPUT_BYTES:
        return ParsedDump((), (f"output of {len(data)} bytes is over {MAX_OUTPUT_BYTES}",), False)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError, UnicodeDecodeError) as error:
        return ParsedDump((), (f"not JSON: {str(error)[:200]}",), False)
    if not isinstance(document, list):
        return ParsedDump(
            (), (f"expected a list of threads, got {type(document).__name__}",), False
        )
    problems: list[str] = []
    if len(document) > MAX_THREADS:
        problems.append(f"{len(document)} threads, kept the first {MAX_THREADS}")
    threads = []
    for index, item in enumerate(document[:MAX_THREADS]):
        thread = _thread(item, problems, index)
        if thread is not None:
            threads.append(thread)
    return ParsedDump(tuple(threads), tuple(problems[:_MAX_PROBLEMS]))


# -- runner ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DumpResult:
    """The outcome of one dump. ``reason`` is a code, ``message`` says what to do about it."""

    result: str
    reason: str
    message: str
    pid: int
    threads: tuple[PySpyThread, ...] = ()
    started_at: float = 0.0  # wall clock
    duration_seconds: float = 0.0
    returncode: int | None = None
    stderr: str = ""  # py-spy's error lines, without its backtrace
    parse_problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.result == OK


def find_pyspy(explicit: str | None = None) -> str | None:
    """``explicit`` if it is an executable file; else ``py-spy`` next to ``sys.executable``
    (a virtualenv's ``bin/``, where the PyPI wheel puts it), else on ``PATH``; else ``None``."""
    if explicit is not None:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


def stderr_summary(text: str) -> str:
    """py-spy's error lines joined with " / ", without the Rust backtrace."""
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Stack backtrace:"):
            break
        if line and line != "Caused by:":
            lines.append(line)
    return " / ".join(lines)[:MAX_TEXT]


_DENIED_MARKS: Final = (
    "permission denied",
    "operation not permitted",
    "(os error 13)",
    "(os error 1)",
)
_UNSUPPORTED_MARKS: Final = ("unsupported version of python",)
_NOT_PYTHON_MARKS: Final = (
    "failed to find python version",
    "no python processes found",
    "failed to find _pyruntime",
    "both python and libpython are invalid",
)  # fmt: skip


class PySpyRunner:
    """Runs ``py-spy dump --json --pid PID [--nonblocking] [--locals]``. Thread-safe; blocking.

    ``binary``: a path to use instead of looking next to ``sys.executable`` and on ``PATH``.
    ``proc_root``: where to look whether a target still exists after a failed dump.
    """

    def __init__(self, binary: str | None = None, *, proc_root: str = "/proc") -> None:
        self.requested = binary
        self.binary = find_pyspy(binary)
        self.proc_root = proc_root

    def command(self, pid: int, *, nonblocking: bool = True, locals: bool = False) -> list[str]:
        command = [self.binary or "py-spy", "dump", "--json", "--pid", str(pid)]
        if nonblocking:
            command.append("--nonblocking")
        if locals:
            command.append("--locals")
        return command

    def dump(
        self, pid: int, *, nonblocking: bool = True, locals: bool = False, timeout: float = 5.0
    ) -> DumpResult:
        """One dump of ``pid``, killed after ``timeout`` seconds. Never raises."""
        started_at = time.time()
        start = time.monotonic()
        if self.binary is None:
            where = self.requested or f"next to {sys.executable} or on PATH"
            return DumpResult(
                FAILED,
                BINARY_MISSING,
                f"py-spy binary not found ({where}); install the agent with its extra "
                "(pip install 'drainwatch[agent]' brings the py-spy wheel) or set --pyspy-path",
                pid,
                started_at=started_at,
            )
        try:
            process = subprocess.Popen(
                self.command(pid, nonblocking=nonblocking, locals=locals),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, "RUST_BACKTRACE": "0"},
                start_new_session=True,  # so a timeout kills py-spy and anything it started
            )
        except PermissionError as error:
            # A binary with a file capability the bounding set lacks may not even start.
            return DumpResult(
                DENIED,
                NO_PTRACE,
                f"py-spy at {self.binary} may not start ({error.strerror}): it carries a file "
                "capability this agent's bounding set lacks; add SYS_PTRACE to the container's "
                "capabilities (or run drainwatch doctor)",
                pid,
                started_at=started_at,
            )
        except OSError as error:
            reason = BINARY_MISSING if isinstance(error, FileNotFoundError) else PYSPY_ERROR
            return DumpResult(
                FAILED,
                reason,
                f"cannot run py-spy at {self.binary}: {error}",
                pid,
                started_at=started_at,
            )
        stdout, stderr, complete = _collect(process, start + timeout)
        if not complete:
            _kill_group(process)
            if not nonblocking:
                # py-spy stopped the target with ptrace; a tracer killed mid-dump may leave it
                # stopped, so let it run again.
                _signal(pid, signal.SIGCONT)
            return DumpResult(
                TIMEOUT,
                TIMEOUT,
                f"py-spy dump of pid {pid} did not finish within {timeout:g}s and was killed; "
                "a large or busy target may need a longer --pyspy-timeout",
                pid,
                started_at=started_at,
                duration_seconds=time.monotonic() - start,
            )
        returncode = process.wait()
        duration = time.monotonic() - start
        error_text = stderr_summary(stderr.decode("utf-8", "replace"))
        if returncode == 0:
            return self._parsed(pid, stdout, started_at, duration)
        result, reason, message = self._failure(pid, error_text, returncode)
        return DumpResult(
            result,
            reason,
            message,
            pid,
            started_at=started_at,
            duration_seconds=duration,
            returncode=returncode,
            stderr=error_text,
        )

    def _parsed(self, pid: int, stdout: bytes, started_at: float, duration: float) -> DumpResult:
        if len(stdout) >= MAX_OUTPUT_BYTES:
            return DumpResult(
                FAILED,
                OUTPUT_TOO_LARGE,
                f"py-spy output for pid {pid} is over {MAX_OUTPUT_BYTES} bytes; not parsed",
                pid,
                started_at=started_at,
                duration_seconds=duration,
                returncode=0,
            )
        parsed = parse_dump(stdout)
        if not parsed.valid:
            return DumpResult(
                FAILED,
                BAD_OUTPUT,
                f"py-spy printed something that is not a dump: {'; '.join(parsed.problems)}",
                pid,
                started_at=started_at,
                duration_seconds=duration,
                returncode=0,
                parse_problems=parsed.problems,
            )
        return DumpResult(
            OK,
            "",
            f"{len(parsed.threads)} threads",
            pid,
            threads=parsed.threads,
            started_at=started_at,
            duration_seconds=duration,
            returncode=0,
            parse_problems=parsed.problems,
        )

    def _failure(self, pid: int, error_text: str, returncode: int) -> tuple[str, str, str]:
        lowered = error_text.lower()
        said = f"py-spy exited with {returncode}: {error_text or '(no message)'}"
        if any(mark in lowered for mark in _DENIED_MARKS) and self._alive(pid):
            return (
                DENIED,
                NO_PTRACE,
                f"py-spy may not read pid {pid} ({said}); give the agent CAP_SYS_PTRACE "
                "(securityContext.capabilities.add: [SYS_PTRACE]) and run "
                f"`drainwatch doctor --target-pid {pid}` to see what else is missing",
            )
        # A dying target fails in many ways (no python version, frame copy errors, ...):
        # whether it still exists decides, checked twice to let the kernel finish the exit.
        if not self._alive(pid) or not self._alive(pid, after=0.05):
            return TARGET_GONE, TARGET_GONE, f"pid {pid} is gone ({said})"
        if any(mark in lowered for mark in _UNSUPPORTED_MARKS):
            return (
                UNSUPPORTED,
                UNSUPPORTED_PYTHON,
                f"this py-spy cannot read the Python of pid {pid} ({said}); use a py-spy "
                "release that supports it (drainwatch doctor lists the supported versions)",
            )
        if any(mark in lowered for mark in _NOT_PYTHON_MARKS):
            return (
                UNSUPPORTED,
                NOT_PYTHON,
                f"pid {pid} does not look like a Python process to py-spy ({said}); "
                "check --target-pid / --target-cmdline",
            )
        return FAILED, PYSPY_ERROR, f"py-spy failed on pid {pid} ({said})"

    def _alive(self, pid: int, *, after: float = 0.0) -> bool:
        """Whether ``pid`` exists and is not a zombie, from ``{proc_root}/PID/stat``."""
        if after:
            time.sleep(after)
        try:
            with open(f"{self.proc_root}/{pid}/stat", "rb") as handle:
                stat = handle.read(1024)
        except OSError:
            return False
        state = stat.rpartition(b")")[2].split()[:1]
        return state not in ([b"Z"], [b"X"])


def _collect(process: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bytes, bool]:
    """Read stdout and stderr until both close or ``deadline``; keep at most the caps."""
    if process.stdout is None or process.stderr is None:
        return b"", b"", True
    out_fd, err_fd = process.stdout.fileno(), process.stderr.fileno()
    caps = {out_fd: MAX_OUTPUT_BYTES, err_fd: _MAX_STDERR_BYTES}
    chunks: dict[int, list[bytes]] = {fd: [] for fd in caps}
    sizes = dict.fromkeys(caps, 0)
    with selectors.DefaultSelector() as selector:
        for stream in (process.stdout, process.stderr):
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                fd = key.fd
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                room = caps[fd] - sizes[fd]
                if room > 0:
                    chunks[fd].append(chunk[:room])
                    sizes[fd] += min(len(chunk), room)
        complete = not selector.get_map()
    if complete:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            complete = False
    process.stdout.close()
    process.stderr.close()
    return b"".join(chunks[out_fd]), b"".join(chunks[err_fd]), complete


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        process.wait(5.0)
    except subprocess.TimeoutExpired:
        pass


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError:
        pass
