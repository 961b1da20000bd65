"""``drainwatch run -- CMD ARGS...``: exec a command with auto-instrumentation.

The command replaces this process (same PID, so signals sent to the container's process
go straight to the application). The environment carries the settings and puts
drainwatch's ``sitecustomize`` first on ``PYTHONPATH``; any Python started by the command
is instrumented before its first line runs.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence

from ._autoinstrument import ENV_AUTO
from ._endpoint import EndpointError, parse_endpoint
from ._settings import ENV_ENDPOINT, ENV_SERVICE

BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")
ENV_HEALTH_PORTS = "DRAINWATCH_HEALTH_PORTS"
EXIT_USAGE = 2


class RunError(Exception):
    """The command cannot be started as asked; the message says why and what to do."""


def _check_ports(text: str) -> str:
    ports = [part.strip() for part in text.split(",") if part.strip()]
    if not ports or not all(port.isdigit() and 0 < int(port) < 65536 for port in ports):
        raise RunError(f'"--health-ports" must be comma-separated ports from 1 to 65535: "{text}"')
    return ",".join(ports)


def build_environment(
    base: Mapping[str, str],
    *,
    service: str | None = None,
    endpoint: str | None = None,
    health_ports: str | None = None,
) -> dict[str, str]:
    """The environment the command runs with; raises ``RunError`` for bad settings."""
    env = dict(base)
    if service is not None:
        if not service.strip():
            raise RunError('"--service" must be a non-empty name')
        env[ENV_SERVICE] = service.strip()
    if endpoint is not None:
        try:
            parse_endpoint(endpoint, setting="--endpoint")
        except EndpointError as error:
            raise RunError(str(error)) from None
        env[ENV_ENDPOINT] = endpoint
    if health_ports is not None:
        env[ENV_HEALTH_PORTS] = _check_ports(health_ports)
    env[ENV_AUTO] = "1"
    paths = [BOOTSTRAP_DIR, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def exec_command(command: Sequence[str], env: Mapping[str, str]) -> None:
    """Replace this process with ``command``; returns only by raising ``RunError``."""
    if not command:
        raise RunError("no command given: drainwatch run [options] -- CMD ARGS...")
    program = command[0]
    if shutil.which(program, path=env.get("PATH")) is None and not os.path.isfile(program):
        raise RunError(f"command not found: {program!r}; check the name and PATH")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(program, list(command), dict(env))  # noqa: S606 - exec is the point
    except OSError as error:
        raise RunError(f"cannot run {program!r}: {error.strerror or error}") from None
