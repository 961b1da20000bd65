"""Can this agent sample the target with py-spy? Each check says what is missing and the fix.

Checks, in order (``run_preflight``):

- ``pyspy_binary``: the py-spy executable and its version.
- ``ptrace_capability``: will py-spy run with ``CAP_SYS_PTRACE`` (bit 19)? Either this
  process has it in effect (``CapEff``), or the py-spy binary has the file capability
  ``cap_sys_ptrace+ep`` and ``SYS_PTRACE`` is in this process's bounding set (how the
  non-root agent image works, :mod:`drainwatch.collectors.file_caps`); ``no_new_privs`` is
  then a warning (prctl(2): it disables file capabilities). Without any of that py-spy can
  still read a target that runs as the same user when Yama allows it, so that case is a
  warning.
- ``ptrace_scope``: ``/proc/sys/kernel/yama/ptrace_scope``. 0: classic rules. 1: only
  descendants (or a tracee that called ``PR_SET_PTRACER``) unless the tracer has
  ``CAP_SYS_PTRACE``; a sidecar is never the app's parent, so it needs ``SYS_PTRACE``.
  2: only with ``CAP_SYS_PTRACE``. 3: nobody, until reboot.
- ``target_visible``: the target PID in this PID namespace (``shareProcessNamespace: true``).
- ``target_root``: ``/proc/PID/root`` and ``/proc/PID/maps`` readable (py-spy reads the
  target's binaries through them; the kernel requires ptrace read access).
- ``target_python``: the target's Python version (from ``/proc/PID/exe`` and the
  ``libpython`` in its maps) against what this py-spy reads (:data:`PYSPY_SUPPORT`).

``proc_root`` is injectable so tests can build fake ``/proc`` trees. Nothing here raises.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from drainwatch.collectors.file_caps import process_caps as read_process_caps
from drainwatch.collectors.file_caps import read_file_caps
from drainwatch.collectors.pyspy import (
    BINARY_MISSING,
    NO_PTRACE,
    NOT_PYTHON,
    PID_NAMESPACE,
    PROC_ROOT_UNREADABLE,
    PTRACE_SCOPE,
    TARGET_GONE,
    UNSUPPORTED_PYTHON,
    DumpResult,
    find_pyspy,
)

OK: Final = "ok"
WARN: Final = "warn"
FAIL: Final = "fail"
SKIP: Final = "skip"
CAP_SYS_PTRACE: Final = 19
_FIX_CAP: Final = (
    'add the capability to the agent container: securityContext.capabilities.add: ["SYS_PTRACE"]'
)

# Newest CPython minor each py-spy release reads (all read 2.3-2.7 and 3.3 and up).
# 0.3.10 added 3.10, 0.3.13 added 3.11, 0.4.0 added 3.12 and 3.13, upstream PR #833 added
# 3.14 (0.4.1+), and the 0.4.3 binary carries 3.15 bindings. Upstream issue #852: 3.14.5+
# changed a structure py-spy 0.4.3 reads.
PYSPY_SUPPORT: Final = (
    ((0, 3, 10), (3, 10)),
    ((0, 3, 13), (3, 11)),
    ((0, 4, 0), (3, 13)),
    ((0, 4, 1), (3, 14)),
    ((0, 4, 3), (3, 15)),
)
_VERSION_IN_NAME: Final = re.compile(r"python(\d)\.(\d+)(t?)(?:\b|$)")
_LIBPYTHON: Final = re.compile(r"libpython(\d)\.(\d+)(t?)\.so")
_PYSPY_VERSION: Final = re.compile(r"py-spy (\d+)\.(\d+)\.(\d+)")
_MAX_MAPS_BYTES: Final = 4 << 20
_DENIAL_ORDER: Final = (
    PID_NAMESPACE,
    TARGET_GONE,
    PTRACE_SCOPE,
    NO_PTRACE,
    PROC_ROOT_UNREADABLE,
    UNSUPPORTED_PYTHON,
)


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: ``ok``, a reason code when not (as in ``sampler_unavailable{reason}``),
    and a message that says what was found and how to fix it."""

    name: str
    ok: bool
    reason: str
    message: str
    level: str = OK  # ok | warn | fail | skip


def _passed(name: str, message: str, level: str = OK) -> Check:
    return Check(name, True, "", message, level)


def _failed(name: str, reason: str, message: str, level: str = FAIL) -> Check:
    return Check(name, level != FAIL, reason, message, level)


def _read(path: str, limit: int = 1 << 16) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


# -- the checks -----------------------------------------------------------------------------------


def pyspy_version(binary: str) -> tuple[int, int, int] | None:
    """``py-spy --version`` as a tuple; ``None`` if it does not run or says something else."""
    try:
        completed = subprocess.run(
            [binary, "--version"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _PYSPY_VERSION.search(completed.stdout)
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3])


