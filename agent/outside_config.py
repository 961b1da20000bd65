"""Settings of the agent's outside view: target, ports, sampling, py-spy, probes, state, push.

Each setting is a dotted key (``pyspy.interval_seconds``) that is also a YAML section entry,
and most are flags (``--pyspy-interval``). ``OUTSIDE_PARSERS`` maps every key to a check that
takes ``(value, where)`` and returns the parsed value or raises ``ConfigError`` naming where
the value came from, the rule, the value and the fix. ``build_outside`` assembles the parsed
values into an ``OutsideConfig``; defaults are the dataclass defaults.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from drainwatch.collectors.probe_specs import (
    GrpcProbeSpec,
    HttpProbeSpec,
    ProbeSpecError,
    parse_grpc_probe_spec,
    parse_probe_spec,
)
from drainwatch.collectors.targets import parse_target_cmdline, parse_target_pid

from .config_errors import ConfigError, fail, parse_seconds
from .pushgateway import DEFAULT_JOB, PushgatewayError, parse_job, parse_pushgateway_url
from .state_dir import DEFAULT_KEEP

_MAX_PROBES: Final = 32
_MAX_PORTS: Final = 64


@dataclass(frozen=True)
class TargetSettings:
    pid: int | None = None
    cmdline: re.Pattern[str] | None = None
    from_sdk: bool = True
    # On its own SIGTERM the agent waits this long for the target to exit: a native sidecar
    # is stopped after the app, a plain one at the same time.
    exit_wait_seconds: float = 30.0


@dataclass(frozen=True)
class PortSettings:
    health: frozenset[int] = frozenset()
    metrics: frozenset[int] = frozenset()


@dataclass(frozen=True)
class SamplingSettings:
    interval_seconds: float = 0.05
    draining_interval_seconds: float = 0.02


@dataclass(frozen=True)
class PySpySettings:
    enabled: bool = True
    binary: str | None = None
    interval_seconds: float = 5.0
    draining_interval_seconds: float = 1.0
    timeout_seconds: float = 3.0
    max_per_minute: int = 60
    blocking: bool = False
    locals: bool = False
    # "Last words" are kept when the drain has used this share of its budget.
    last_words_at: float = 0.5


@dataclass(frozen=True)
class ProbeSettings:
    http: tuple[HttpProbeSpec, ...] = ()
    grpc: tuple[GrpcProbeSpec, ...] = ()
    interval_seconds: float = 2.0
    fast_interval_seconds: float = 0.2
    timeout_seconds: float = 1.0

    @property
    def targets(self) -> tuple[str, ...]:
        """What each probe targets (URL or HOST:PORT): a probed port has the health role."""
        return (*(spec.url for spec in self.http), *(spec.target for spec in self.grpc))


@dataclass(frozen=True)
class StateSettings:
    dir: str | None = None
    history: int = DEFAULT_KEEP
    # After the target is gone, a stopping agent serves its final metrics this long at
    # most, so the last scrape sees them; it leaves sooner once a scrape has seen them.
    final_metrics_seconds: float = 30.0


@dataclass(frozen=True)
class PushSettings:
    url: str | None = None
    job: str = DEFAULT_JOB


@dataclass(frozen=True)
class OutsideConfig:
    target: TargetSettings = field(default_factory=TargetSettings)
    ports: PortSettings = field(default_factory=PortSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    pyspy: PySpySettings = field(default_factory=PySpySettings)
    probes: ProbeSettings = field(default_factory=ProbeSettings)
    state: StateSettings = field(default_factory=StateSettings)
    pushgateway: PushSettings = field(default_factory=PushSettings)


# -- value checks -----------------------------------------------------------------------------


def _seconds(low: float, high: float, fix: str = "") -> Callable[[object, str], float]:
    def check(value: object, where: str) -> float:
        return parse_seconds(value, where, low, high, fix)

    return check


def _whole(low: int, high: int) -> Callable[[object, str], int]:
    def check(value: object, where: str) -> int:
        number: object = value
        if isinstance(value, str) and value.strip().isdigit():
            number = int(value)
        if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
            raise fail(where, f"a whole number from {low} to {high}", value)
        return number

    return check


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise fail(where, "true or false", value)


def _share(value: object, where: str) -> float:
    number = _seconds(0.05, 1.0)(value, where) if not isinstance(value, bool) else None
    if number is None:
        raise fail(where, "a share of the drain budget from 0.05 to 1", value)
    return number


def _optional_pid(value: object, where: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_target_pid(value, where)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _optional_cmdline(value: object, where: str) -> re.Pattern[str] | None:
    if value is None:
        return None
    try:
        return parse_target_cmdline(value, where)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _items(value: object, where: str, what: str, limit: int) -> list[object]:
    items = [part for part in value.split(",") if part.strip()] if isinstance(value, str) else value
    if items is None:
        return []
    if not isinstance(items, list | tuple):
        raise fail(where, f"a list of {what}", value)
    if len(items) > limit:
        raise fail(where, f"a list of at most {limit} {what}", f"{len(items)} items")
    return list(items)


def parse_ports(value: object, where: str) -> frozenset[int]:
    ports: set[int] = set()
    for item in _items(value, where, "ports", _MAX_PORTS):
        text = item.strip() if isinstance(item, str) else item
        if isinstance(text, str) and text.isdigit():
            text = int(text)
        if isinstance(text, bool) or not isinstance(text, int) or not 1 <= text <= 65535:
            raise fail(where, "a list of TCP ports from 1 to 65535", value, "e.g. [8081]")
        ports.add(text)
    return frozenset(ports)


def _probe_list(parse: Callable[[object, str], Any], value: object, where: str) -> tuple[Any, ...]:
    # A flag is repeated (a list of strings); YAML may also give a NAME: TARGET mapping.
    if isinstance(value, Mapping):
        value = [f"{name}={target}" for name, target in value.items()]
    specs = []
    for item in _items(value, where, "probes", _MAX_PROBES):
        try:
            specs.append(parse(item, where))
        except ProbeSpecError as error:
            raise ConfigError(str(error)) from None
    return tuple(specs)


def parse_http_probes(value: object, where: str) -> tuple[HttpProbeSpec, ...]:
    return tuple(_probe_list(parse_probe_spec, value, where))


def parse_grpc_probes(value: object, where: str) -> tuple[GrpcProbeSpec, ...]:
    return tuple(_probe_list(parse_grpc_probe_spec, value, where))


def parse_state_dir(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\0" in value or len(value) > 4096:
        raise fail(where, "a directory path", value, "e.g. /var/lib/drainwatch on an emptyDir")
    return value.strip()


def parse_binary(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\0" in value or len(value) > 4096:
        raise fail(where, "the path of the py-spy executable", value)
    return value.strip()


def _pushgateway(value: object, where: str) -> str | None:
    if value is None:
        return None
    try:
        return parse_pushgateway_url(value, where)
    except PushgatewayError as error:
        raise ConfigError(str(error)) from None


def _job(value: object, where: str) -> str:
    try:
        return parse_job(value, where)
    except PushgatewayError as error:
        raise ConfigError(str(error)) from None


OUTSIDE_PARSERS: Final[dict[str, Callable[[object, str], Any]]] = {
    "target.pid": _optional_pid,
    "target.cmdline": _optional_cmdline,
    "target.from_sdk": parse_bool,
    "target.exit_wait_seconds": _seconds(0.0, 3600.0),
    "ports.health": parse_ports,
    "ports.metrics": parse_ports,
    "sampling.interval_seconds": _seconds(
        0.005, 10.0, "20 to 50 ms orders two closes 100 ms apart"
    ),
    "sampling.draining_interval_seconds": _seconds(0.005, 10.0),
    "pyspy.enabled": parse_bool,
    "pyspy.binary": parse_binary,
    "pyspy.interval_seconds": _seconds(0.1, 3600.0, "a dump every few seconds is the default 5"),
    "pyspy.draining_interval_seconds": _seconds(0.1, 3600.0),
    "pyspy.timeout_seconds": _seconds(0.1, 60.0),
    "pyspy.max_per_minute": _whole(1, 600),
    "pyspy.blocking": parse_bool,
    "pyspy.locals": parse_bool,
    "pyspy.last_words_at": _share,
    "probes.http": parse_http_probes,
    "probes.grpc": parse_grpc_probes,
    "probes.interval_seconds": _seconds(0.05, 3600.0),
    "probes.fast_interval_seconds": _seconds(0.05, 3600.0),
    "probes.timeout_seconds": _seconds(0.05, 60.0),
    "state.dir": parse_state_dir,
    "state.history": _whole(1, 10_000),
    "state.final_metrics_seconds": _seconds(0.0, 3600.0),
    "pushgateway.url": _pushgateway,
    "pushgateway.job": _job,
}
SECTIONS: Final = tuple(dict.fromkeys(key.split(".")[0] for key in OUTSIDE_PARSERS))
_SECTION_TYPES: Final[dict[str, Any]] = {
    "target": TargetSettings,
    "ports": PortSettings,
    "sampling": SamplingSettings,
    "pyspy": PySpySettings,
    "probes": ProbeSettings,
    "state": StateSettings,
    "pushgateway": PushSettings,
}


def build_outside(values: Mapping[str, object], where: Mapping[str, str]) -> OutsideConfig:
    """``values``: parsed values by dotted key; ``where``: their sources, for cross checks."""
    sections: dict[str, dict[str, object]] = {name: {} for name in SECTIONS}
    for key, value in values.items():
        section, _, name = key.partition(".")
        sections[section][name] = value
    built = {name: _SECTION_TYPES[name](**settings) for name, settings in sections.items()}
    config = OutsideConfig(**built)
    probes, sampling = config.probes, config.sampling
    if probes.fast_interval_seconds > probes.interval_seconds:
        raise ConfigError(
            f"{where.get('probes.fast_interval_seconds', 'probes.fast_interval_seconds')} must "
            f"be at most probes.interval_seconds ({probes.interval_seconds:g}): "
            f"{probes.fast_interval_seconds:g}; the fast interval is used while draining"
        )
    if sampling.draining_interval_seconds > sampling.interval_seconds:
        key = "sampling.draining_interval_seconds"
        raise ConfigError(
            f"{where.get(key, key)} must be at most sampling.interval_seconds "
            f"({sampling.interval_seconds:g}): "
            f"{sampling.draining_interval_seconds:g}; sampling is faster while draining"
        )
    names = [spec.name for spec in probes.http] + [spec.name for spec in probes.grpc]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(
            "probe names must be unique across --probe-http and --probe-grpc: "
            + ", ".join(f'"{name}"' for name in twice)
            + " given more than once; rename one"
        )
    return config
