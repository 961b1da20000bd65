"""The agent as the image runs it: a non-root user with no capability in effect, SYS_PTRACE
only in its bounding set, and py-spy carrying cap_sys_ptrace as a file capability, sampling
a target that belongs to a third user.

No container engine runs here, so the image's setup is reproduced with the same tools it
uses: the Dockerfile's own grant command on a copy of py-spy, and ``setpriv`` for what the
container runtime does (user, group, no inheritable capabilities, the bounding set). It
needs root to set the file capability and to switch users (CI runs as root)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from drainwatch.collectors.file_caps import CAP_SYS_PTRACE, read_file_caps
from drainwatch.collectors.pyspy import find_pyspy

from tests.deploy.test_dockerfile import stages
from tests.processes import short_tmpdir

pytestmark = pytest.mark.e2e

AGENT_UID = 10001  # the image's USER
TARGET_UID = 20002  # neither root nor the agent: the app of another team, say
SETPRIV = shutil.which("setpriv")

TARGET = """
import queue, threading, time
jobs = queue.Queue()
threading.Thread(target=jobs.get, name="stuck-consumer", daemon=True).start()
print("ready", flush=True)
time.sleep(300)
"""


def _as_user(uid: int, bounding: str, *extra: str) -> list[str]:
    """What the container runtime does before it starts the container's command."""
    assert SETPRIV is not None
    return [
        SETPRIV,
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--inh-caps=-all",
        f"--bounding-set={bounding}",
        *extra,
        "--",
    ]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    if os.geteuid() != 0 or SETPRIV is None:
        pytest.skip("needs root and setpriv (util-linux) to switch users (CI runs as root)")
    for uid in (AGENT_UID, TARGET_UID):
        probe = subprocess.run(
            [*_as_user(uid, "-all"), sys.executable, "-c", "import drainwatch.agent.cli"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if probe.returncode != 0:
            pytest.skip(f"uid {uid} cannot run this checkout's Python: {probe.stderr.strip()}")
    directory = Path(short_tmpdir())
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def target(workdir: Path) -> Iterator[int]:
    """A Python process of TARGET_UID with a thread stuck in queue.get."""
    script = workdir / "target.py"
    script.write_text(textwrap.dedent(TARGET))
    script.chmod(0o644)
    process = subprocess.Popen(
        [*_as_user(TARGET_UID, "-all"), sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait(10)
        process.stdout.close()


def _pyspy_copy(workdir: Path, name: str, granted: bool) -> Path:
    """A copy of the agent's py-spy; ``granted`` runs the Dockerfile's own grant step on it."""
    source = find_pyspy()
    assert source is not None
    copy = workdir / name
    shutil.copy(source, copy)
    copy.chmod(0o755)
    if granted:
        [run] = [c.value[0] for c in stages()["agent"] if c.cmd == "RUN"]
        grant = next(part for part in run.split("&&") if "file_caps grant" in part).strip()
        command = grant.replace("/opt/drainwatch/bin/python", sys.executable).replace(
            "/opt/drainwatch/bin/py-spy", str(copy)
        )
        subprocess.run(command.split(), check=True, capture_output=True, timeout=60)
        caps = read_file_caps(str(copy))
        assert caps is not None and caps.has(CAP_SYS_PTRACE) and caps.effective
    return copy


def _doctor(pid: int, pyspy: Path, bounding: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *_as_user(AGENT_UID, bounding, *extra),
            *(sys.executable, "-m", "drainwatch", "doctor"),
            *("--target-pid", str(pid), "--pyspy-binary", str(pyspy)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_the_file_capability_a_non_root_agent_cannot_sample(
    workdir: Path, target: int
) -> None:
    """The bounding set alone gives a non-root process nothing: py-spy is refused, and the
    doctor says so with the fix."""
    result = _doctor(
        target, _pyspy_copy(workdir, "py-spy-plain", granted=False), "-all,+sys_ptrace"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL" in result.stdout and "no_ptrace" in result.stdout


def test_with_the_file_capability_a_non_root_agent_samples_another_users_target(
    workdir: Path, target: int
) -> None:
    """As the image runs it, the doctor passes and a real agent reports the target's stuck
    thread from py-spy, while the agent process itself has no capability in effect."""
    pyspy = _pyspy_copy(workdir, "py-spy-granted", granted=True)
    doctor = _doctor(target, pyspy, "-all,+sys_ptrace")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "gets CAP_SYS_PTRACE from its file capability" in doctor.stdout
    log = workdir / "agent.log"
    sockets = workdir / "run"  # the socket volume, writable by the agent's user
    sockets.mkdir()
    os.chown(sockets, AGENT_UID, AGENT_UID)
    with open(log, "wb") as output:
        agent = subprocess.Popen(
            [
                *_as_user(AGENT_UID, "-all,+sys_ptrace"),
                *(sys.executable, "-m", "drainwatch", "agent", "--listen", "127.0.0.1:0"),
                *("--ingest", f"unix://{sockets}/ingest.sock", "--target-pid", str(target)),
                *("--pyspy-binary", str(pyspy), "--pyspy-interval", "0.3"),
                *("--target-exit-wait", "0", "--final-metrics-seconds", "0"),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(workdir)},
        )
    try:
        url = _listening(log, agent)
        metrics = _until_metric(url, 'thread="stuck-consumer"', 30)
        status = Path(f"/proc/{agent.pid}/status").read_text()
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(15)
    assert 'reason="queue_get"' in metrics and 'source="pyspy"' in metrics
    assert "drainwatch_sampler_unavailable{" not in metrics
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split()[0] == str(AGENT_UID)
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 1 << CAP_SYS_PTRACE


def test_without_sys_ptrace_in_the_bounding_set_the_granted_pyspy_cannot_start(
    workdir: Path, target: int
) -> None:
    """A pod that does not add SYS_PTRACE: the doctor names the missing capabilities.add."""
    result = _doctor(target, _pyspy_copy(workdir, "py-spy-nobnd", granted=True), "-all")
    assert result.returncode == 1, result.stdout
    assert "not in the agent's bounding set" in result.stdout and "SYS_PTRACE" in result.stdout


def test_no_new_privs_is_flagged_with_the_fix(workdir: Path, target: int) -> None:
    """allowPrivilegeEscalation: false sets no_new_privs, under which prctl(2) says file
    capabilities are ignored: the doctor warns and names the setting to change."""
    pyspy = _pyspy_copy(workdir, "py-spy-nnp", granted=True)
    result = _doctor(target, pyspy, "-all,+sys_ptrace", "--no-new-privs")
    assert "WARN" in result.stdout and "allowPrivilegeEscalation: true" in result.stdout


def _listening(log: Path, agent: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "listening on http://" in text:
            return "http://" + text.split("listening on http://")[1].split()[0]
        assert agent.poll() is None, text
        time.sleep(0.1)
    raise AssertionError(log.read_text(errors="replace"))


def _until_metric(url: str, needle: str, timeout: float) -> str:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            text: str = response.read().decode()
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.2)
