"""The configuration error and its message shape, shared by every settings module."""

from __future__ import annotations


class ConfigError(Exception):
    """A setting that cannot be used. ``str()`` is the message for the user."""


def fail(where: str, rule: str, value: object, fix: str = "") -> ConfigError:
    """``<where> must be <rule>: <value>; <fix>``: where the value came from, the rule it
    breaks, the value itself and how to fix it."""
    shown = repr(value) if not isinstance(value, str) else f'"{value}"'
    message = f"{where} must be {rule}: {shown}"
    return ConfigError(f"{message}; {fix}" if fix else message)
