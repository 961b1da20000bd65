"""Signals observed without being taken over, and the zero-code ``drainwatch run`` hook."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest
from drainwatch._run_command import BOOTSTRAP_DIR, RunError, build_environment

from .conftest import Receiver, run_python, run_under_drainwatch, subprocess_env


def _signals_seen(receiver: Receiver, count: int = 1, timeout: float = 5.0) -> list[str]:
    """The signals of the first shutdown record that names at least ``count`` of them."""
    found = receiver.wait_for(
        lambda record: record.get("type") == "shutdown" and len(record["signals"]) >= count,
        timeout,
    )
    assert found is not None, f"no shutdown record with {count} signal(s) arrived"
    return [entry["signal"] for entry in found[1]["signals"]]


def test_default_sigterm_still_kills_and_the_signal_is_reported_first(
    receiver: Receiver,
) -> None:
    """With no handler installed the process still dies of SIGTERM, after reporting it."""
    code = textwrap.dedent("""
        import os, signal, drainwatch
        drainwatch.observe_signals()
        os.kill(os.getpid(), signal.SIGTERM)
        print("survived")
    """)
    result = run_python(code, env=subprocess_env(DRAINWATCH_ENDPOINT=receiver.endpoint))
    assert result.returncode == -signal.SIGTERM
    assert "survived" not in result.stdout
    assert _signals_seen(receiver) == ["SIGTERM"]


def test_an_existing_handler_still_runs_for_every_signal(receiver: Receiver) -> None:
    """The application's own handler runs for the first and the second SIGTERM."""
    code = textwrap.dedent("""
        import os, signal, drainwatch
        calls = []
        signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
        drainwatch.observe_signals()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        print(len(calls))
        drainwatch.flush(2)
    """)
    result = run_python(code, env=subprocess_env(DRAINWATCH_ENDPOINT=receiver.endpoint))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
    assert _signals_seen(receiver)[:1] == ["SIGTERM"]


def test_a_signal_that_lands_while_the_main_thread_holds_a_lock_the_send_needs(
    receiver: Receiver,
) -> None:
    """A SIGTERM whose handler runs while the interrupted code holds the in-flight
    registry's lock (as it does inside every request's start and finish) neither deadlocks
    the process nor loses the signal: the record goes out once the lock is released."""
    code = textwrap.dedent("""
        import os, signal, drainwatch
        from drainwatch import _inflight
        calls = []
        signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
        drainwatch.observe_signals()
        drainwatch.flush(2)
        # Held the way registry.start() holds it; the handler runs right after os.kill.
        with _inflight.REGISTRY._lock:
            os.kill(os.getpid(), signal.SIGTERM)
            print("handled" if calls else "not yet", flush=True)
        drainwatch.flush(2)
    """)
    result = run_python(code, env=subprocess_env(DRAINWATCH_ENDPOINT=receiver.endpoint), timeout=15)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "handled"
    assert _signals_seen(receiver) == ["SIGTERM"]


def test_an_ignored_signal_stays_ignored() -> None:
    """SIG_IGN is respected: drainwatch does not make an ignored signal fatal."""
    code = textwrap.dedent("""
        import os, signal, drainwatch
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        drainwatch.observe_signals()
        os.kill(os.getpid(), signal.SIGTERM)
        print(signal.getsignal(signal.SIGTERM) == signal.SIG_IGN)
    """)
    result = run_python(code, env=subprocess_env(DRAINWATCH_DISABLED="1"))
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr


def test_run_installs_handlers_installed_later_and_keeps_the_pid(receiver: Receiver) -> None:
    """Under drainwatch run, a handler the app installs later is observed; same PID."""
    code = textwrap.dedent("""
        import asyncio, os, signal, sys
        seen = []
        async def main():
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), 5)
        signal.signal(signal.SIGINT, lambda s, f: seen.append(s))
        os.kill(os.getpid(), signal.SIGINT)
        asyncio.run(main())
        print(os.getpid(), os.environ["DRAINWATCH_AUTO"], seen == [signal.SIGINT],
              signal.getsignal(signal.SIGINT).__name__)
        import drainwatch
        drainwatch.flush(2)
    """)
    result = run_under_drainwatch(code, subprocess_env(DRAINWATCH_ENDPOINT=receiver.endpoint))
    assert result.returncode == 0, result.stderr
    pid, auto, handled, name = result.stdout.split()
    assert auto == "1" and handled == "True" and name == "<lambda>"
    assert _signals_seen(receiver, count=2) == ["SIGINT", "SIGTERM"]
    assert int(pid) > 0


def test_run_chains_to_an_existing_sitecustomize(tmp_path: Path) -> None:
    """A sitecustomize the environment already had still runs under drainwatch run."""
    (tmp_path / "sitecustomize.py").write_text("import builtins\nbuiltins.CHAINED = True\n")
    env = subprocess_env(DRAINWATCH_DISABLED="1")
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(tmp_path)])
    result = run_under_drainwatch("import builtins; print(builtins.CHAINED)", env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_modules_are_patched_when_imported_and_when_already_imported() -> None:
    """The post-import hook patches a module at its first import, or at once if loaded."""
    code = textwrap.dedent("""
        import sys, json
        from drainwatch import _autoinstrument
        patched = []
        _autoinstrument.install({
            "colorsys": lambda module: patched.append(module.__name__),
            "json": lambda module: patched.append(module.__name__),
        })
        assert "colorsys" not in sys.modules
        import colorsys
        print(sorted(patched), colorsys.rgb_to_hsv(1, 0, 0))
    """)
    result = run_python(code, env=subprocess_env(DRAINWATCH_DISABLED="1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['colorsys', 'json'] (0.0, 1.0, 1)"


def test_a_patch_that_fails_leaves_the_module_working() -> None:
    """A broken patch is logged; the application's import still succeeds."""
    code = textwrap.dedent("""
        from drainwatch import _autoinstrument
        def broken(module):
            raise RuntimeError("boom")
        _autoinstrument.install({"colorsys": broken})
        import colorsys
        print(colorsys.rgb_to_hsv(0, 1, 0)[0] > 0)
    """)
    result = run_python(code, env=subprocess_env(DRAINWATCH_DISABLED="1"))
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr
    assert "could not instrument colorsys" in result.stderr


def test_run_environment_puts_the_hook_first_and_validates_settings() -> None:
    """The bootstrap folder comes first on PYTHONPATH; bad settings name the flag."""
    env = build_environment(
        {"PYTHONPATH": "/x"}, service="pay", endpoint="udp://127.0.0.1:9", health_ports="8080, 8081"
    )
    assert env["PYTHONPATH"].split(os.pathsep) == [BOOTSTRAP_DIR, "/x"]
    assert env["DRAINWATCH_SERVICE"] == "pay" and env["DRAINWATCH_HEALTH_PORTS"] == "8080,8081"
    with pytest.raises(RunError, match='"--endpoint" must be a loopback address'):
        build_environment({}, endpoint="udp://10.0.0.1:9")
    with pytest.raises(RunError, match='"--health-ports" must be comma-separated ports'):
        build_environment({}, health_ports="80,http")
    with pytest.raises(RunError, match='"--service" must be a non-empty name'):
        build_environment({}, service=" ")


def test_asyncio_run_cancelling_leftover_tasks_is_the_cancel_step() -> None:
    """Under drainwatch run, asyncio.run() cutting the tasks main left behind is recorded."""
    code = textwrap.dedent("""
        import asyncio, json
        from drainwatch._shutdown import STATE
        async def main():
            for _ in range(3):
                asyncio.create_task(asyncio.sleep(60))
        asyncio.run(main())
        step = STATE.record()["steps"]["cancel"]
        print(json.dumps([step["detail"], step["finished"] >= step["started"]]))
    """)
    result = run_under_drainwatch(code, subprocess_env(DRAINWATCH_DISABLED="1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '["asyncio.run() cancelled 3 task(s)", true]'
