"""Preflight: on fake /proc trees built from this machine's real files, and on the real /proc.

Each fake tree copies the real ``/proc/self/status``, ``stat`` and ``maps`` of a live process
and changes only the part under test (the CapEff bits, the process state, the mapped
libpython), so the parsers see the kernel's real formats.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from drainwatch.collectors import preflight
from drainwatch.collectors.preflight import (
    CAP_SYS_PTRACE,
    Check,
    check_ptrace_capability,
    check_ptrace_scope,
    check_target_python,
    check_target_root,
    check_target_visible,
    diagnose_denial,
    newest_supported,
    render_doctor,
    run_preflight,
)
from drainwatch.collectors.pyspy import DENIED, DumpResult

from tests.collectors.test_thread_waits import running_script

PID = 4242
PYSPY_043 = (0, 4, 3)
ALL_CAPS = (1 << 41) - 1


def _real(path: str) -> str:
    return Path(path).read_text()


def fake_proc(
    root: Path,
    *,
    cap_eff: int = ALL_CAPS,
    scope: int | None = None,
    pid: int | None = PID,
    state: str = "S",
    exe: str = "/usr/local/bin/python3.11",
    libpython: str | None = None,
    uid: int = 0,
) -> str:
    """A /proc tree: ``self/status`` with ``cap_eff``, Yama's ``ptrace_scope``, and ``pid``."""
    status = re.sub(r"CapEff:\s*\S+", f"CapEff:\t{cap_eff:016x}", _real("/proc/self/status"))
    (root / "self").mkdir(parents=True)
    (root / "self" / "status").write_text(status)
    if scope is not None:
        yama = root / "sys" / "kernel" / "yama"
        yama.mkdir(parents=True)
        (yama / "ptrace_scope").write_text(f"{scope}\n")
    if pid is not None:
        process = root / str(pid)
        (process / "root").mkdir(parents=True)
        tail = _real("/proc/self/stat").rpartition(")")[2]
        (process / "stat").write_text(f"{pid} (python3) {state}{tail[2:]}")
        target_status = re.sub(r"Uid:\s*\d+", f"Uid:\t{uid}", _real("/proc/self/status"))
        target_status = re.sub(r"(Uid:\t\d+)\s+\d+", rf"\g<1>\t{uid}", target_status)
        (process / "status").write_text(target_status)
        os.symlink(exe, process / "exe")
        real_maps = _real("/proc/self/maps").replace(os.path.realpath(sys.executable), exe)
        maps = "".join(
            line for line in real_maps.splitlines(keepends=True) if "libpython" not in line
        )
        if libpython is not None:
            maps += f"7f0000000000-7f0000001000 r-xp 00000000 fe:00 1234 {libpython}\n"
        (process / "maps").write_text(maps)
    return str(root)


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_ptrace_capability_follows_capeff_bit_19(tmp_path: Path) -> None:
    """CAP_SYS_PTRACE present in CapEff passes; cleared, it fails as no_ptrace with the fix."""
    with_cap = fake_proc(tmp_path / "a")
    without = fake_proc(tmp_path / "b", cap_eff=ALL_CAPS & ~(1 << CAP_SYS_PTRACE))
    assert check_ptrace_capability(with_cap).level == "ok"
    missing = check_ptrace_capability(without)
    assert (missing.ok, missing.reason, missing.level) == (False, "no_ptrace", "fail")
    assert 'capabilities.add: ["SYS_PTRACE"]' in missing.message


def test_missing_capability_is_a_warning_for_a_same_user_target(tmp_path: Path) -> None:
    """Without the cap, a same-user target under ptrace_scope 0 is a warning, not a failure."""
    root = fake_proc(tmp_path, cap_eff=0, scope=0, uid=os.geteuid())
    checks = _by_name(run_preflight(PID, root))
    assert checks["ptrace_capability"].level == "warn"
    assert checks["ptrace_capability"].ok


