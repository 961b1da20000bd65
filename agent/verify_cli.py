"""``drainwatch verify-shutdown [options] -- CMD ARGS...``: a CI gate for graceful shutdown.

Exit codes: 0 every check passed, 1 a check failed, 2 usage error or the command could
not be started (or never became ready). Only argparse is imported here: the agent's
modules load when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .verify_options import VerifyOptions

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_DESCRIPTION = """\
Start CMD under drainwatch's auto-instrumentation with an embedded agent, wait until it is
ready, keep requests in flight, send SIGTERM, keep probing, and judge the shutdown: requests
in flight at the signal finish OK, new requests within the accept window succeed, the health
endpoint stays up until the business port closes, the process exits with code 0 within the
budget, and the agent finds no violation and no channel left with items. Exit code 0 = pass,
1 = a check failed, 2 = usage error or the command could not start. See
docs/verify-shutdown.md."""


def add_verify_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "verify-shutdown",
        help="start a service, shut it down under load and check the drain (a CI gate)",
        description=_DESCRIPTION,
        usage="drainwatch verify-shutdown (--grpc HOST:PORT --grpc-method M | --http URL) "
        "[options] -- CMD [ARGS...]",
    )
    load = parser.add_argument_group("load (at least one endpoint)")
    load.add_argument("--grpc", metavar="HOST:PORT", help="gRPC business endpoint to call")
    load.add_argument("--grpc-method", metavar="/PKG.SVC/METHOD", help="unary method to call")
    load.add_argument("--grpc-request-text", metavar="TEXT", help="request bytes, as UTF-8 text")
    load.add_argument(
        "--grpc-request-file", metavar="FILE", help="request bytes (a serialized message)"
    )
    load.add_argument("--http", metavar="URL", help="HTTP business endpoint to call")
    load.add_argument("--http-method", metavar="METHOD", help="HTTP method (default GET)")
    load.add_argument("--http-body", metavar="TEXT", help="request body, as UTF-8 text")
    load.add_argument("--http-body-file", metavar="FILE", help="request body from a file")
    load.add_argument("--http-header", metavar="'NAME: VALUE'", action="append", help="repeatable")
    load.add_argument(
        "--concurrency", metavar="N", help="requests kept in flight per endpoint (default 8)"
    )
    load.add_argument(
        "--rate", metavar="PER_SECOND", help="cap on requests per second per endpoint"
    )
    load.add_argument(
        "--request-timeout", metavar="SECONDS", help="client timeout per request (default 60)"
    )
    health = parser.add_argument_group("health")
    health.add_argument(
        "--health-url", metavar="URL", help="liveness URL; up while it answers 2xx/3xx"
    )
    health.add_argument(
        "--health-grpc",
        metavar="HOST:PORT[/SERVICE]",
        help="grpc.health.v1 server; up while it answers",
    )
    health.add_argument(
        "--readiness-url",
        metavar="URL",
        help="readiness URL, probed like the kubelet does so its 503 is seen",
    )
    timing = parser.add_argument_group("shutdown")
    timing.add_argument(
        "--signal-after", metavar="SECONDS", help="load this long, then signal (default 2)"
    )
    timing.add_argument("--signal", metavar="NAME", help="the signal (default SIGTERM)")
    timing.add_argument(
        "--accept-window",
        metavar="SECONDS",
        help="new requests this long after the signal must succeed (default 0.5; 0 = off)",
    )
    timing.add_argument(
        "--budget",
        metavar="SECONDS",
        help="drain and exit within this long, else SIGKILL (default 30: "
        "terminationGracePeriodSeconds minus preStop)",
    )
    timing.add_argument(
        "--ready-timeout", metavar="SECONDS", help="wait this long for readiness (default 30)"
    )
    out = parser.add_argument_group("report")
    out.add_argument("--service", metavar="NAME", help="service name (default verify-shutdown)")
    out.add_argument("--json-out", metavar="FILE", help="also write the result as JSON")
    parser.add_argument(
        "target", nargs=argparse.REMAINDER, metavar="CMD", help="the command to run, after --"
    )


def parse_options(args: argparse.Namespace) -> VerifyOptions:
    """The checked settings; raises ``VerifyUsageError``."""
    from .verify_options import (
        VerifyOptions,
        VerifyUsageError,
        parse_command,
        parse_count,
        parse_grpc,
        parse_health,
        parse_http,
        parse_json_out,
        parse_number,
        parse_readiness,
        parse_service,
        parse_signal,
    )

    grpc = parse_grpc(args.grpc, args.grpc_method, args.grpc_request_text, args.grpc_request_file)
    http = parse_http(
        args.http, args.http_method, args.http_body, args.http_body_file, args.http_header
    )
    if grpc is None and http is None:
        raise VerifyUsageError(
            'give the endpoint to load: "--grpc HOST:PORT --grpc-method /pkg.Svc/Method" '
            'and/or "--http URL"'
        )
    budget = parse_number(
        args.budget,
        "--budget",
        0.1,
        86_400,
        30.0,
        "terminationGracePeriodSeconds minus the preStop hook's duration",
    )
    accept_window = parse_number(args.accept_window, "--accept-window", 0, 3600, 0.5)
    if accept_window >= budget:
        raise VerifyUsageError(
            f'"--accept-window" ({accept_window:g} s) must be shorter than "--budget" '
            f"({budget:g} s)"
        )
    rate = None
    if args.rate is not None:
        rate = parse_number(args.rate, "--rate", 0.1, 100_000, 1.0, unit="requests per second")
    return VerifyOptions(
        command=parse_command(args.target),
        grpc=grpc,
        http=http,
        health=parse_health(args.health_url, args.health_grpc),
        readiness=parse_readiness(args.readiness_url),
        concurrency=parse_count(args.concurrency, "--concurrency", 1, 1000, 8),
        rate=rate,
        request_timeout=parse_number(args.request_timeout, "--request-timeout", 0.1, 3600, 60.0),
        signal_after=parse_number(args.signal_after, "--signal-after", 0, 3600, 2.0),
        signal_name=parse_signal(args.signal),
        accept_window=accept_window,
        budget=budget,
        ready_timeout=parse_number(args.ready_timeout, "--ready-timeout", 0.1, 3600, 30.0),
        service=parse_service(args.service),
        json_out=parse_json_out(args.json_out),
    )


def _write_json(path: str, content: object) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=1)
        handle.write("\n")
    os.replace(temporary, path)


def run_verify(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """The ``verify-shutdown`` command; returns its exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        from .verify_options import VerifyUsageError
    except ImportError as error:  # pragma: no cover - the agent extra is missing
        print(
            f"drainwatch verify-shutdown: needs pip install 'drainwatch[agent]' ({error})", file=err
        )
        return EXIT_USAGE
    try:
        options = parse_options(args)
    except VerifyUsageError as error:
        print(f"drainwatch verify-shutdown: {error}", file=err)
        return EXIT_USAGE
    from .verify_checks import judge, passed
    from .verify_render import document, render_text
    from .verify_run import StartError, verify

    def progress(text: str) -> None:
        print(f"verify-shutdown: {text}", file=err, flush=True)

    try:
        observed = asyncio.run(verify(options, progress))
    except StartError as failure:
        print(f"drainwatch verify-shutdown: {failure}", file=err)
        for line in failure.output:
            print(f"  | {line}", file=err)
        return EXIT_USAGE
    checks = judge(observed)
    print(render_text(observed, checks), file=out, flush=True)
    if options.json_out is not None:
        try:
            _write_json(options.json_out, document(observed, checks))
        except OSError as error:
            print(
                f"drainwatch verify-shutdown: cannot write --json-out {options.json_out}: "
                f"{error.strerror or error}",
                file=err,
            )
            return EXIT_USAGE
    return EXIT_PASSED if passed(checks) else EXIT_FAILED
