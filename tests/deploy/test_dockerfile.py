"""deploy/Dockerfile: hadolint finds nothing, the image is slim, non-root and read-only
friendly with py-spy inside, and the commands its RUN steps execute work.

No container engine runs here, so the image is never built: the commands of its RUN steps
run in a virtualenv instead (the image's paths mapped into a temporary directory), and the
agent it installs is started the way the image's ENTRYPOINT and CMD start it, with the
shipped ConfigMap as its configuration.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dockerfile
import pytest
import yaml

from tests.deploy.promql import ROOT
from tests.processes import short_tmpdir

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
IMAGE_VENV = "/opt/drainwatch"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def stages() -> dict[str, list[dockerfile.Command]]:
    found: dict[str, list[dockerfile.Command]] = {}
    current: list[dockerfile.Command] = []
    for command in instructions():
        if command.cmd == "FROM":
            current = found.setdefault(command.value[-1], [])
        current.append(command)
    return found


def test_hadolint_finds_nothing() -> None:
    """hadolint (the Dockerfile linter, from its PyPI wheel) reports no finding at all."""
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_hadolint_flags_a_root_image_with_an_unpinned_base(tmp_path: Path) -> None:
    """The lint can fail: an unpinned base image is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install drainwatch\n")
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_the_agent_stage_is_slim_non_root_and_starts_the_agent() -> None:
    """The runtime stage is a -slim Python, copies only the virtualenv from the build
    stage, gives py-spy its file capability and strips setuid bits (its one RUN, executed
    by tests/e2e/test_least_privilege.py), runs as a numeric non-root user and starts
    `drainwatch agent`."""
    agent = stages()["agent"]
    base = next(c for c in instructions() if c.cmd == "ARG").value[0]
    assert "-slim" in base
    [run] = [c.value[0] for c in agent if c.cmd == "RUN"]
    grant, strip = (part.strip() for part in run.split("&&"))
    assert grant.endswith("file_caps grant /opt/drainwatch/bin/py-spy")
    assert strip == "find / -xdev -perm /6000 -type f -exec chmod a-s {} +"
    copies = [c for c in agent if c.cmd == "COPY"]
    assert [c.flags for c in copies] == [("--from=build",)]
    user = next(c for c in agent if c.cmd == "USER").value[0]
    uid, _, gid = user.partition(":")
    assert int(uid) > 0 and int(gid) > 0
    assert next(c for c in agent if c.cmd == "ENTRYPOINT").value == ("drainwatch",)
    assert next(c for c in agent if c.cmd == "CMD").value[0] == "agent"


def test_the_example_stage_runs_its_service_under_drainwatch_run_as_non_root() -> None:
    """The example image ends as a non-root user and wraps its command in drainwatch run."""
    example = stages()["example"]
    users = [c.value[0] for c in example if c.cmd == "USER"]
    assert users[-1].split(":")[0] != "0"
    assert next(c for c in example if c.cmd == "ENTRYPOINT").value[:2] == ("drainwatch", "run")


def _run_steps(stage: str) -> list[str]:
    return [command.value[0] for command in stages()[stage] if command.cmd == "RUN"]


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_the_images_commands_install_a_working_agent_with_pyspy(tmp_path: Path) -> None:
    """The RUN steps of the build and example stages, run with /opt/drainwatch mapped to a
    temporary virtualenv, install drainwatch with py-spy; the agent then starts as the
    image's CMD starts it, with the shipped ConfigMap (paths mapped), and serves /metrics."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("sdk", "agent", "collectors"):
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    venv = tmp_path / "venv"
    env = {
        **os.environ,
        "VENV": str(venv),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    python = Path(sys.base_prefix) / "bin" / "python3"
    env["PATH"] = f"{python.parent}:{env['PATH']}"
    for step in _run_steps("build") + _run_steps("example"):
        command = step.replace(IMAGE_VENV, str(venv))
        result = subprocess.run(
            ["/bin/sh", "-c", command],
            cwd=source,
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
            check=False,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    assert (venv / "bin" / "py-spy").is_file()
    _start_agent_as_the_image_does(venv, tmp_path)


def _start_agent_as_the_image_does(venv: Path, tmp_path: Path) -> None:
    configmap = yaml.safe_load(
        (ROOT / "deploy" / "kubernetes" / "agent-configmap.yaml").read_text()
    )
    settings = configmap["data"]["agent.yaml"]
    socket_dir = Path(short_tmpdir())
    for image_path, local in (
        ("/run/drainwatch", socket_dir),
        ("/var/lib/drainwatch", tmp_path / "state"),
        ("0.0.0.0:9469", "127.0.0.1:0"),
    ):
        settings = settings.replace(image_path, str(local))
    (tmp_path / "state").mkdir()
    config = tmp_path / "agent.yaml"
    config.write_text(settings)
    cmd = next(c for c in stages()["agent"] if c.cmd == "CMD").value
    args = [arg if arg != "/etc/drainwatch/agent.yaml" else str(config) for arg in cmd]
    log = tmp_path / "agent.log"
    with open(log, "wb") as output:
        agent = subprocess.Popen(
            [str(venv / "bin" / "drainwatch"), *args, "--final-metrics-seconds", "0"],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"},
        )
    try:
        url = _listening_url(log, agent)
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'drainwatch_agent_build_info{service="payments"' in text
        assert (socket_dir / "ingest.sock").exists()
    finally:
        agent.terminate()
        agent.wait(15)
        shutil.rmtree(socket_dir, ignore_errors=True)


def _listening_url(log: Path, agent: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        for line in text.splitlines():
            if "listening on http://" in line:
                return "http://" + line.split("listening on http://")[1].split()[0]
        assert agent.poll() is None, text
        time.sleep(0.1)
    raise AssertionError(f"the agent did not start:\n{log.read_text(errors='replace')}")