@pytest.mark.parametrize(
    ("scope", "has_cap", "ok"),
    [
        (None, False, True),
        (0, False, True),
        (1, True, True),
        (1, False, False),
        (2, True, True),
        (2, False, False),
        (3, True, False),
        (3, False, False),
    ],
)
def test_ptrace_scope_values(tmp_path: Path, scope: int | None, has_cap: bool, ok: bool) -> None:
    """Yama scopes 0-3 with and without CAP_SYS_PTRACE: 1 and 2 need the cap, 3 never works."""
    check = check_ptrace_scope(fake_proc(tmp_path, scope=scope), has_cap=has_cap)
    assert check.ok is ok
    if not ok:
        assert check.reason == "ptrace_scope"
        assert f"ptrace_scope={scope}" in check.message
    if scope == 1 and not ok:
        assert "PR_SET_PTRACER" in check.message
        assert "SYS_PTRACE" in check.message
    if scope == 3:
        assert "until reboot" in check.message


def test_invisible_target_means_pid_namespace(tmp_path: Path) -> None:
    """A pid missing from /proc fails as pid_namespace and names shareProcessNamespace."""
    check = check_target_visible(PID, fake_proc(tmp_path, pid=None))
    assert (check.ok, check.reason) == (False, "pid_namespace")
    assert "shareProcessNamespace: true" in check.message


def test_zombie_target_is_gone(tmp_path: Path) -> None:
    """A zombie (state Z in the real stat format) is a target that has gone."""
    check = check_target_visible(PID, fake_proc(tmp_path, state="Z"))
    assert (check.ok, check.reason) == (False, "target_gone")


def test_readable_target_root_passes(tmp_path: Path) -> None:
    """A fake target whose root and maps can be read passes target_root."""
    assert check_target_root(PID, fake_proc(tmp_path)).ok


def test_target_root_that_is_not_a_directory_is_unreadable(tmp_path: Path) -> None:
    """A root that cannot be listed fails as proc_root_unreadable (root bypasses chmod here)."""
    root = fake_proc(tmp_path)
    (Path(root) / str(PID) / "root").rmdir()
    (Path(root) / str(PID) / "root").write_text("")
    check = check_target_root(PID, root)
    assert (check.ok, check.reason) == (False, "proc_root_unreadable")


@pytest.mark.parametrize(
    ("exe", "libpython", "pyspy", "level", "reason", "shown"),
    [
        ("/usr/local/bin/python3.11", None, PYSPY_043, "ok", "", "3.11"),
        ("/usr/bin/python3.13", None, (0, 4, 0), "ok", "", "3.13"),
        ("/usr/bin/python3.14", None, (0, 4, 0), "fail", "unsupported_python", "3.14"),
        ("/usr/bin/python3.16", None, PYSPY_043, "fail", "unsupported_python", "3.16"),
        ("/usr/bin/python3.13t", None, PYSPY_043, "warn", "unsupported_python", "3.13t"),
        ("/opt/app/uwsgi", "/usr/local/lib/libpython3.12.so.1.0", PYSPY_043, "ok", "", "3.12"),
        ("/usr/bin/python3.12 (deleted)", None, PYSPY_043, "ok", "", "3.12"),
        ("/usr/bin/sleep", None, PYSPY_043, "warn", "not_python", "/usr/bin/sleep"),
        ("/usr/bin/python3.11", None, None, "warn", "", "3.11"),
    ],
)
def test_target_python_against_pyspy_support(
    tmp_path: Path,
    exe: str,
    libpython: str | None,
    pyspy: tuple[int, int, int] | None,
    level: str,
    reason: str,
    shown: str,
) -> None:
    """The target's Python (from exe or a mapped libpython) is checked against py-spy's range."""
    root = fake_proc(tmp_path, exe=exe, libpython=libpython)
    check = check_target_python(PID, root, pyspy=pyspy)
    assert (check.level, check.reason) == (level, reason)
    assert shown in check.message


def test_pyspy_support_table() -> None:
    """Each py-spy release maps to the newest CPython it reads; unknown versions map to None."""
    assert newest_supported((0, 3, 14)) == (3, 11)
    assert newest_supported((0, 4, 0)) == (3, 13)
    assert newest_supported((0, 4, 3)) == (3, 15)
    assert newest_supported((0, 2, 0)) is None
    assert newest_supported(None) is None


