"""The metric contract: docs/metrics.md, the code and a real agent's /metrics agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from drainwatch.agent.loadgen import free_port
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import running_agent, started_target

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_ROW = re.compile(r"^\| `(drainwatch_[a-z_]+)` \| (counter|gauge|histogram) \|", re.M)

# Every kind of fact, so that every family has at least one sample: a channel that is
# closed and drained, a request, listeners, a shutdown with a signal and steps, a watched
# event loop with a task parked on a channel; and for the outside view real listening
# sockets (one probed as health), an open connection, a thread blocked in queue.get for
# py-spy (and the SDK) to find. It prints its ports, then waits for "go".
TARGET = """
import asyncio, http.server, os, queue, signal, socket, sys, threading, drainwatch
from drainwatch._inflight import REGISTRY
from drainwatch._shutdown import STATE

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *args):
        pass

health = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["HEALTH_PORT"])), Health)
threading.Thread(target=health.serve_forever, daemon=True).start()
business = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(business.getsockname())
accepted, _ = business.accept()
jobs = queue.Queue()
threading.Thread(target=jobs.get, name="stuck-worker", daemon=True).start()
boot = drainwatch.ThreadChannel("boot", maxsize=1)  # the agent learns this PID from the SDK

async def watched():
    drainwatch.configure()  # inside a loop: its tasks and lag are tracked
    parked = drainwatch.Channel("parked")
    asyncio.create_task(parked.get(), name="parked-task")
    await asyncio.Event().wait()
threading.Thread(target=asyncio.run, args=(watched(),), daemon=True).start()
drainwatch.flush(timeout=2)
print(health.server_address[1], business.getsockname()[1], flush=True)
sys.stdin.readline()

async def main():
    ch = drainwatch.Channel("orders", maxsize=2)
    await ch.put(1)
    ch.close()
    await ch.get()
    STATE.listener_opened("grpc", "business", business.getsockname()[1])
    STATE.listener_opened("health", "health", health.server_address[1])
    STATE.set_ready(True)
    charge = REGISTRY.stats("grpc", "/pay.Payments/Charge")
    REGISTRY.finish(charge, REGISTRY.start(charge), "ok")
    STATE.note_signal(signal.SIGTERM)
    STATE.set_ready(False)
    STATE.listener_stop_started("grpc")
    business.close()
    STATE.listener_closed("grpc")
    health.shutdown()
    health.server_close()
    STATE.listener_closed("health")
    drainwatch.flush(timeout=2)
asyncio.run(main())
"""


def documented() -> dict[str, str]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    return dict(CONTRACT_ROW.findall(text))


def test_docs_list_each_metric_once_with_a_type() -> None:
    """docs/metrics.md has one row per metric name."""
    rows = CONTRACT_ROW.findall((ROOT / "docs" / "metrics.md").read_text())
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), "a metric is documented twice"
    assert len(names) >= 20


def _exported(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"# TYPE (drainwatch_[a-z_]+) (\w+)", line)
        if match:
            name, kind = match.groups()
            found[name] = kind
    return found


def _sampled(text: str) -> set[str]:
    return {
        family.name
        for family in text_string_to_metric_families(text)
        if family.samples and family.name.startswith("drainwatch_")
    }


def _scrapes_of_a_whole_shutdown(state_dir: str) -> list[str]:
    """Two real agents watch one real target through its shutdown: one that can sample its
    stacks and probes its health port, and one whose py-spy is missing (the only way to
    see drainwatch_sampler_unavailable). Returns the first one's scrapes while the target
    runs and after it exited, and the second one's."""
    health_port = free_port()
    with running_agent(
        "--probe-http",
        f"liveness=http://127.0.0.1:{health_port}/healthz",
        "--probe-interval",
        "0.2",
        "--pyspy-interval",
        "0.3",
        "--state-dir",
        state_dir,
    ) as agent:
        env = {"HEALTH_PORT": str(health_port)}
        with started_target(TARGET, agent.endpoint, extra_env=env) as target:
            assert target.stdout is not None and target.stdin is not None
            target.stdout.readline()
            with running_agent(
                "--target-pid",
                str(target.pid),
                "--no-target-from-sdk",
                "--pyspy-binary",
                "/nonexistent/py-spy",
            ) as blind:
                found = blind.wait_for("drainwatch_sampler_unavailable", reason="binary_missing")
                assert found.value("drainwatch_sampler_unavailable", reason="binary_missing") == 1
                unavailable = found.text
            agent.wait_for("drainwatch_probe_success", probe="liveness")
            # blocked threads and tasks are gauges of now: present while the target runs
            agent.wait_for("drainwatch_task_blocked_seconds", task="parked-task")
            agent.wait_for("drainwatch_thread_blocked_seconds", source="sdk")
            running = agent.wait_for(
                "drainwatch_thread_blocked_seconds", thread="stuck-worker", source="pyspy"
            )
            assert (
                running.value("drainwatch_thread_blocked_seconds", thread="stuck-worker")
                is not None
            )
            target.stdin.write("go\n")
            target.stdin.flush()
            assert target.wait(20) == 0
        samples = agent.wait_for("drainwatch_target_exit_timestamp_seconds")
        agent.wait_for("drainwatch_state_dir_reports_saved_total")
        return [samples.text, running.text, unavailable]


@pytest.mark.e2e
def test_real_agent_exports_exactly_the_documented_metrics(tmp_path: Path) -> None:
    """What real agents serve through a real shutdown is what the docs list, same types."""
    texts = _scrapes_of_a_whole_shutdown(str(tmp_path / "state"))
    exported: dict[str, str] = {}
    for text in texts:
        exported.update(_exported(text))
    docs = documented()
    assert sorted(set(exported) - set(docs)) == [], "exported but not documented"
    assert sorted(set(docs) - set(exported)) == [], "documented but not exported"
    assert exported == docs
    sampled = set().union(*(_sampled(text) for text in texts))
    # the exposition names counters without _total; the docs name the series
    empty = sorted(name for name in docs if name.removesuffix("_total") not in sampled)
    assert empty == [], "documented and exported, but without a single sample"


def _queried_metrics(text: str) -> set[str]:
    # Not inside a recorded name (level:drainwatch_metric:operation): those are checked
    # against the rules that record them (tests/deploy/test_queries.py).
    return set(
        re.findall(r"(?<![:\w])(drainwatch_[a-z_]+?)(?:_bucket|_sum|_count)?(?![:\w])", text)
    )


def test_dashboards_and_alerts_query_only_documented_metrics() -> None:
    """Every drainwatch_* name used by a shipped dashboard or rule file is documented."""
    docs = set(documented())
    shipped = [
        path
        for folder in ("dashboards", "alerts", "deploy")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in {".json", ".yaml", ".yml"}
    ]
    undocumented = {
        (path.name, name)
        for path in shipped
        for name in _queried_metrics(path.read_text())
        if name not in docs
    }
    assert undocumented == set()
