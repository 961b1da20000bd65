"""Agent settings: one frozen dataclass, filled from flags > environment > YAML > defaults.

Every flag has a YAML key (``docs/configuration.md`` lists them). Every error names where
the value came from (flag, variable, or file:line), the setting, the rule and the value.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from drainwatch._endpoint import DEFAULT, Endpoint, EndpointError, parse_endpoint

from .config_errors import ConfigError, fail, parse_seconds
from .outside_config import OUTSIDE_PARSERS, OutsideConfig, build_outside

__all__ = [
    "DEFAULT_DRAIN_BUDGET_SECONDS",
    "DEFAULT_LISTEN",
    "KNOWN_KEYS",
    "AgentConfig",
    "ConfigError",
    "Limits",
    "ListenAddress",
    "Source",
    "build_config",
    "parse_seconds",
]

DEFAULT_LISTEN = "127.0.0.1:9469"
LOG_LEVELS = ("debug", "info", "warning", "error")
# Kubernetes' default terminationGracePeriodSeconds: the time from SIGTERM to SIGKILL.
DEFAULT_DRAIN_BUDGET_SECONDS = 30.0
_DRAIN_BUDGET_RANGE = (0.1, 86_400.0)


@dataclass(frozen=True)
class Limits:
    """Caps that keep the agent's series and memory bounded whatever the targets send."""

    max_services: int = 100
    max_channels_per_service: int = 2000
    # Every service's channel and method names together: the per-service caps times 100
    # services would still allow millions of series.
    max_channels_total: int = 5_000
    max_instances_per_service: int = 64
    max_channel_objects_per_instance: int = 10_000
    max_methods_per_instance: int = 500
    max_methods_total: int = 2_000
    max_label_length: int = 128
    max_loops_per_instance: int = 16
    max_blocked_tasks: int = 20  # per service: the longest task waits exported
    max_blocked_threads: int = 50  # per service: the longest thread waits the SDK reports


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class AgentConfig:
    listen: ListenAddress = ListenAddress("127.0.0.1", 9469)
    ingest: tuple[Endpoint, ...] = (DEFAULT,)
    service: str | None = None
    log_level: str = "info"
    retention_seconds: float = 300.0
    # A service with no process left: its series end this long after it was last heard.
    service_retention_seconds: float = 3600.0
    # The grace budget of a shutdown: terminationGracePeriodSeconds minus the preStop hook.
    drain_budget_seconds: float = DEFAULT_DRAIN_BUDGET_SECONDS
    limits: Limits = field(default_factory=Limits)
    outside: OutsideConfig = field(default_factory=OutsideConfig)


# -- value checks: each takes (value, where) and returns the parsed value ---------------------


def parse_listen(value: object, where: str) -> ListenAddress:
    if not isinstance(value, str) or not value.strip():
        raise fail(where, "HOST:PORT such as 127.0.0.1:9469", value)
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise fail(
            where,
            "HOST:PORT with a port from 0 to 65535",
            value,
            "for example 127.0.0.1:9469, or 0.0.0.0:9469 for Prometheus in a pod",
        )
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise fail(
                where,
                "a literal IP address or localhost",
                value,
                "name the interface by address, e.g. 0.0.0.0 or 127.0.0.1",
            ) from None
    return ListenAddress("127.0.0.1" if host == "localhost" else host, int(port_text))


def parse_ingest(value: object, where: str) -> tuple[Endpoint, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise fail(where, "a URL or a non-empty list of URLs", value)
    endpoints = []
    for item in items:
        try:
            endpoints.append(parse_endpoint(item, setting=where))
        except EndpointError as error:
            raise ConfigError(str(error)) from None
    if len(set(endpoints)) != len(endpoints):
        raise fail(where, "a list without duplicates", value)
    return tuple(endpoints)


def parse_service(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 128:
        raise fail(where, "a non-empty name of at most 128 characters", value)
    return value.strip()


def parse_log_level(value: object, where: str) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise fail(where, "one of " + ", ".join(LOG_LEVELS), value)
    return value.lower()


def parse_drain_budget(value: object, where: str) -> float:
    try:
        return parse_seconds(value, where, *_DRAIN_BUDGET_RANGE)
    except ConfigError as error:
        raise ConfigError(
            f"{error}; set it to terminationGracePeriodSeconds minus the preStop hook's "
            "duration (Kubernetes' default grace period is 30)"
        ) from None


def parse_limit(value: object, where: str, low: int = 1, high: int = 1_000_000) -> int:
    number: object = value
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
        raise fail(where, f"a whole number from {low} to {high}", value)
    return number


_TOP_LEVEL_PARSERS: dict[str, Any] = {
    "listen": parse_listen,
    "ingest": parse_ingest,
    "service": parse_service,
    "log_level": parse_log_level,
    "retention_seconds": parse_seconds,
    "service_retention_seconds": parse_seconds,
    "drain_budget_seconds": parse_drain_budget,
}
_LIMIT_KEYS = tuple(f.name for f in fields(Limits))
_LABEL_LENGTH_RANGE = (16, 1024)


def _limit(key: str, value: object, where: str) -> int:
    if key == "max_label_length":
        return parse_limit(value, where, *_LABEL_LENGTH_RANGE)
    return parse_limit(value, where)


@dataclass(frozen=True)
class Source:
    """Where a raw value came from, for error messages."""

    where: str


def build_config(layers: Sequence[Mapping[str, tuple[object, Source]]]) -> AgentConfig:
    """Merge raw layers (lowest precedence first) and validate each winning value.

    Keys are dotted paths (``limits.max_services``); values carry their ``Source``.
    """
    merged: dict[str, tuple[object, Source]] = {}
    for layer in layers:
        merged.update(layer)
    top: dict[str, Any] = {}
    limits: dict[str, int] = {}
    outside: dict[str, object] = {}
    for key, (value, source) in merged.items():
        if key.startswith("limits."):
            name = key.removeprefix("limits.")
            limits[name] = _limit(name, value, source.where)
        elif key in OUTSIDE_PARSERS:
            outside[key] = OUTSIDE_PARSERS[key](value, source.where)
        else:
            top[key] = _TOP_LEVEL_PARSERS[key](value, source.where)
    sources = {key: source.where for key, (_, source) in merged.items()}
    return AgentConfig(**top, limits=Limits(**limits), outside=build_outside(outside, sources))


KNOWN_KEYS = (*_TOP_LEVEL_PARSERS, *(f"limits.{key}" for key in _LIMIT_KEYS), *OUTSIDE_PARSERS)