def test_missing_binary_is_reported_first(tmp_path: Path) -> None:
    """A py-spy path that does not exist fails as binary_missing, and the rest still runs."""
    checks = run_preflight(PID, fake_proc(tmp_path), binary=str(tmp_path / "no-py-spy"))
    assert (checks[0].name, checks[0].reason) == ("pyspy_binary", "binary_missing")
    assert [check.name for check in checks][-1] == "target_python"


def test_doctor_text_names_every_problem_and_fix(tmp_path: Path) -> None:
    """The doctor text has one line per check, the reason codes, the fixes and a verdict."""
    root = fake_proc(tmp_path, cap_eff=0, scope=1, pid=None)
    checks = run_preflight(PID, root)
    text = render_doctor(checks, PID)
    assert text.startswith(f"drainwatch doctor: py-spy sampling of pid {PID}\n")
    assert "FAIL  ptrace_capability" in text
    assert "[ptrace_scope]" in text
    assert "[pid_namespace]" in text
    assert "shareProcessNamespace" in text
    assert "result: py-spy sampling will not work (no_ptrace, ptrace_scope, pid_namespace)" in text


def test_real_proc_of_this_machine() -> None:
    """On the real /proc every check runs and a live Python child is seen, readable and known."""
    with running_script("import time\nprint('ready', flush=True)\ntime.sleep(30)\n") as child:
        checks = run_preflight(child.pid)
    text = render_doctor(checks, child.pid)
    by_name = _by_name(checks)
    assert list(by_name) == [
        "pyspy_binary",
        "ptrace_capability",
        "ptrace_scope",
        "target_visible",
        "target_root",
        "target_python",
    ]
    assert by_name["target_visible"].ok, text
    assert by_name["target_python"].level == "ok", text
    assert f"runs Python {sys.version_info[0]}.{sys.version_info[1]}" in text
    assert text.splitlines()[-1].startswith("result: py-spy sampling ")
    if os.geteuid() == 0:  # as root with py-spy installed (CI), everything passes
        assert all(check.ok for check in checks), text


def _nobody_can_import() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(
        [*_AS_NOBODY, sys.executable, "-c", "import drainwatch.collectors.preflight"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


_AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_real_denial_as_an_unprivileged_user() -> None:
    """Run as nobody against a root process: no capability and an unreadable /proc/PID/root."""
    if not _nobody_can_import():
        pytest.skip("needs root, setpriv, and a venv that user nobody can run")
    with running_script("import time\nprint('ready', flush=True)\ntime.sleep(30)\n") as child:
        code = (
            "from drainwatch.collectors.preflight import run_preflight\n"
            f"for c in run_preflight({child.pid}): print(c.name, c.level, c.reason)\n"
        )
        completed = subprocess.run(
            [*_AS_NOBODY, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    rows = {line.split()[0]: line.split()[1:] for line in completed.stdout.splitlines()}
    assert rows["ptrace_capability"] == ["fail", "no_ptrace"]
    assert rows["target_root"] == ["fail", "proc_root_unreadable"]
    assert rows["target_python"] == ["skip"]


def test_diagnose_denial_picks_the_precise_reason(tmp_path: Path) -> None:
    """A denied dump is explained by the most precise failing check: ptrace_scope before the cap."""
    root = fake_proc(tmp_path, cap_eff=0, scope=2)
    denied = DumpResult(DENIED, "no_ptrace", "py-spy was refused", PID)
    reason, message = diagnose_denial(PID, denied, root)
    assert reason == "ptrace_scope"
    assert "SYS_PTRACE" in message
    root_ok = fake_proc(tmp_path / "ok", scope=2)
    reason, message = diagnose_denial(PID, denied, root_ok)
    assert reason == "no_ptrace"
    assert "seccomp" in message


def test_node_only_preflight_skips_target_checks(tmp_path: Path) -> None:
    """Without a pid only the binary, capability and scope are checked; the target is skipped."""
    checks = run_preflight(None, fake_proc(tmp_path, pid=None))
    assert [check.name for check in checks] == [
        "pyspy_binary",
        "ptrace_capability",
        "ptrace_scope",
        "target",
    ]
    assert checks[-1].level == preflight.SKIP
