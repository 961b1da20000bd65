"""Sampling tasks from another thread while the loop makes garbage with finalizers.

A collection that starts while a sample makes a coroutine's frame object runs finalizers,
which can hand the GIL to the loop; if the coroutine ends then, the frame object points at
freed memory and reading it crashes the interpreter (see ``drainwatch._gc_pause``). Without
the pause, most runs of this test failed (2 in 3 with three child runs). The script runs
in a child process: the failure is a segfault, or a frame whose ``f_code`` is some other
object.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

RUNS = 5
SAMPLES = 1000

SCRIPT = textwrap.dedent(
    """
    import asyncio, faulthandler, gc, sys, threading, time

    from drainwatch._task_tracker import TaskTracker

    faulthandler.enable()


    class Finalized:
        def __del__(self):
            sum(range(50))  # Python code: a chance for the GIL to change hands


    async def short_lived(number):
        task = asyncio.current_task()  # a cycle through the task: the collector ends it
        garbage = [Finalized()]
        garbage.append(garbage)  # a cycle: only the collector frees it
        await asyncio.sleep(0)
        return number


    def sampler(tracker, stop, started):
        started.wait(5)
        try:
            for _ in range(SAMPLES):
                record = tracker.sample({}, time.time(), time.monotonic())
                assert record["tasks"] >= 1, record
        finally:
            stop.set()


    async def main():
        stop, started = threading.Event(), threading.Event()
        tracker = TaskTracker(asyncio.get_running_loop())
        thread = threading.Thread(target=sampler, args=(tracker, stop, started))
        thread.start()
        while not stop.is_set():
            started.set()
            await asyncio.gather(*(short_lived(i) for i in range(200)))
        await asyncio.to_thread(thread.join, 30)


    SAMPLES = int(sys.argv[1])
    gc.set_threshold(50, 2, 2)  # collections often, in the middle of everything
    sys.setswitchinterval(1e-5)  # and the two threads taking turns
    asyncio.run(main())
    print("sampled")
    """
)


def test_a_collection_during_a_sample_never_leaves_a_dangling_frame() -> None:
    for run in range(RUNS):
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(SAMPLES)],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert done.returncode == 0, f"run {run}: exit {done.returncode}\n{done.stderr[-3000:]}"
        assert done.stdout.strip() == "sampled", done.stdout
