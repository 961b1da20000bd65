"""The ``drainwatch`` command: ``agent`` (the sidecar), ``demo``, ``run``, ``report``, ``tasks``,
``doctor``.

Exit codes: 0 done, 1 a check or the demo failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .lint.cli import add_lint_parser, run_lint
from .verify_cli import add_verify_parser, run_verify

if TYPE_CHECKING:
    from .app import Agent
    from .config import AgentConfig
    from .config_layers import Layer

# The agent's modules are imported inside the commands: the same `drainwatch` command is
# installed in application images that carry only the SDK.

EXIT_USAGE = 2


def _add_agent_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="YAML config file (env DRAINWATCH_AGENT_CONFIG)"
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="HTTP address for /metrics and the API (default 127.0.0.1:9469)",
    )
    parser.add_argument(
        "--ingest",
        metavar="URL",
        action="append",
        help="where SDKs report: unix:///path.sock or udp://127.0.0.1:PORT; "
        "repeatable (default unix:///tmp/drainwatch/ingest.sock)",
    )
    parser.add_argument(
        "--service", metavar="NAME", help="service label for processes that do not name one"
    )
    parser.add_argument(
        "--log-level", metavar="LEVEL", help="debug, info, warning or error (default info)"
    )
    parser.add_argument(
        "--retention-seconds",
        metavar="SECONDS",
        help="forget a process this long after it was last heard (default 300)",
    )
    parser.add_argument(
        "--drain-budget",
        metavar="SECONDS",
        help="grace budget of a shutdown: terminationGracePeriodSeconds minus preStop (default 30)",
    )
    _add_outside_flags(parser)


# (flag, dotted key, metavar or None for an on/off switch, help)
_OUTSIDE_FLAGS: tuple[tuple[str, str, str | None, str], ...] = (
    ("--target-pid", "target.pid", "PID", "the target's main process, as this agent sees it"),
    ("--target-cmdline", "target.cmdline", "REGEX", "target processes whose command line matches"),
    ("--target-from-sdk", "target.from_sdk", None, "also target the processes the SDK reports"),
    (
        "--target-exit-wait",
        "target.exit_wait_seconds",
        "SECONDS",
        "on SIGTERM, wait this long for the target to exit (default 30)",
    ),
    ("--health-ports", "ports.health", "PORTS", "comma-separated ports with the health role"),
    ("--metrics-ports", "ports.metrics", "PORTS", "comma-separated ports with the metrics role"),
    (
        "--sample-interval",
        "sampling.interval_seconds",
        "SECONDS",
        "listener/process sampling interval (default 0.05)",
    ),
    (
        "--sample-draining-interval",
        "sampling.draining_interval_seconds",
        "SECONDS",
        "the same while the target drains (default 0.02)",
    ),
    ("--pyspy", "pyspy.enabled", None, "sample the target's stacks with py-spy (default on)"),
    ("--pyspy-binary", "pyspy.binary", "PATH", "the py-spy executable (default: on PATH)"),
    ("--pyspy-interval", "pyspy.interval_seconds", "SECONDS", "between dumps (default 5)"),
    (
        "--pyspy-draining-interval",
        "pyspy.draining_interval_seconds",
        "SECONDS",
        "between dumps while the target drains (default 1)",
    ),
    ("--pyspy-timeout", "pyspy.timeout_seconds", "SECONDS", "a dump is killed after (default 3)"),
    ("--pyspy-max-per-minute", "pyspy.max_per_minute", "N", "dump rate cap (default 60)"),
    ("--pyspy-blocking", "pyspy.blocking", None, "pause the target for each dump (default off)"),
    ("--pyspy-locals", "pyspy.locals", None, "capture local variables (default off: secrets)"),
    (
        "--last-words-at",
        "pyspy.last_words_at",
        "SHARE",
        "keep a dump when the drain has used this share of its budget (default 0.5)",
    ),
    ("--probe-http", "probes.http", "NAME=URL", "an HTTP health probe; repeatable"),
    ("--probe-grpc", "probes.grpc", "NAME=HOST:PORT[/SVC]", "a grpc.health.v1 probe; repeatable"),
    ("--probe-interval", "probes.interval_seconds", "SECONDS", "between checks (default 2)"),
    (
        "--probe-fast-interval",
        "probes.fast_interval_seconds",
        "SECONDS",
        "between checks while the target drains (default 0.2)",
    ),
    ("--probe-timeout", "probes.timeout_seconds", "SECONDS", "per check (default 1)"),
    ("--state-dir", "state.dir", "DIR", "keep drain reports here, across agent restarts"),
    ("--state-history", "state.history", "N", "drain reports kept in the state dir (default 20)"),
    (
        "--final-metrics-seconds",
        "state.final_metrics_seconds",
        "SECONDS",
        "a stopping agent serves its final metrics until scraped, this long at most (default 30)",
    ),
    ("--pushgateway", "pushgateway.url", "URL", "push the final drain metrics to a Pushgateway"),
    ("--pushgateway-job", "pushgateway.job", "JOB", "the Pushgateway job (default drainwatch)"),
)
_REPEATABLE = frozenset({"probes.http", "probes.grpc"})


def _destination(key: str) -> str:
    return "outside_" + key.replace(".", "_")


def _add_outside_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "outside view", "what the agent sees without the SDK (see docs/configuration.md)"
    )
    for flag, key, metavar, text in _OUTSIDE_FLAGS:
        if metavar is None:
            group.add_argument(
                flag, dest=_destination(key), action=argparse.BooleanOptionalAction, help=text
            )
        else:
            group.add_argument(
                flag,
                dest=_destination(key),
                metavar=metavar,
                action="append" if key in _REPEATABLE else "store",
                help=text,
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drainwatch",
        description="Graceful-shutdown and channel-health observability for Python services.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    agent = commands.add_parser(
        "agent", help="run the sidecar agent", description="Run the drainwatch agent (the sidecar)."
    )
    _add_agent_flags(agent)
    demo = commands.add_parser(
        "demo",
        help="run the agent with a bundled example service and show its metrics",
        description="Start an agent, run an instrumented example service against it, "
        "print what the agent saw, and keep serving it until Ctrl-C.",
    )
    _add_agent_flags(demo)
    demo.add_argument(
        "--example",
        metavar="PATH",
        help="example script to run (default examples/orders_pipeline.py)",
    )
    _add_run_parser(commands)
    _add_tasks_parser(commands)
    demo.add_argument(
        "--once", action="store_true", help="exit after printing instead of serving until Ctrl-C"
    )
    _add_report_parser(commands)
    add_verify_parser(commands)
    add_lint_parser(commands)
    doctor = commands.add_parser(
        "doctor",
        help="check whether this agent can sample the target's stacks with py-spy",
        description="Run the py-spy preflight checks (binary, SYS_PTRACE, ptrace_scope, shared "
        "PID namespace, /proc/PID/root, the target's Python) and print what is missing and how "
        "to fix it. Exit code 0 = sampling works, 1 = it will not, 2 = usage error.",
    )
    doctor.add_argument("--target-pid", metavar="PID", help="the target's process id")
    doctor.add_argument(
        "--target-cmdline", metavar="REGEX", help="find the target by its command line"
    )
    doctor.add_argument("--pyspy-binary", metavar="PATH", help="the py-spy executable")
    return parser


def _doctor(args: argparse.Namespace) -> int:
    try:
        from drainwatch.collectors.preflight import render_doctor, run_preflight
        from drainwatch.collectors.targets import (
            TargetDiscovery,
            TargetSelector,
            parse_target_cmdline,
            parse_target_pid,
        )
    except ImportError as error:
        print(
            f"drainwatch doctor: needs pip install 'drainwatch[agent]' ({error})", file=sys.stderr
        )
        return EXIT_USAGE
    pid: int | None = None
    try:
        if args.target_pid is not None:
            pid = parse_target_pid(args.target_pid, "--target-pid")
        elif args.target_cmdline is not None:
            pattern = parse_target_cmdline(args.target_cmdline, "--target-cmdline")
            found = TargetDiscovery(TargetSelector(cmdline=pattern, from_sdk=False)).discover()
            if not found.processes:
                print(f"drainwatch doctor: {found.problem}", file=sys.stderr)
                return 1
            pid = found.processes[0].id.pid
    except ValueError as error:
        print(f"drainwatch doctor: {error}", file=sys.stderr)
        return EXIT_USAGE
    checks = run_preflight(pid, binary=args.pyspy_binary)
    sys.stdout.write(render_doctor(checks, pid))
    return 0 if all(check.ok for check in checks) else 1


def _add_run_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="run a command with zero-code instrumentation",
        description="Exec CMD (same PID) with drainwatch's auto-instrumentation: gRPC, "
        "grpc_health, aiohttp and uvicorn servers report in-flight requests, listeners "
        "and the shutdown to the agent.",
        usage="drainwatch run [--service NAME] [--endpoint URL] [--health-ports PORTS] "
        "-- CMD [ARGS...]",
    )
    run.add_argument("--service", metavar="NAME", help="service name (DRAINWATCH_SERVICE)")
    run.add_argument("--endpoint", metavar="URL", help="agent ingest URL (DRAINWATCH_ENDPOINT)")
    run.add_argument(
        "--health-ports",
        metavar="PORTS",
        help="comma-separated ports whose listeners are health endpoints",
    )
    run.add_argument(
        "target", nargs=argparse.REMAINDER, metavar="CMD", help="the command to run, after --"
    )


def _run(args: argparse.Namespace) -> int:
    from drainwatch._run_command import RunError, build_environment, exec_command

    command = list(args.target)
    if command[:1] == ["--"]:
        command = command[1:]
    try:
        env = build_environment(
            os.environ, service=args.service, endpoint=args.endpoint, health_ports=args.health_ports
        )
        exec_command(command, env)
    except RunError as error:
        print(f"drainwatch run: {error}", file=sys.stderr)
    return EXIT_USAGE


def _add_report_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser(
        "report",
        help="print the drain report (waterfall and verdict) of the last shutdown",
        description="Fetch the drain reports from a running agent and print each one: the "
        "shutdown waterfall on the budget's time axis, the violations with their runbooks "
        "and the verdict. Exit code 0 = no violation, 1 = violations, 2 = agent unreachable.",
    )
    report.add_argument(
        "--agent",
        metavar="URL",
        default="http://127.0.0.1:9469",
        help="the agent's HTTP address (its --listen; default http://127.0.0.1:9469)",
    )
    report.add_argument("--service", metavar="NAME", help="only this service")
    report.add_argument("--all", action="store_true", help="every kept report, not the latest")
    report.add_argument("--json", action="store_true", help="print the JSON document as served")


def _report(args: argparse.Namespace) -> int:
    from .report_cli import run_report

    return run_report(args.agent, args.service, args.json, everything=args.all)


def _add_tasks_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tasks = commands.add_parser(
        "tasks",
        help="print what every task and thread waits on, and for how long (Go-style dump)",
        description="Fetch /api/v1/tasks from a running agent and print, per service and "
        "process, each event loop's tasks grouped by what they wait on (channel, lock, "
        "socket, ...) with their stacks, the loop's lag and stalls, and the waiting threads. "
        "Exit code 0 = printed, 2 = agent unreachable.",
    )
    tasks.add_argument(
        "--agent",
        metavar="URL",
        default="http://127.0.0.1:9469",
        help="the agent's HTTP address (its --listen; default http://127.0.0.1:9469)",
    )
    tasks.add_argument("--service", metavar="NAME", help="only this service")
    tasks.add_argument("--json", action="store_true", help="print the JSON document as served")


def _tasks(args: argparse.Namespace) -> int:
    from .tasks_cli import run_tasks

    return run_tasks(args.agent, args.service, args.json)


def _flag_layer(args: argparse.Namespace) -> Layer:
    from .config import Source

    flags = {
        "listen": ("--listen", args.listen),
        "ingest": ("--ingest", args.ingest),
        "service": ("--service", args.service),
        "log_level": ("--log-level", args.log_level),
        "retention_seconds": ("--retention-seconds", args.retention_seconds),
        "drain_budget_seconds": ("--drain-budget", args.drain_budget),
    }
    for flag, key, _, _ in _OUTSIDE_FLAGS:
        flags[key] = (flag, getattr(args, _destination(key), None))
    return {
        key: (value, Source(f"flag {flag}"))
        for key, (flag, value) in flags.items()
        if value is not None
    }


def load_config(args: argparse.Namespace) -> AgentConfig:
    """Flags > environment > file > defaults; raises ConfigError."""
    from .config import build_config
    from .config_layers import ENV_CONFIG_FILE, environment_layer, file_layer

    layers: list[Layer] = []
    path = args.config or os.environ.get(ENV_CONFIG_FILE)
    if path:
        layers.append(file_layer(path))
    layers.append(environment_layer())
    layers.append(_flag_layer(args))
    return build_config(layers)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )


async def _serve(agent: Agent, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def signalled() -> None:
        # The first signal starts the wind-down (wait for the target, final scrape); a
        # second one cuts it short.
        if stop.is_set():
            agent.hurry.set()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signalled)
    await agent.run(stop)


def _agent_command(args: argparse.Namespace) -> int:
    """``agent`` and ``demo``: both load the agent's configuration and run an agent."""
    try:
        from drainwatch.collectors.sdk_ingest import IngestError

        from .app import Agent
        from .config import ConfigError
        from .state_dir import StateDirError
    except ImportError as error:
        print(
            f"drainwatch: the agent needs its extras: pip install 'drainwatch[agent]' ({error})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        config = load_config(args)
    except ConfigError as error:
        print(f"drainwatch {args.command}: configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(config.log_level)
    code = 0
    try:
        if args.command == "demo":
            from .demo import run_demo

            code = asyncio.run(run_demo(config, args.example, args.once))
        else:
            asyncio.run(_serve(Agent(config), asyncio.Event()))
    except (IngestError, StateDirError) as error:
        print(f"drainwatch {args.command}: {error}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = 130
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Subcommands that run once and return; "agent" and "demo" serve until stopped.
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _run,
        "report": _report,
        "tasks": _tasks,
        "doctor": _doctor,
        "verify-shutdown": run_verify,
        "lint": run_lint,
    }
    return commands.get(args.command, _agent_command)(args)


if __name__ == "__main__":
    raise SystemExit(main())
