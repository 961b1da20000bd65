"""The configuration error, its message shape and the checks every settings module shares."""

from __future__ import annotations

import math


class ConfigError(Exception):
    """A setting that cannot be used. ``str()`` is the message for the user."""


def fail(where: str, rule: str, value: object, fix: str = "") -> ConfigError:
    """``<where> must be <rule>: <value>; <fix>``: where the value came from, the rule it
    breaks, the value itself and how to fix it."""
    shown = repr(value) if not isinstance(value, str) else f'"{value}"'
    message = f"{where} must be {rule}: {shown}"
    return ConfigError(f"{message}; {fix}" if fix else message)


def parse_seconds(
    value: object, where: str, low: float = 1.0, high: float = 86_400.0, fix: str = ""
) -> float:
    """A finite number of seconds in ``[low, high]``, from YAML or a flag's text."""
    number: object = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = value
    if (
        isinstance(number, bool)
        or not isinstance(number, int | float)
        or not math.isfinite(number)
        or not low <= number <= high
    ):
        raise fail(where, f"a number of seconds from {low:g} to {high:g}", value, fix)
    return float(number)