def check_pyspy_binary(binary: str | None = None) -> tuple[Check, tuple[int, int, int] | None]:
    found = find_pyspy(binary)
    if found is None:
        where = binary or "next to the agent's Python or on PATH"
        return _failed(
            "pyspy_binary",
            BINARY_MISSING,
            f"no py-spy executable ({where}); install the agent with "
            "pip install 'drainwatch[agent]' (it brings the py-spy wheel) or set --pyspy-path",
        ), None
    version = pyspy_version(found)
    if version is None:
        return _failed(
            "pyspy_binary",
            BINARY_MISSING,
            f"{found} does not answer `--version` like py-spy; point --pyspy-path at py-spy",
        ), None
    return _passed("pyspy_binary", f"{found} (py-spy {'.'.join(map(str, version))})"), version


def effective_capabilities(proc_root: str = "/proc") -> int | None:
    """``CapEff`` of this process as an integer, ``None`` if unreadable."""
    status = _read(f"{proc_root}/self/status")
    for line in (status or "").splitlines():
        if line.startswith("CapEff:"):
            try:
                return int(line.split(":", 1)[1].strip(), 16)
            except ValueError:
                return None
    return None


def check_pyspy_file_capability(binary: str | None, proc_root: str = "/proc") -> Check | None:
    """The verdict when py-spy carries ``cap_sys_ptrace`` as a file capability; ``None`` when
    it does not (the agent's own capabilities decide then)."""
    name = "ptrace_capability"
    caps = read_file_caps(binary) if binary else None
    process = read_process_caps(proc_root)
    if caps is None or not caps.has(CAP_SYS_PTRACE) or not caps.effective or process is None:
        return None
    if not process.bounding >> CAP_SYS_PTRACE & 1:
        return _failed(
            name,
            NO_PTRACE,
            f"{binary} has the cap_sys_ptrace file capability but SYS_PTRACE is not in the "
            f"agent's bounding set (CapBnd={process.bounding:016x}), so it cannot even start; "
            + _FIX_CAP,
        )
    if process.no_new_privs:
        return _failed(
            name,
            NO_PTRACE,
            f"{binary} has the cap_sys_ptrace file capability, but the agent runs with "
            "no_new_privs, under which the kernel ignores file capabilities (prctl(2)); set "
            "allowPrivilegeEscalation: true in the agent container (docs/security.md)",
            WARN,
        )
    return _passed(
        name,
        f"{binary} gets CAP_SYS_PTRACE from its file capability (cap_sys_ptrace+ep; the agent "
        f"itself runs without it, CapEff={process.effective:016x})",
    )


def check_ptrace_capability(
    proc_root: str = "/proc", *, same_user_target: bool = False, binary: str | None = None
) -> Check:
    caps = effective_capabilities(proc_root)
    if caps is not None and not caps >> CAP_SYS_PTRACE & 1:
        from_file = check_pyspy_file_capability(binary, proc_root)
        if from_file is not None:
            return from_file
    if caps is None:
        return _failed(
            "ptrace_capability",
            NO_PTRACE,
            f"cannot read CapEff from {proc_root}/self/status; whether py-spy may attach is "
            "unknown",
            WARN,
        )
    if caps >> CAP_SYS_PTRACE & 1:
        return _passed("ptrace_capability", f"CAP_SYS_PTRACE is effective (CapEff={caps:016x})")
    if same_user_target:
        return _failed(
            "ptrace_capability",
            NO_PTRACE,
            f"CAP_SYS_PTRACE is not effective (CapEff={caps:016x}); the target runs as the "
            f"same user, which is enough where ptrace_scope allows it; otherwise {_FIX_CAP}",
            WARN,
        )
    return _failed(
        "ptrace_capability",
        NO_PTRACE,
        f"CAP_SYS_PTRACE is not effective (CapEff={caps:016x}), so py-spy may not read "
        f"another user's process; {_FIX_CAP}",
    )


