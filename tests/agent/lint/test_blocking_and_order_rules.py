"""DW104 (blocking calls in async code) and DW105 (health stopped before business): what
each must find, and the look-alikes it must leave alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.lint.helpers import codes, findings

BLOCKING = {
    "time.sleep": "import time\nasync def h():\n    time.sleep(1)\n",
    "from time import sleep": "from time import sleep\nasync def h():\n    sleep(1)\n",
    "requests.get": "import requests\nasync def h():\n    return requests.get('u')\n",
    "a requests session": (
        "import requests\nasync def h():\n    s = requests.Session()\n    s.post('u')\n"
    ),
    "httpx sync": "import httpx\nasync def h():\n    httpx.get('u')\n",
    "urlopen": "import urllib.request\nasync def h():\n    urllib.request.urlopen('u')\n",
    "open": "async def h():\n    with open('f') as f:\n        return f.read()\n",
    "subprocess.run": "import subprocess\nasync def h():\n    subprocess.run(['ls'])\n",
    "pathlib read": "from pathlib import Path\nasync def h():\n    Path('f').read_text()\n",
    "socket recv": ("import socket\nasync def h():\n    s = socket.socket()\n    s.recv(10)\n"),
}

BLOCKING_LOOK_ALIKES = {
    "asyncio.sleep": "import asyncio\nasync def h():\n    await asyncio.sleep(1)\n",
    "passed to a thread": (
        "import asyncio, time\nasync def h():\n    await asyncio.to_thread(time.sleep, 1)\n"
    ),
    "in a lambda for an executor": (
        "import asyncio, time\nasync def h(loop):\n"
        "    await loop.run_in_executor(None, lambda: time.sleep(1))\n"
    ),
    "sync function": "import time\ndef h():\n    time.sleep(1)\n",
    "aiofiles open": "from aiofiles import open\nasync def h():\n    await open('f')\n",
    "an aiohttp session get": (
        "async def h(session):\n    async with session.get('u') as r:\n        return r\n"
    ),
    "nested sync def run in a thread": (
        "import asyncio, time\nasync def h():\n    def work():\n        time.sleep(1)\n"
        "    await asyncio.to_thread(work)\n"
    ),
}


@pytest.mark.parametrize("name", list(BLOCKING))
def test_a_blocking_call_in_async_def_is_found(tmp_path: Path, name: str) -> None:
    """Each blocking call made directly in an ``async def``: DW104."""
    assert codes(tmp_path, BLOCKING[name]).count("DW104") == 1


@pytest.mark.parametrize("name", list(BLOCKING_LOOK_ALIKES))
def test_non_blocking_look_alikes_are_left_alone(tmp_path: Path, name: str) -> None:
    """Async equivalents, functions handed to threads, and sync code: not DW104."""
    assert "DW104" not in codes(tmp_path, BLOCKING_LOOK_ALIKES[name])


def test_the_blocking_finding_names_the_call_and_the_fix(tmp_path: Path) -> None:
    """Which call, in which function, and what to use instead."""
    [found] = findings(tmp_path, BLOCKING["time.sleep"])
    assert (found.line, found.column) == (3, 5)
    assert "`time.sleep()` blocks the event loop inside `async def h`" in found.message
    assert "await asyncio.sleep" in found.message


HEALTH_FIRST = {
    "grpc and aiohttp": """
        async def shutdown(server, health_runner):
            await health_runner.cleanup()
            await server.stop(5)
        """,
    "sync grpc": """
        def shutdown(server, health_server):
            health_server.stop(0).wait()
            server.stop(10).wait()
        """,
    "uvicorn flags": """
        async def shutdown(api_server, health_server):
            health_server.should_exit = True
            api_server.should_exit = True
        """,
    "built by constructors": """
        from aiohttp import web
        async def main(app, probes):
            business = web.AppRunner(app)
            liveness = web.AppRunner(probes)
            await liveness.cleanup()
            await business.cleanup()
        """,
    "on one branch only": """
        async def shutdown(server, health_server, broken):
            if broken:
                await health_server.stop(0)
                await server.stop(0)
                return
            await server.stop(5)
            await health_server.stop(0)
        """,
}

HEALTH_LAST = {
    "business first": """
        async def shutdown(server, health_server):
            await server.stop(5)
            await health_server.stop(0)
        """,
    "readiness off is not a stop": """
        async def shutdown(server, health_servicer, health_server):
            await health_servicer.enter_graceful_shutdown()
            await server.stop(5)
            await health_server.stop(0)
        """,
    "a health channel closed is not a server": """
        async def shutdown(server, health_events):
            health_events.close()
            await server.stop(5)
        """,
    "different functions": """
        async def stop_health(health_server):
            await health_server.stop(0)
        async def stop_business(server):
            await server.stop(5)
        """,
}


@pytest.mark.parametrize("name", list(HEALTH_FIRST))
def test_health_stopped_before_business_is_found(tmp_path: Path, name: str) -> None:
    """A health server stopped before a business server on one path: DW105."""
    assert codes(tmp_path, HEALTH_FIRST[name]).count("DW105") == 1


@pytest.mark.parametrize("name", list(HEALTH_LAST))
def test_health_last_and_look_alikes_are_left_alone(tmp_path: Path, name: str) -> None:
    """Business first, readiness off, a health channel, separate functions: not DW105."""
    assert "DW105" not in codes(tmp_path, HEALTH_LAST[name])


def test_the_example_services_show_every_mistake_in_their_broken_branch(
    tmp_path: Path,
) -> None:
    """The broken shutdowns of examples/services are found, the good ones are not."""
    from drainwatch.agent.lint import lint_paths

    root = Path(__file__).resolve().parents[3] / "examples" / "services"
    result = lint_paths([str(root)])
    assert not result.problems
    found = {(Path(f.path).name, f.code) for f in result.findings}
    assert ("payments_grpc_aio.py", "DW101") in found
    assert ("payments_grpc_aio.py", "DW105") in found
    assert ("payments_grpc_sync.py", "DW101") in found
    assert ("payments_grpc_sync.py", "DW105") in found
    assert ("orders_fastapi.py", "DW105") in found
    assert ("inventory_threaded.py", "DW105") in found
    aio = (root / "payments_grpc_aio.py").read_text().splitlines()
    for finding in result.findings:
        if finding.path.endswith("payments_grpc_aio.py"):
            # every finding is in the `if shutdown == "broken":` branch
            assert (
                aio.index('    if shutdown == "broken":')
                < finding.line - 1
                < aio.index("    health_server.ready = False  # readiness off, liveness stays OK")
            )
