"""SDK settings: from ``drainwatch.configure()`` arguments, else from the environment."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from ._endpoint import DEFAULT, DEFAULT_ENDPOINT, Endpoint, parse_endpoint

ENV_SERVICE = "DRAINWATCH_SERVICE"
ENV_ENDPOINT = "DRAINWATCH_ENDPOINT"
ENV_INTERVAL = "DRAINWATCH_INTERVAL"
ENV_DISABLED = "DRAINWATCH_DISABLED"

DEFAULT_INTERVAL_SECONDS = 1.0
_MIN_INTERVAL_SECONDS = 0.05
_MAX_INTERVAL_SECONDS = 300.0


@dataclass(frozen=True)
class Settings:
    """How this process reports. ``service=None`` lets the agent's configured name apply."""

    service: str | None = None
    endpoint: Endpoint = DEFAULT
    interval: float = DEFAULT_INTERVAL_SECONDS
    enabled: bool = True


def check_interval(value: float, setting: str) -> float:
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


def check_service(value: object, setting: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'"{setting}" must be a non-empty string: {value!r}')
    return value.strip()


def _truthy(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on"}


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from ``DRAINWATCH_*`` variables; raise ``ValueError`` naming the variable."""
    env = os.environ if environ is None else environ
    if _truthy(env.get(ENV_DISABLED, "")):
        return Settings(enabled=False)
    service = check_service(env.get(ENV_SERVICE) or None, ENV_SERVICE)
    endpoint = parse_endpoint(env.get(ENV_ENDPOINT) or DEFAULT_ENDPOINT, setting=ENV_ENDPOINT)
    interval = DEFAULT_INTERVAL_SECONDS
    raw_interval = env.get(ENV_INTERVAL)
    if raw_interval:
        try:
            parsed = float(raw_interval)
        except ValueError:
            raise ValueError(
                f'"{ENV_INTERVAL}" must be a number of seconds: {raw_interval!r}'
            ) from None
        interval = check_interval(parsed, ENV_INTERVAL)
    return Settings(service=service, endpoint=endpoint, interval=interval)