def read_ptrace_scope(proc_root: str = "/proc") -> int | None:
    text = _read(f"{proc_root}/sys/kernel/yama/ptrace_scope")
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def check_ptrace_scope(proc_root: str = "/proc", *, has_cap: bool) -> Check:
    scope = read_ptrace_scope(proc_root)
    name = "ptrace_scope"
    if scope is None:
        return _passed(name, "Yama is not enabled (no kernel.yama.ptrace_scope): classic rules")
    if scope == 0:
        return _passed(name, "kernel.yama.ptrace_scope=0: any process of the same user, or root")
    if scope in (1, 2) and has_cap:
        rule = "descendants only" if scope == 1 else "CAP_SYS_PTRACE only"
        return _passed(name, f"kernel.yama.ptrace_scope={scope} ({rule}); CAP_SYS_PTRACE allows it")
    if scope == 1:
        return _failed(
            name,
            PTRACE_SCOPE,
            "kernel.yama.ptrace_scope=1: only a parent may read a process (or one the target "
            "named with PR_SET_PTRACER), and a sidecar is never the app's parent; "
            f"{_FIX_CAP} (CAP_SYS_PTRACE overrides scope 1)",
        )
    if scope == 2:
        return _failed(
            name,
            PTRACE_SCOPE,
            "kernel.yama.ptrace_scope=2: only processes with CAP_SYS_PTRACE may attach; "
            + _FIX_CAP,
        )
    return _failed(
        name,
        PTRACE_SCOPE,
        f"kernel.yama.ptrace_scope={scope}: ptrace is disabled on this node until reboot "
        "(3 cannot be lowered at runtime); py-spy cannot work here, use the SDK's thread view "
        "or schedule the pod on nodes with kernel.yama.ptrace_scope <= 2",
    )


def _process_state(proc_root: str, pid: int) -> str | None:
    stat = _read(f"{proc_root}/{pid}/stat", 1024)
    if stat is None:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[0] if fields else "?"


def check_target_visible(pid: int, proc_root: str = "/proc") -> Check:
    state = _process_state(proc_root, pid)
    if state is None:
        hint = ""
        if _read(f"{proc_root}/1/cmdline") is not None and os.path.realpath(
            f"{proc_root}/self"
        ).endswith("/1"):
            hint = " This agent is PID 1 in its namespace, so it does not share the pod's."
        return _failed(
            "target_visible",
            PID_NAMESPACE,
            f"pid {pid} is not in {proc_root}: the agent does not share the target's PID "
            "namespace (set shareProcessNamespace: true in the pod spec) or the process has "
            f"exited.{hint}",
        )
    if state in ("Z", "X"):
        return _failed("target_visible", TARGET_GONE, f"pid {pid} has exited (state {state})")
    return _passed("target_visible", f"pid {pid} is visible (state {state})")


def check_target_root(pid: int, proc_root: str = "/proc", *, pyspy_reads: bool = False) -> Check:
    """``pyspy_reads``: py-spy has CAP_SYS_PTRACE of its own (a file capability), so what the
    agent itself may not read, py-spy still can."""
    for path in (f"{proc_root}/{pid}/root", f"{proc_root}/{pid}/maps"):
        try:
            if path.endswith("/root"):
                os.listdir(path)
            else:
                with open(path, "rb") as handle:
                    handle.read(1)
        except PermissionError:
            if pyspy_reads:
                return Check(
                    "target_root",
                    True,
                    "",
                    f"{path} is not readable by the agent itself (it runs without "
                    "CAP_SYS_PTRACE); py-spy reads it with its file capability",
                    SKIP,
                )
            return _failed(
                "target_root",
                PROC_ROOT_UNREADABLE,
                f"{path} is not readable (permission denied): the kernel only lets a process "
                "with ptrace read access see it; run the agent as the target's user or "
                f"{_FIX_CAP}, and check ptrace_scope",
            )
        except OSError as error:
            return _failed(
                "target_root", PROC_ROOT_UNREADABLE, f"{path} cannot be read: {error.strerror}"
            )
    return _passed("target_root", f"{proc_root}/{pid}/root and maps are readable")


