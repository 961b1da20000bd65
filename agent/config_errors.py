"""The configuration error, its message shape and the checks every settings module shares."""

from __future__ import annotations

import math


class ConfigError(Exception):
    """A setting that cannot be used. ``str()`` is the message for the user: control and
    unencodable characters escaped, and at most 2000 characters, whatever it quotes."""

    def __init__(self, message: str) -> None:
        if len(message) > _MESSAGE_CHARS:
            message = message[: _MESSAGE_CHARS - 1] + "\u2026"
        super().__init__(_escaped(message))


_SHOWN_CHARS = 200
_MESSAGE_CHARS = 2000


def _escaped(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(
        char
        if char.isprintable() and not 0xD800 <= ord(char) <= 0xDFFF
        else char.encode("unicode_escape", "backslashreplace").decode("ascii")
        for char in text
    )


def show_value(value: object) -> str:
    """``value`` for an error message: text in quotes, anything else as its repr; control
    and unencodable characters escaped (a config value must not drive the terminal that
    prints the error) and cut after 200 characters (a value may be megabytes long)."""
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    if len(text) > _SHOWN_CHARS:
        text = text[: _SHOWN_CHARS - 1] + "\u2026"
    return _escaped(text)


def fail(where: str, rule: str, value: object, fix: str = "") -> ConfigError:
    """``<where> must be <rule>: <value>; <fix>``: where the value came from, the rule it
    breaks, the value itself and how to fix it."""
    message = f"{where} must be {rule}: {show_value(value)}"
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
