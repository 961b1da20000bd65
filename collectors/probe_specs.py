"""The ``--probe-http`` and ``--probe-grpc`` values: parsing and checking probe settings.

:func:`parse_probe_spec` and :func:`parse_grpc_probe_spec` turn ``NAME=URL`` and
``NAME=HOST:PORT[/service]`` into :class:`HttpProbeSpec` and :class:`GrpcProbeSpec`, or raise a
:class:`ProbeSpecError` that names the setting, rule, value and fix. They are kept apart from
:mod:`drainwatch.collectors.probes` (the probes, their runner and collector) because parsing a
setting needs no network code and to keep each module a readable size.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "GrpcProbeSpec",
    "HttpProbeSpec",
    "ProbeSpecError",
    "parse_grpc_probe_spec",
    "parse_probe_spec",
]

MAX_SPEC_LENGTH: Final = 2048
_HTTP_EXAMPLE = "liveness=http://127.0.0.1:8080/healthz"
_GRPC_EXAMPLE = "grpc_health=127.0.0.1:50051/payments.Payments"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
_GRPC_SERVICE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
_SHOWN = 80


class ProbeSpecError(ValueError):
    """A probe setting that cannot be used; ``str()`` names the setting, rule, value and fix."""


@dataclass(frozen=True, slots=True)
class HttpProbeSpec:
    name: str
    url: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class GrpcProbeSpec:
    name: str
    target: str  # HOST:PORT as grpc dials it, [v6]:PORT for IPv6
    service: str  # "" = the server as a whole
    host: str
    port: int


def _shown(value: object) -> str:
    if not isinstance(value, str):
        return repr(value)
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in value[:_SHOWN])
    cut = f" (cut, {len(value)} characters)" if len(value) > _SHOWN else ""
    return f'"{text}"{cut}'


def _error(where: str, rule: str, value: object, fix: str) -> ProbeSpecError:
    return ProbeSpecError(f"{where} must be {rule}: {_shown(value)}; {fix}")


def _name_and_rest(value: object, where: str, form: str, example: str) -> tuple[str, str]:
    fix = f"for example {example}"
    if not isinstance(value, str):
        raise _error(where, form, value, fix)
    if len(value) > MAX_SPEC_LENGTH:
        raise _error(where, f"{form} of at most {MAX_SPEC_LENGTH} characters", value, fix)
    text = value.strip()
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise _error(where, f"{form} without spaces or control characters", value, fix)
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise _error(where, form, value, fix)
    if not _NAME.fullmatch(name):
        raise _error(
            where,
            "a NAME of letters, digits, '_', '.' or '-' (starting with a letter or '_', "
            "at most 64)",
            value,
            f"the name is the probe label, {fix}",
        )
    return name, rest


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOST.fullmatch(host) is not None
    return True


def parse_probe_spec(value: object, where: str = "--probe-http") -> HttpProbeSpec:
    """``NAME=URL``: an http:// or https:// URL on any host (a probe may target the pod IP)."""
    name, url = _name_and_rest(value, where, "NAME=URL", _HTTP_EXAMPLE)
    fix = f"for example {_HTTP_EXAMPLE}"
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        raise _error(
            where, "NAME=URL with a valid host and a port from 1 to 65535", value, fix
        ) from None
    if scheme not in ("http", "https"):
        raise _error(
            where,
            "NAME=URL with an http:// or https:// URL",
            value,
            f"{fix}; for gRPC health use --probe-grpc NAME=HOST:PORT[/service]",
        )
    if parts.username is not None or parts.password is not None:
        raise _error(
            where,
            "a URL without credentials",
            value,
            "the URL is shown in logs and metrics; probe a path that needs no login",
        )
    if not host or not _valid_host(host):
        raise _error(where, "a URL with a host name or an IP address", value, fix)
    if port == 0:
        raise _error(where, "NAME=URL with a port from 1 to 65535", value, fix)
    return HttpProbeSpec(name, url, host, port or (443 if scheme == "https" else 80))


def parse_grpc_probe_spec(value: object, where: str = "--probe-grpc") -> GrpcProbeSpec:
    """``NAME=HOST:PORT[/service]``: any host, a port is required (gRPC has no default)."""
    form = "NAME=HOST:PORT[/service]"
    name, rest = _name_and_rest(value, where, form, _GRPC_EXAMPLE)
    fix = f"for example {_GRPC_EXAMPLE}"
    if "://" in rest:
        raise _error(where, f"{form} without a scheme", value, fix)
    address, slash, service = rest.partition("/")
    if slash and not _GRPC_SERVICE.fullmatch(service):
        raise _error(
            where,
            f"{form} with a service name of letters, digits, '_', '.' or '-' after the '/'",
            value,
            "e.g. /payments.Payments, or no '/' at all to check the server as a whole",
        )
    if address.startswith("["):
        host, bracket, port_text = address[1:].partition("]")
        valid = bool(bracket) and port_text.startswith(":") and ":" in host
        valid = valid and _valid_host(host)
        port_text, target_host = port_text[1:], f"[{host}]"
    else:
        host, colon, port_text = address.rpartition(":")
        if not colon:
            port_text = ""
        valid = not colon or (":" not in host and _valid_host(host))
        target_host = host
    if not valid:
        raise _error(
            where, f"{form} with a host name, an IPv4 address or an [IPv6] address", value, fix
        )
    if not (port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535):
        raise _error(
            where, f"{form} with a port from 1 to 65535", value, f"gRPC has no default port, {fix}"
        )
    port = int(port_text)
    return GrpcProbeSpec(name, f"{target_host}:{port}", service, host, port)
