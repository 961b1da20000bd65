"""The settings of ``drainwatch verify-shutdown``, checked before anything starts.

``parse_options`` turns the parsed command line into a frozen ``VerifyOptions`` or raises
``VerifyUsageError`` whose message names the flag, the rule, the value and the fix (the
command then exits with code 2, before starting the service).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from drainwatch.collectors.probe_specs import (
    ProbeSpecError,
    parse_grpc_probe_spec,
    parse_probe_spec,
)

DEFAULT_SERVICE: Final = "verify-shutdown"
# gRPC's default maximum message size: a bigger request could never be sent anyway.
MAX_REQUEST_BYTES: Final = 4 * 1024 * 1024
MAX_HEADERS: Final = 64
_SHOWN: Final = 80
_GRPC_METHOD = re.compile(r"/[A-Za-z_][A-Za-z0-9_.]*/[A-Za-z_][A-Za-z0-9_]*")
_HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_SIGNALS: Final = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2")


class VerifyUsageError(Exception):
    """A setting that cannot be used. ``str()`` is the message for the user."""


@dataclass(frozen=True)
class GrpcLoad:
    target: str  # HOST:PORT as grpc dials it
    host: str
    port: int
    method: str
    request: bytes


@dataclass(frozen=True)
class HttpLoad:
    url: str
    host: str
    port: int
    method: str
    body: bytes | None
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class HealthCheck:
    kind: str  # http | grpc
    target: str  # the URL, or HOST:PORT as grpc dials it
    service: str  # grpc.health.v1 service name; "" = the whole server
    port: int

    @property
    def describe(self) -> str:
        if self.kind == "http":
            return self.target
        return f"grpc.health.v1 at {self.target}" + (f"/{self.service}" if self.service else "")


@dataclass(frozen=True)
class VerifyOptions:
    """Everything one verification needs; times are seconds."""

    command: tuple[str, ...]
    grpc: GrpcLoad | None = None
    http: HttpLoad | None = None
    health: HealthCheck | None = None
    readiness: HealthCheck | None = None  # probed like the kubelet, so the SDK sees it flip
    concurrency: int = 8
    rate: float | None = None  # requests per second per endpoint; None = as fast as possible
    request_timeout: float = 60.0
    signal_after: float = 2.0
    signal_name: str = "SIGTERM"
    accept_window: float = 0.5
    budget: float = 30.0
    ready_timeout: float = 30.0
    service: str = DEFAULT_SERVICE
    json_out: str | None = None

    @property
    def signal_number(self) -> int:
        return int(getattr(signal, self.signal_name))

    @property
    def business_addresses(self) -> tuple[tuple[str, int], ...]:
        """(host, port) of each loaded endpoint, without repeats."""
        found = [(load.host, load.port) for load in (self.grpc, self.http) if load is not None]
        return tuple(dict.fromkeys(found))

    @property
    def business_ports(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(port for _, port in self.business_addresses))


def _shown(value: object) -> str:
    if not isinstance(value, str):
        return repr(value)
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in value[:_SHOWN])
    cut = f" (cut, {len(value)} characters)" if len(value) > _SHOWN else ""
    return f'"{text}"{cut}'


def usage_error(flag: str, rule: str, value: object, fix: str = "") -> VerifyUsageError:
    message = f'"{flag}" must be {rule}: {_shown(value)}'
    return VerifyUsageError(f"{message}; {fix}" if fix else message)


def parse_number(
    text: str | None,
    flag: str,
    low: float,
    high: float,
    default: float,
    fix: str = "",
    unit: str = "seconds",
) -> float:
    if text is None:
        return default
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not low <= number <= high:
        raise usage_error(flag, f"a number of {unit} from {low:g} to {high:g}", text, fix)
    return number


def parse_count(text: str | None, flag: str, low: int, high: int, default: int) -> int:
    if text is None:
        return default
    stripped = text.strip()
    if not stripped.isascii() or not stripped.isdigit() or not low <= int(stripped) <= high:
        raise usage_error(flag, f"a whole number from {low} to {high}", text)
    return int(stripped)


def _read_limited(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_REQUEST_BYTES + 1)
    except OSError as error:
        raise usage_error(
            flag, "a readable file", path, f"{error.strerror or error}; check the path"
        ) from None
    if len(data) > MAX_REQUEST_BYTES:
        raise usage_error(
            flag,
            f"a file of at most {MAX_REQUEST_BYTES} bytes (gRPC's default message limit)",
            path,
        )
    return data


def _payload(text: str | None, path: str | None, flags: tuple[str, str]) -> bytes | None:
    if text is not None and path is not None:
        raise VerifyUsageError(f'"{flags[0]}" and "{flags[1]}" cannot be used together; pick one')
    if path is not None:
        return _read_limited(path, flags[1])
    if text is None:
        return None
    data = text.encode("utf-8", "surrogateescape")
    if len(data) > MAX_REQUEST_BYTES:
        raise usage_error(flags[0], f"at most {MAX_REQUEST_BYTES} bytes", text)
    return data


def parse_grpc(
    target: str | None, method: str | None, request_text: str | None, request_file: str | None
) -> GrpcLoad | None:
    if target is None:
        for flag, value in (
            ("--grpc-method", method),
            ("--grpc-request-text", request_text),
            ("--grpc-request-file", request_file),
        ):
            if value is not None:
                raise VerifyUsageError(f'"{flag}" needs "--grpc HOST:PORT" (the endpoint to load)')
        return None
    try:
        spec = parse_grpc_probe_spec(f"load={target}", "--grpc")
    except ProbeSpecError:
        raise usage_error(
            "--grpc", "HOST:PORT with a port from 1 to 65535", target, "for example 127.0.0.1:50051"
        ) from None
    if spec.service:
        raise usage_error(
            "--grpc", "HOST:PORT without a path", target, "put the method in --grpc-method"
        )
    if method is None:
        raise VerifyUsageError(
            '"--grpc" needs "--grpc-method /package.Service/Method": the unary method to call'
        )
    if not _GRPC_METHOD.fullmatch(method):
        raise usage_error(
            "--grpc-method",
            "a full method name /package.Service/Method",
            method,
            "for example /payments.Payments/Pay",
        )
    request = _payload(request_text, request_file, ("--grpc-request-text", "--grpc-request-file"))
    return GrpcLoad(spec.target, spec.host, spec.port, method, request or b"")


def _parse_header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not _HTTP_TOKEN.fullmatch(name.strip()):
        raise usage_error(
            "--http-header", "NAME: VALUE with a token NAME", text, "e.g. 'X-Test: 1'"
        )
    value = value.strip()
    if any(ch in value for ch in "\r\n\0") or len(value) > 8192:
        raise usage_error(
            "--http-header", "a value without line breaks, of at most 8192 characters", text
        )
    return name.strip(), value


def parse_http(
    url: str | None,
    method: str | None,
    body_text: str | None,
    body_file: str | None,
    headers: Sequence[str] | None,
) -> HttpLoad | None:
    if url is None:
        for flag, value in (
            ("--http-method", method),
            ("--http-body", body_text),
            ("--http-body-file", body_file),
            ("--http-header", headers),
        ):
            if value is not None:
                raise VerifyUsageError(f'"{flag}" needs "--http URL" (the endpoint to load)')
        return None
    try:
        spec = parse_probe_spec(f"load={url}", "--http")
    except ProbeSpecError:
        raise usage_error(
            "--http",
            "an http:// or https:// URL with a host and a port from 1 to 65535, without "
            "credentials",
            url,
            "for example http://127.0.0.1:8000/orders/7?ms=1500",
        ) from None
    verb = (method or "GET").upper()
    if not _HTTP_TOKEN.fullmatch(verb):
        raise usage_error("--http-method", "an HTTP method token such as GET or POST", method)
    if len(headers or ()) > MAX_HEADERS:
        raise VerifyUsageError(f'"--http-header" can be given at most {MAX_HEADERS} times')
    parsed = tuple(_parse_header(text) for text in headers or ())
    body = _payload(body_text, body_file, ("--http-body", "--http-body-file"))
    return HttpLoad(spec.url, spec.host, spec.port, verb, body, parsed)


def parse_health(url: str | None, grpc_target: str | None) -> HealthCheck | None:
    if url is not None and grpc_target is not None:
        raise VerifyUsageError(
            '"--health-url" and "--health-grpc" cannot be used together; pick one'
        )
    if url is not None:
        try:
            spec = parse_probe_spec(f"health={url}", "--health-url")
        except ProbeSpecError:
            raise usage_error(
                "--health-url",
                "an http:// or https:// URL with a host and a port from 1 to 65535, without "
                "credentials",
                url,
                "the liveness URL, for example http://127.0.0.1:8080/healthz",
            ) from None
        return HealthCheck("http", spec.url, "", spec.port)
    if grpc_target is not None:
        try:
            grpc_spec = parse_grpc_probe_spec(f"health={grpc_target}", "--health-grpc")
        except ProbeSpecError:
            raise usage_error(
                "--health-grpc",
                "HOST:PORT[/SERVICE] with a port from 1 to 65535",
                grpc_target,
                "for example 127.0.0.1:50052, or 127.0.0.1:50051/payments.Payments",
            ) from None
        return HealthCheck("grpc", grpc_spec.target, grpc_spec.service, grpc_spec.port)
    return None


def parse_readiness(url: str | None) -> HealthCheck | None:
    if url is None:
        return None
    try:
        spec = parse_probe_spec(f"readiness={url}", "--readiness-url")
    except ProbeSpecError:
        raise usage_error(
            "--readiness-url",
            "an http:// or https:// URL with a host and a port from 1 to 65535, without "
            "credentials",
            url,
            "the readiness URL, for example http://127.0.0.1:8080/readyz",
        ) from None
    return HealthCheck("http", spec.url, "", spec.port)


def parse_signal(text: str | None) -> str:
    if text is None:
        return "SIGTERM"
    name = text.strip().upper()
    name = name if name.startswith("SIG") else "SIG" + name
    if name not in _SIGNALS:
        raise usage_error("--signal", "one of " + ", ".join(_SIGNALS), text)
    return name


def parse_command(command: Sequence[str]) -> tuple[str, ...]:
    words = list(command)
    if words[:1] == ["--"]:
        words = words[1:]
    if not words:
        raise VerifyUsageError(
            "no command given: drainwatch verify-shutdown [options] -- CMD ARGS..."
        )
    program = words[0]
    if shutil.which(program) is None and not os.path.isfile(program):
        raise VerifyUsageError(f"command not found: {_shown(program)}; check the name and PATH")
    return tuple(words)


def parse_service(text: str | None) -> str:
    if text is None:
        return DEFAULT_SERVICE
    name = text.strip()
    if not name or len(name) > 128 or not name.isprintable():
        raise usage_error("--service", "a printable name of 1 to 128 characters", text)
    return name


def parse_json_out(path: str | None) -> str | None:
    if path is None:
        return None
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not path.strip() or os.path.isdir(path):
        raise usage_error("--json-out", "a file path", path, "for example verify-shutdown.json")
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise usage_error(
            "--json-out", "a file in an existing, writable directory", path, "create it first"
        )
    return path
