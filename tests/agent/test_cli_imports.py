"""The ``drainwatch`` command stays importable in an image with only the SDK: registering
``verify-shutdown`` and ``lint`` imports none of the agent's dependencies."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("yaml", "aiohttp", "grpc", "prometheus_client", "psutil", "jsonschema")


def test_building_the_parser_imports_no_agent_dependency() -> None:
    """A fresh interpreter builds the whole parser without importing PyYAML, aiohttp..."""
    code = (
        "import json, sys\n"
        "from drainwatch.agent.cli import build_parser\n"
        "build_parser().parse_args(['lint', '.'])\n"
        "build_parser().parse_args(['verify-shutdown', '--http', 'http://h:1/', '--', 'x'])\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == []
