"""DW101 (a stop nobody awaits) and DW102 (an exit in a signal handler): what each must find,
and the correct look-alikes it must leave alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.lint.helpers import codes, findings, lines

STOP_NOT_AWAITED = {
    "task dropped": """
        import asyncio
        async def shutdown(server):
            asyncio.create_task(server.stop(5))
        """,
    "ensure_future dropped": """
        import asyncio
        async def shutdown(server):
            asyncio.ensure_future(server.stop(grace=5))
        """,
    "loop.create_task dropped": """
        import asyncio
        def on_term(loop, server):
            loop.create_task(server.stop(5))
        """,
    "task kept but never read": """
        import asyncio
        async def shutdown(server):
            task = asyncio.create_task(server.stop(5))
            print("stopping")
        """,
    "aliased import": """
        from asyncio import create_task as spawn
        async def shutdown(server):
            spawn(server.stop(5))
        """,
    "sync grpc stop with its Event dropped": """
        import grpc
        def main():
            server = grpc.server(None)
            server.start()
            server.stop(10)
        """,
    "sync stop Event kept but never waited": """
        def main(grpc_server):
            done = grpc_server.stop(10)
        """,
    "go GracefulStop: a thread nobody joins": """
        import threading
        def on_term(server):
            threading.Thread(target=server.stop, args=(5,)).start()
        """,
    "aiohttp runner cleanup coroutine dropped": """
        from aiohttp import web
        async def main(app):
            runner = web.AppRunner(app)
            await runner.setup()
            runner.cleanup()
        """,
    "grpc.aio stop coroutine dropped": """
        import grpc
        async def main():
            server = grpc.aio.server()
            await server.start()
            server.stop(5)
        """,
}

STOP_LOOK_ALIKES = {
    "awaited": """
        async def shutdown(server):
            await server.stop(5)
        """,
    "Event waited": """
        def shutdown(server):
            server.stop(5).wait()
        """,
    "Event kept and waited": """
        def shutdown(server):
            done = server.stop(5)
            done.wait(30)
        """,
    "wait_for_termination follows": """
        def shutdown(server):
            server.stop(5)
            server.wait_for_termination()
        """,
    "task kept and awaited": """
        import asyncio
        async def shutdown(server):
            task = asyncio.create_task(server.stop(5))
            await task
        """,
    "task awaited in a closure": """
        import asyncio
        async def shutdown(server):
            task = asyncio.create_task(server.stop(5))
            async def later():
                await task
            await later()
        """,
    "task group awaits its tasks": """
        import asyncio
        async def shutdown(server):
            async with asyncio.TaskGroup() as group:
                group.create_task(server.stop(5))
        """,
    "gathered": """
        import asyncio
        async def shutdown(a, b):
            await asyncio.gather(asyncio.create_task(a.stop(5)), b.stop(5))
        """,
    "returned to the caller": """
        def stopper(server):
            return server.stop(5)
        """,
    "loop.stop takes no grace": """
        def on_term(loop):
            loop.stop()
        """,
    "a timer is not a server": """
        def done(timer):
            timer.stop(5)
        """,
    "a task that is not a stop": """
        import asyncio
        async def main(worker):
            asyncio.create_task(worker.run())
        """,
    "a joined thread": """
        import threading
        def on_term(server):
            thread = threading.Thread(target=server.stop, args=(5,))
            thread.start()
            thread.join()
        """,
}


@pytest.mark.parametrize("name", list(STOP_NOT_AWAITED))
def test_a_stop_nobody_waits_for_is_found(tmp_path: Path, name: str) -> None:
    """Each way of launching a server stop and not waiting for it is DW101."""
    assert codes(tmp_path, STOP_NOT_AWAITED[name]).count("DW101") == 1


@pytest.mark.parametrize("name", list(STOP_LOOK_ALIKES))
def test_a_stop_that_is_waited_for_is_left_alone(tmp_path: Path, name: str) -> None:
    """Correct code that looks like it (``await server.stop(g)``, ``.wait()``...) is not."""
    assert "DW101" not in codes(tmp_path, STOP_LOOK_ALIKES[name])


def test_the_finding_points_at_the_launch_and_says_what_to_do(tmp_path: Path) -> None:
    """Line and column of the create_task call, and a message with the fix."""
    found = findings(tmp_path, STOP_NOT_AWAITED["task dropped"])
    assert [(f.line, f.column) for f in found] == [(4, 5)]
    assert "`await server.stop(5)` instead" in found[0].message


EXIT_IN_HANDLER = {
    "lambda": """
        import signal, sys
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        """,
    "function": """
        import os, signal
        def on_term(signum, frame):
            print("bye")
            os._exit(0)
        signal.signal(signal.SIGTERM, on_term)
        """,
    "raise SystemExit": """
        import signal
        def on_term(signum, frame):
            raise SystemExit(0)
        signal.signal(signal.SIGINT, on_term)
        """,
    "loop handler method": """
        import asyncio, sys
        class App:
            def on_term(self):
                sys.exit(1)
            async def main(self):
                asyncio.get_running_loop().add_signal_handler(15, self.on_term)
        """,
    "partial": """
        import functools, signal, sys
        def on_term(code, signum, frame):
            sys.exit(code)
        signal.signal(signal.SIGTERM, functools.partial(on_term, 3))
        """,
    "aliased sys": """
        import signal
        import sys as system
        def on_term(signum, frame):
            system.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        """,
}

EXIT_LOOK_ALIKES = {
    "an Event set in the handler": """
        import signal, threading
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        """,
    "drained before the exit": """
        import signal, sys
        def on_term(signum, frame):
            server.stop(10).wait()
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        """,
    "exit outside any handler": """
        import sys
        def main():
            sys.exit(run())
        """,
    "a function that is not registered": """
        import sys
        def on_term(signum, frame):
            sys.exit(0)
        """,
    "exit in a nested function the handler only defines": """
        import signal, sys, threading
        def on_term(signum, frame):
            def later():
                sys.exit(0)
            threading.Timer(30, later)
        signal.signal(signal.SIGTERM, on_term)
        """,
}


@pytest.mark.parametrize("name", list(EXIT_IN_HANDLER))
def test_an_exit_in_a_signal_handler_is_found(tmp_path: Path, name: str) -> None:
    """sys.exit / os._exit / SystemExit in a registered handler, before any drain: DW102."""
    assert codes(tmp_path, EXIT_IN_HANDLER[name]).count("DW102") == 1


@pytest.mark.parametrize("name", list(EXIT_LOOK_ALIKES))
def test_handlers_that_drain_or_only_signal_are_left_alone(tmp_path: Path, name: str) -> None:
    """Setting an Event, draining first, or exiting outside a handler is not DW102."""
    assert "DW102" not in codes(tmp_path, EXIT_LOOK_ALIKES[name])


def test_the_exit_finding_names_the_handler_and_signal(tmp_path: Path) -> None:
    """The message names the handler and the signal it handles."""
    [found] = findings(tmp_path, EXIT_IN_HANDLER["function"])
    assert found.line == 5
    assert "`os._exit` in `on_term`, the handler of signal.SIGTERM" in found.message
    assert lines(tmp_path, EXIT_IN_HANDLER["lambda"], "DW102") == [3]
