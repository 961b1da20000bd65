"""The ``drainwatch`` command: ``agent`` (the sidecar) and ``demo``.

Exit codes: 0 done, 1 a check or the demo failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

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
    demo.add_argument(
        "--once", action="store_true", help="exit after printing instead of serving until Ctrl-C"
    )
    return parser


def _flag_layer(args: argparse.Namespace) -> Layer:
    from .config import Source

    flags = {
        "listen": ("--listen", args.listen),
        "ingest": ("--ingest", args.ingest),
        "service": ("--service", args.service),
        "log_level": ("--log-level", args.log_level),
        "retention_seconds": ("--retention-seconds", args.retention_seconds),
    }
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
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await agent.run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from drainwatch.collectors.sdk_ingest import IngestError

        from .app import Agent
        from .config import ConfigError
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
    try:
        if args.command == "demo":
            from .demo import run_demo

            return asyncio.run(run_demo(config, args.example, args.once))
        stop = asyncio.Event()
        asyncio.run(_serve(Agent(config), stop))
    except IngestError as error:
        print(f"drainwatch {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