def target_python_version(pid: int, proc_root: str = "/proc") -> tuple[int, int, bool] | None:
    """(major, minor, free-threaded) from the target's executable name or its libpython."""
    try:
        exe = os.readlink(f"{proc_root}/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        exe = ""
    match = _VERSION_IN_NAME.search(os.path.basename(exe))
    if match is None:
        match = _LIBPYTHON.search(_read(f"{proc_root}/{pid}/maps", _MAX_MAPS_BYTES) or "")
    if match is None:
        return None
    return int(match[1]), int(match[2]), match[3] == "t"


def newest_supported(pyspy: tuple[int, int, int] | None) -> tuple[int, int] | None:
    """The newest CPython ``pyspy`` reads, per :data:`PYSPY_SUPPORT`; ``None`` if unknown."""
    if pyspy is None:
        return None
    newest = None
    for release, python in PYSPY_SUPPORT:
        if pyspy >= release:
            newest = python
    return newest


def check_target_python(
    pid: int, proc_root: str = "/proc", *, pyspy: tuple[int, int, int] | None
) -> Check:
    name = "target_python"
    version = target_python_version(pid, proc_root)
    if version is None:
        try:
            exe = os.readlink(f"{proc_root}/{pid}/exe")
        except OSError:
            return Check(
                name,
                True,
                "",
                f"cannot read {proc_root}/{pid}/exe to tell the Python version (see target_root)",
                SKIP,
            )
        return _failed(
            name,
            NOT_PYTHON,
            f"pid {pid} runs {exe} and maps no libpython: no Python version found; if it is "
            "Python, py-spy will tell at the first dump, else check --target-pid",
            WARN,
        )
    major, minor, free_threaded = version
    shown = f"{major}.{minor}{'t' if free_threaded else ''}"
    newest = newest_supported(pyspy)
    too_old = (major, minor) < (2, 3) or (major == 3 and minor < 3)
    if too_old or (newest is not None and (major, minor) > newest):
        supported = f"2.3-2.7 and 3.3-{newest[0]}.{newest[1]}" if newest else "2.3-2.7, 3.3+"
        return _failed(
            name,
            UNSUPPORTED_PYTHON,
            f"pid {pid} runs Python {shown}; this py-spy reads {supported}; upgrade py-spy "
            "(pip install -U py-spy in the agent image) or keep the SDK's thread view",
        )
    if free_threaded:
        return _failed(
            name,
            UNSUPPORTED_PYTHON,
            f"pid {pid} runs a free-threaded Python {shown}; py-spy 0.4 does not list these "
            "builds as supported, so dumps may fail",
            WARN,
        )
    if newest is None:
        return _passed(name, f"pid {pid} runs Python {shown}; py-spy's range is unknown", WARN)
    return _passed(
        name, f"pid {pid} runs Python {shown} (py-spy reads up to {newest[0]}.{newest[1]})"
    )


# -- together -------------------------------------------------------------------------------------


def _target_uid(pid: int, proc_root: str) -> int | None:
    for line in (_read(f"{proc_root}/{pid}/status") or "").splitlines():
        if line.startswith("Uid:"):
            parts = line.split()
            return int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
    return None


def run_preflight(
    pid: int | None, proc_root: str = "/proc", *, binary: str | None = None
) -> list[Check]:
    """Every check for sampling ``pid`` (or this node only, with ``None``). Never raises."""
    binary_check, version = check_pyspy_binary(binary)
    checks = [binary_check]
    visible = check_target_visible(pid, proc_root) if pid is not None else None
    same_user = (
        pid is not None
        and visible is not None
        and visible.ok
        and _target_uid(pid, proc_root) == os.geteuid()
        and (read_ptrace_scope(proc_root) or 0) == 0
    )
    capability = check_ptrace_capability(
        proc_root, same_user_target=same_user, binary=find_pyspy(binary)
    )
    checks.append(capability)
    has_cap = capability.ok and (capability.level == OK or "file capability" in capability.message)
    from_file = has_cap and "file capability" in capability.message
    checks.append(check_ptrace_scope(proc_root, has_cap=has_cap))
    if pid is None or visible is None:
        checks.append(Check("target", True, "", "no target pid given: node checks only", SKIP))
        return checks
    checks.append(visible)
    if not visible.ok:
        return checks
    checks.append(check_target_root(pid, proc_root, pyspy_reads=from_file))
    checks.append(check_target_python(pid, proc_root, pyspy=version))
    return checks


def diagnose_denial(pid: int, result: DumpResult, proc_root: str = "/proc") -> tuple[str, str]:
    """The most precise reason py-spy was refused, for ``PySpySampler(diagnose=...)``.

    A scope that no capability can lift (3) or a target out of sight outranks the capability.
    """
    failed = {c.reason: c for c in run_preflight(pid, proc_root) if not c.ok and c.reason}
    for reason in _DENIAL_ORDER:
        if reason in failed:
            return reason, failed[reason].message
    return (
        result.reason or NO_PTRACE,
        f"{result.message}; every preflight check passed, so a seccomp profile may be blocking "
        "ptrace/process_vm_readv (RuntimeDefault allows them only with SYS_PTRACE)",
    )


def render_doctor(checks: Iterable[Check], pid: int | None = None) -> str:
    """The text of ``drainwatch doctor``: one line per check, then a verdict."""
    checks = list(checks)
    width = max((len(check.name) for check in checks), default=0)
    subject = f"pid {pid}" if pid is not None else "this node"
    lines = [f"drainwatch doctor: py-spy sampling of {subject}"]
    for check in checks:
        tag = {OK: "ok", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}.get(check.level, check.level)
        reason = f" [{check.reason}]" if check.reason else ""
        lines.append(f"  {tag:<4}  {check.name:<{width}}  {check.message}{reason}")
    failed = [check.reason for check in checks if not check.ok]
    warned = [check.reason or check.name for check in checks if check.level == WARN]
    if failed:
        lines.append(
            f"result: py-spy sampling will not work ({', '.join(failed)}); the agent keeps "
            "running without stacks and reports drainwatch_sampler_unavailable{reason}"
        )
    elif warned:
        lines.append(f"result: py-spy sampling should work, with warnings ({', '.join(warned)})")
    else:
        lines.append("result: py-spy sampling works")
    return "\n".join(lines) + "\n"
