"""``drainwatch verify-shutdown`` refuses broken, hostile and oversized settings with exit
code 2 and a message naming the flag, the rule, the value and the fix, before it starts
anything."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from drainwatch.agent.cli import build_parser, main
from drainwatch.agent.verify_cli import parse_options
from drainwatch.agent.verify_options import MAX_REQUEST_BYTES, VerifyOptions, VerifyUsageError

GRPC = ["--grpc", "127.0.0.1:50051", "--grpc-method", "/payments.Payments/Pay"]
HTTP = ["--http", "http://127.0.0.1:8000/orders/7"]
COMMAND = ["--", sys.executable, "-c", "pass"]


def options(*args: str) -> VerifyOptions:
    return parse_options(build_parser().parse_args(["verify-shutdown", *args]))


def refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["verify-shutdown", *args])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.out == ""
    return captured.err


def test_defaults_are_the_documented_ones() -> None:
    """One gRPC endpoint and a command: 8 workers, signal after 2 s, SIGTERM, a 0.5 s
    accept window, a 30 s budget, service name verify-shutdown."""
    parsed = options(*GRPC, "--grpc-request-text", "1500", *COMMAND)
    assert parsed.grpc is not None and parsed.grpc.request == b"1500"
    assert parsed.grpc.target == "127.0.0.1:50051" and parsed.business_ports == (50051,)
    assert (parsed.concurrency, parsed.signal_after, parsed.signal_name) == (8, 2.0, "SIGTERM")
    assert (parsed.accept_window, parsed.budget, parsed.service) == (0.5, 30.0, "verify-shutdown")
    assert parsed.command == (sys.executable, "-c", "pass")
    assert parsed.http is None and parsed.health is None and parsed.rate is None


def test_http_load_health_and_readiness_are_parsed() -> None:
    """Method, body, headers, a gRPC health target with a service and a readiness URL."""
    parsed = options(
        *HTTP,
        "--http-method",
        "post",
        "--http-body",
        '{"id": 7}',
        "--http-header",
        "X-Test:  yes",
        "--health-grpc",
        "127.0.0.1:50052/payments.Payments",
        "--readiness-url",
        "http://127.0.0.1:8080/readyz",
        "--rate",
        "50",
        "--signal",
        "int",
        *COMMAND,
    )
    assert parsed.http is not None
    assert (parsed.http.method, parsed.http.body) == ("POST", b'{"id": 7}')
    assert parsed.http.headers == (("X-Test", "yes"),)
    assert parsed.health is not None and parsed.health.kind == "grpc"
    assert parsed.health.service == "payments.Payments" and parsed.health.port == 50052
    assert parsed.readiness is not None and parsed.readiness.port == 8080
    assert parsed.rate == 50.0 and parsed.signal_name == "SIGINT"


def test_a_request_file_is_read_as_raw_bytes(tmp_path: Path) -> None:
    """--grpc-request-file sends the file's bytes as they are (a serialized message)."""
    request = tmp_path / "request.bin"
    request.write_bytes(b"\x08\x96\x01\xff\x00")
    parsed = options(*GRPC, "--grpc-request-file", str(request), *COMMAND)
    assert parsed.grpc is not None and parsed.grpc.request == b"\x08\x96\x01\xff\x00"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*COMMAND], "give the endpoint to load"),
        (["--grpc", "127.0.0.1:50051", *COMMAND], '"--grpc" needs "--grpc-method'),
        (["--grpc-method", "/a.B/C", *COMMAND], '"--grpc-method" needs "--grpc HOST:PORT"'),
        (["--http-body", "x", *COMMAND], '"--http-body" needs "--http URL"'),
        (["--grpc", "127.0.0.1", "--grpc-method", "/a.B/C", *COMMAND], "port from 1 to 65535"),
        (["--grpc", "127.0.0.1:0", "--grpc-method", "/a.B/C", *COMMAND], "port from 1 to 65535"),
        (["--grpc", "127.0.0.1:50051", "--grpc-method", "Pay", *COMMAND], "/package.Service"),
        (["--http", "ftp://127.0.0.1/x", *COMMAND], "http:// or https:// URL"),
        (["--http", "http://user:pw@127.0.0.1:80/", *COMMAND], "without credentials"),
        ([*HTTP, "--http-method", "GE T", *COMMAND], "HTTP method token"),
        ([*HTTP, "--http-header", "no colon", *COMMAND], "NAME: VALUE"),
        ([*HTTP, "--http-header", "X: a\r\nInjected: 1", *COMMAND], "without line breaks"),
        ([*HTTP, "--http-body", "a", "--http-body-file", "f", *COMMAND], "cannot be used together"),
        ([*HTTP, "--concurrency", "0", *COMMAND], "whole number from 1 to 1000"),
        ([*HTTP, "--concurrency", "1e3", *COMMAND], "whole number from 1 to 1000"),
        ([*HTTP, "--concurrency", "99999999999999999999", *COMMAND], "from 1 to 1000"),
        ([*HTTP, "--rate", "0", *COMMAND], "requests per second from 0.1"),
        ([*HTTP, "--budget", "nan", *COMMAND], "number of seconds from 0.1 to 86400"),
        ([*HTTP, "--budget", "inf", *COMMAND], "terminationGracePeriodSeconds minus"),
        ([*HTTP, "--signal-after", "-1", *COMMAND], "from 0 to 3600"),
        ([*HTTP, "--accept-window", "5", "--budget", "5", *COMMAND], "shorter than"),
        ([*HTTP, "--signal", "SIGKILL", *COMMAND], "one of SIGTERM, SIGINT"),
        ([*HTTP, "--health-url", "http://127.0.0.1:99999/", *COMMAND], "--health-url"),
        ([*HTTP, "--health-grpc", "127.0.0.1:5/bad name", *COMMAND], "HOST:PORT[/SERVICE]"),
        (
            [*HTTP, "--health-url", "http://h:1/", "--health-grpc", "h:2", *COMMAND],
            "cannot be used together",
        ),
        ([*HTTP, "--service", "   ", *COMMAND], "printable name"),
        ([*HTTP, "--service", "x" * 129, *COMMAND], "1 to 128 characters"),
        ([*HTTP], "no command given"),
        ([*HTTP, "--"], "no command given"),
        ([*HTTP, "--", "no-such-command-anywhere"], "command not found"),
    ],
)
def test_bad_settings_exit_2_naming_the_flag_and_the_rule(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """Each broken setting: exit 2, nothing on stdout, and a message with the rule."""
    err = refused(capsys, *args)
    assert err.startswith("drainwatch verify-shutdown: ")
    assert message in err, err


def test_a_missing_or_oversized_request_file_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A request file that does not exist, or is bigger than gRPC's message limit."""
    err = refused(capsys, *GRPC, "--grpc-request-file", str(tmp_path / "nope"), *COMMAND)
    assert '"--grpc-request-file" must be a readable file' in err
    assert "No such file or directory" in err
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (MAX_REQUEST_BYTES + 1))
    err = refused(capsys, *GRPC, "--grpc-request-file", str(big), *COMMAND)
    assert f"at most {MAX_REQUEST_BYTES} bytes" in err


def test_a_json_out_in_a_missing_directory_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--json-out must name a file in an existing directory, not a directory."""
    err = refused(capsys, *HTTP, "--json-out", str(tmp_path / "no" / "out.json"), *COMMAND)
    assert "an existing, writable directory" in err
    err = refused(capsys, *HTTP, "--json-out", str(tmp_path), *COMMAND)
    assert '"--json-out" must be a file path' in err


def test_hostile_values_are_shown_cut_and_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    """A huge value with control characters is shown escaped and cut, never echoed whole."""
    hostile = "\x1b[31m" + "A" * 100_000
    err = refused(capsys, *HTTP, "--http-method", hostile, *COMMAND)
    assert "\x1b" not in err and "\\x1b" in err
    assert "(cut, 100005 characters)" in err
    assert len(err) < 1000


def test_too_many_headers_are_refused() -> None:
    """More than 64 --http-header flags."""
    headers = [item for index in range(65) for item in ("--http-header", f"X-{index}: 1")]
    with pytest.raises(VerifyUsageError, match="at most 64 times"):
        options(*HTTP, *headers, *COMMAND)
