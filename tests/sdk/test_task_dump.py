"""Go-style dumps (``drainwatch.dump_tasks()``, the dump signal) and the tracking settings,
including what ``drainwatch run`` turns on."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import textwrap

import drainwatch
import pytest
from drainwatch._settings import settings_from_env
from drainwatch._task_dump import duration, render

from .conftest import Receiver, run, run_python, run_under_drainwatch, subprocess_env


async def consume(channel: drainwatch.Channel[int]) -> None:
    async for _ in channel:
        pass


def test_dump_groups_tasks_waiting_at_one_place_and_names_single_ones() -> None:
    """Three consumers on one channel are one group; a lone waiter gets a goroutine header."""

    async def main() -> str:
        idle: drainwatch.Channel[int] = drainwatch.Channel("idle")
        consumers = [asyncio.create_task(consume(idle), name=f"consumer-{i}") for i in range(3)]
        done = asyncio.Event()
        lone = asyncio.create_task(done.wait(), name="lone")
        await asyncio.sleep(0.05)
        out = io.StringIO()
        text = drainwatch.dump_tasks(out)
        assert out.getvalue() == text
        idle.close()
        done.set()
        await asyncio.gather(*consumers, lone)
        return text

    text = run(main())
    assert re.search(
        r'^  3 tasks \[channel_receive "idle", [0-9.]+s\]: '
        r'"consumer-\d", "consumer-\d", "consumer-\d"$',
        text,
        re.M,
    ), text
    assert re.search(r'^  task "lone" \[event, [0-9.]+s\]:$', text, re.M), text
    assert re.search(r"^    consume \(.*test_task_dump\.py:\d+\)$", text, re.M), text
    assert text.startswith('loop 0 on thread "MainThread": 5 tasks, 4 blocked')


def test_dump_outside_any_loop_lists_threads_and_never_raises() -> None:
    """With no loop, the dump still lists the threads; it never raises."""
    text = drainwatch.dump_tasks()
    assert text.startswith("threads: ")


def test_render_reads_what_the_agent_serves_even_when_fields_are_missing() -> None:
    """The renderer used by `drainwatch tasks` copes with sparse or odd records."""
    text = render(
        [
            {"type": "loop", "id": 2, "sites": [{"reason": "lock", "tasks": [{}], "count": 1}]},
            {"type": "threads", "top": [{"thread": 'we"ird', "reason": "sleep"}]},
            {"type": "something else"},
        ]
    )
    assert 'task "None" [lock, 0.00s]:' in text
    assert '  thread "we\\"ird" [sleep, 0.00s]:' in text
    assert "(no Python frames)" in text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.3, "0.30s"), (4.25, "4.2s"), (42.9, "42s"), (302, "5m02s"), (7380, "2h03m")],
)
def test_durations_are_short_like_gos(seconds: float, text: str) -> None:
    """Durations read as in a goroutine header, shortest unit that says enough."""
    assert duration(seconds) == text


def test_the_dump_signal_prints_the_tasks_and_keeps_the_process_and_its_handler() -> None:
    """SIGUSR1 configured as the dump signal writes the dump to stderr; the process lives
    on and the handler it had before still runs."""
    code = textwrap.dedent("""
        import asyncio, os, signal, drainwatch
        calls = []
        signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
        async def main():
            drainwatch.configure(dump_signal="SIGUSR1")
            waiter = asyncio.create_task(asyncio.Event().wait(), name="stuck-waiter")
            await asyncio.sleep(0.05)
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.sleep(0.05)
            waiter.cancel()
        asyncio.run(main())
        print("alive", len(calls))
    """)
    result = run_python(code, env=subprocess_env(DRAINWATCH_ENDPOINT="udp://127.0.0.1:9"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "alive 1"
    assert re.search(r'^  task "stuck-waiter" \[event, [0-9.]+s\]:$', result.stderr, re.M)


def test_run_watches_every_loop_and_reads_the_dump_signal_from_the_environment(
    receiver: Receiver,
) -> None:
    """Under drainwatch run, a loop is watched with no code: its tasks reach the agent."""
    code = textwrap.dedent("""
        import asyncio, os, signal, drainwatch
        async def main():
            waiter = asyncio.create_task(asyncio.Event().wait(), name="zero-code")
            await asyncio.sleep(0.05)
            drainwatch.flush(2)  # first seen waiting here
            await asyncio.sleep(0.3)
            drainwatch.flush(2)
            os.kill(os.getpid(), signal.SIGUSR2)
            waiter.cancel()
        asyncio.run(main())
    """)
    env = subprocess_env(DRAINWATCH_ENDPOINT=receiver.endpoint, DRAINWATCH_DUMP_SIGNAL="usr2")
    result = run_under_drainwatch(code, env)
    assert result.returncode == 0, result.stderr
    found = receiver.wait_for(
        lambda record: (
            record.get("type") == "loop"
            and any(task["task"] == "zero-code" and task["wait"] >= 0.3 for task in record["top"])
        ),
        timeout=5,
    )
    assert found is not None
    [task] = [task for task in found[1]["top"] if task["task"] == "zero-code"]
    assert task["reason"] == "event"
    assert 'task "zero-code" [event' in result.stderr


def test_tracking_off_sends_no_task_or_thread_record(receiver: Receiver) -> None:
    """DRAINWATCH_TRACKING=off: no loop is watched and snapshots carry no tracking records."""
    code = textwrap.dedent("""
        import asyncio, drainwatch
        async def main():
            drainwatch.configure()
            await asyncio.sleep(0.1)
            drainwatch.flush(2)
        asyncio.run(main())
    """)
    env = subprocess_env(DRAINWATCH_ENDPOINT=receiver.endpoint, DRAINWATCH_TRACKING="off")
    result = run_python(code, env=env)
    assert result.returncode == 0, result.stderr
    kinds = {record["type"] for datagram in receiver.collect(0.5) for record in datagram.records}
    assert "process" in kinds
    assert not kinds & {"loop", "threads"}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DRAINWATCH_TRACKING", "maybe", '"DRAINWATCH_TRACKING" must be on or off'),
        ("DRAINWATCH_LAG_THRESHOLD", "soon", '"DRAINWATCH_LAG_THRESHOLD" must be a number'),
        ("DRAINWATCH_LAG_THRESHOLD", "nan", "must be a number of seconds between 0.02 and 60"),
        ("DRAINWATCH_LAG_THRESHOLD", "0.001", "between 0.02 and 60.0: 0.001"),
        ("DRAINWATCH_LAG_THRESHOLD", "1e308", "between 0.02 and 60.0"),
        (
            "DRAINWATCH_DUMP_SIGNAL",
            "SIGKILL",
            '"DRAINWATCH_DUMP_SIGNAL" must be SIGUSR1 or SIGUSR2',
        ),
        ("DRAINWATCH_DUMP_SIGNAL", "15", "must be SIGUSR1 or SIGUSR2 \\(or off\\): '15'"),
        ("DRAINWATCH_DUMP_SIGNAL", "x" * 10_000, "must be SIGUSR1 or SIGUSR2"),
    ],
)
def test_bad_tracking_variables_are_refused_naming_the_variable(
    variable: str, value: str, message: str
) -> None:
    """Each tracking variable is checked; the error names it, the rule and the value."""
    with pytest.raises(ValueError, match=message):
        settings_from_env({variable: value})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"tracking": "sometimes"}, '"tracking" must be on or off'),
        ({"lag_threshold": -1}, '"lag_threshold" must be a number of seconds between'),
        ({"lag_threshold": True}, '"lag_threshold" must be a number of seconds between'),
        ({"dump_signal": int(signal.SIGTERM)}, '"dump_signal" must be SIGUSR1 or SIGUSR2'),
        ({"dump_signal": "SIGINT"}, '"dump_signal" must be SIGUSR1 or SIGUSR2'),
    ],
)
def test_bad_tracking_arguments_are_refused_naming_the_argument(
    arguments: dict[str, object], message: str
) -> None:
    """configure() refuses a bad tracking argument before changing anything."""
    with pytest.raises(ValueError, match=message):
        drainwatch.configure(**arguments)  # type: ignore[arg-type]


def test_good_tracking_variables_are_read() -> None:
    """Variables in their accepted spellings become settings."""
    settings = settings_from_env(
        {
            "DRAINWATCH_TRACKING": " OFF ",
            "DRAINWATCH_LAG_THRESHOLD": "0.25",
            "DRAINWATCH_DUMP_SIGNAL": "SIGUSR1",
        }
    )
    assert (settings.tracking, settings.lag_threshold) == (False, 0.25)
    assert settings.dump_signal == signal.SIGUSR1
    defaults = settings_from_env({})
    assert (defaults.tracking, defaults.lag_threshold, defaults.dump_signal) == (True, 0.1, None)


def test_dump_signal_is_only_installed_from_the_main_thread() -> None:
    """Off the main thread the dump signal is left alone (only it may set handlers)."""
    from drainwatch._task_dump import install_dump_signal

    before = signal.getsignal(signal.SIGUSR2)

    async def main() -> bool:
        return await asyncio.to_thread(install_dump_signal, signal.SIGUSR2)

    assert run(main()) is False
    assert signal.getsignal(signal.SIGUSR2) == before
