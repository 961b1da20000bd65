"""SDK settings: from ``drainwatch.configure()`` arguments, else from the environment."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from ._endpoint import DEFAULT, DEFAULT_ENDPOINT, Endpoint, parse_endpoint

ENV_SERVICE = "DRAINWATCH_SERVICE"
ENV_ENDPOINT = "DRAINWATCH_ENDPOINT"
ENV_INTERVAL = "DRAINWATCH_INTERVAL"
ENV_DISABLED = "DRAINWATCH_DISABLED"
ENV_TRACKING = "DRAINWATCH_TRACKING"
ENV_LAG_THRESHOLD = "DRAINWATCH_LAG_THRESHOLD"
ENV_DUMP_SIGNAL = "DRAINWATCH_DUMP_SIGNAL"

DEFAULT_INTERVAL_SECONDS = 1.0
_MIN_INTERVAL_SECONDS = 0.05
_MAX_INTERVAL_SECONDS = 300.0
# asyncio's own slow-callback threshold in debug mode: a block this long is worth a stack.
DEFAULT_LAG_THRESHOLD_SECONDS = 0.1
_MIN_LAG_THRESHOLD_SECONDS = 0.02
_MAX_LAG_THRESHOLD_SECONDS = 60.0
# Signals a dump may take over: never one that stops the process or that the runtime uses.
DUMP_SIGNALS = {"SIGUSR1": signal.SIGUSR1, "SIGUSR2": signal.SIGUSR2}
_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class Settings:
    """How this process reports. ``service=None`` lets the agent's configured name apply."""

    service: str | None = None
    endpoint: Endpoint = DEFAULT
    interval: float = DEFAULT_INTERVAL_SECONDS
    enabled: bool = True
    # Task, thread and loop-lag tracking: threads in every snapshot, and the tasks and lag
    # of each loop watched (configure() inside a running loop, or every loop under
    # `drainwatch run`).
    tracking: bool = True
    lag_threshold: float = DEFAULT_LAG_THRESHOLD_SECONDS
    dump_signal: signal.Signals | None = None  # dump tasks and threads to stderr on it


def check_interval(value: object, setting: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not _MIN_INTERVAL_SECONDS <= value <= _MAX_INTERVAL_SECONDS
    ):
        raise ValueError(
            f'"{setting}" must be a number of seconds between {_MIN_INTERVAL_SECONDS} and '
            f"{_MAX_INTERVAL_SECONDS}: {value!r}"
        )
    return float(value)


def check_lag_threshold(value: object, setting: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not _MIN_LAG_THRESHOLD_SECONDS <= value <= _MAX_LAG_THRESHOLD_SECONDS
    ):
        raise ValueError(
            f'"{setting}" must be a number of seconds between {_MIN_LAG_THRESHOLD_SECONDS} and '
            f"{_MAX_LAG_THRESHOLD_SECONDS}: {value!r}; a blocked loop's stack is captured "
            "once it is late by this much"
        )
    return float(value)


def check_tracking(value: object, setting: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _ON | _OFF:
        return value.strip().lower() in _ON
    raise ValueError(f'"{setting}" must be on or off (1/0, true/false, yes/no): {value!r}')


def check_dump_signal(value: object, setting: str) -> signal.Signals | None:
    """``SIGUSR1``/``SIGUSR2`` (name, ``USR1``, number or ``signal.Signals``); empty or
    ``off`` for none."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().upper()
        if text in ("", "OFF"):
            return None
        found = DUMP_SIGNALS.get(text) or DUMP_SIGNALS.get(f"SIG{text}")
        if found is not None:
            return found
    elif isinstance(value, int) and not isinstance(value, bool):
        for candidate in DUMP_SIGNALS.values():
            if value == candidate:
                return candidate
    raise ValueError(
        f'"{setting}" must be SIGUSR1 or SIGUSR2 (or off): {value!r}; other signals stop '
        "the process or belong to the runtime"
    )


def check_service(value: object, setting: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'"{setting}" must be a non-empty string: {value!r}')
    return value.strip()


def _truthy(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on"}


def _seconds(env: Mapping[str, str], variable: str, default: float) -> float:
    """A variable's number, ``default`` when unset; ``ValueError`` naming it when not a number."""
    raw = env.get(variable)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f'"{variable}" must be a number of seconds: {raw!r}') from None


# One reader per setting, so that configure() reads only the variables of the settings it
# was not given (a bad variable cannot break an explicit configuration).


def env_service(env: Mapping[str, str]) -> str | None:
    return check_service(env.get(ENV_SERVICE) or None, ENV_SERVICE)


def env_endpoint(env: Mapping[str, str]) -> Endpoint:
    return parse_endpoint(env.get(ENV_ENDPOINT) or DEFAULT_ENDPOINT, setting=ENV_ENDPOINT)


def env_interval(env: Mapping[str, str]) -> float:
    return check_interval(_seconds(env, ENV_INTERVAL, DEFAULT_INTERVAL_SECONDS), ENV_INTERVAL)


def env_tracking(env: Mapping[str, str]) -> bool:
    return check_tracking(env.get(ENV_TRACKING) or "on", ENV_TRACKING)


def env_lag_threshold(env: Mapping[str, str]) -> float:
    threshold = _seconds(env, ENV_LAG_THRESHOLD, DEFAULT_LAG_THRESHOLD_SECONDS)
    return check_lag_threshold(threshold, ENV_LAG_THRESHOLD)


def env_dump_signal(env: Mapping[str, str]) -> signal.Signals | None:
    return check_dump_signal(env.get(ENV_DUMP_SIGNAL), ENV_DUMP_SIGNAL)


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from ``DRAINWATCH_*`` variables; raise ``ValueError`` naming the variable."""
    env = os.environ if environ is None else environ
    if _truthy(env.get(ENV_DISABLED, "")):
        return Settings(enabled=False)
    return Settings(
        service=env_service(env),
        endpoint=env_endpoint(env),
        interval=env_interval(env),
        tracking=env_tracking(env),
        lag_threshold=env_lag_threshold(env),
        dump_signal=env_dump_signal(env),
    )
