"""How the target is chosen: the selector, and its settings parsed from flags or YAML.

``--target-pid``, ``--target-cmdline`` and the SDK's reports each name candidate processes;
``TargetSelector`` says which of them to use and ``TargetDiscovery``
(:mod:`drainwatch.collectors.targets`) finds the processes it selects. The parsers raise
``ValueError`` naming the flag or YAML path, the constraint and the value, so the agent can
show it as it is.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Final

_MAX_PID: Final = 4_194_304  # the kernel's upper bound for pid_max


@dataclass(frozen=True, slots=True)
class TargetSelector:
    """How the target is chosen. Several ways may be combined; their matches are united."""

    pid: int | None = None
    cmdline: re.Pattern[str] | None = None
    from_sdk: bool = True
    include_children: bool = True

    @property
    def configured(self) -> bool:
        return self.pid is not None or self.cmdline is not None or self.from_sdk


def parse_target_pid(value: object, where: str) -> int:
    """``value`` as a PID; raises ``ValueError`` naming ``where`` (a flag or YAML path)."""
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.isdigit():
        text = int(text)
    if isinstance(text, int) and not isinstance(text, bool) and 0 < text <= _MAX_PID:
        return text
    raise ValueError(
        f"{where} must be a process id from 1 to {_MAX_PID}: {value!r}; "
        "give the PID of the service's main process as the agent sees it "
        "(with shareProcessNamespace: true), or use --target-cmdline instead"
    )


def parse_target_cmdline(value: object, where: str) -> re.Pattern[str]:
    """``value`` compiled as a regular expression searched in the joined command line."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{where} must be a non-empty regular expression: {value!r}; "
            "example: 'gunicorn .*orders:app'"
        )
    try:
        with warnings.catch_warnings():
            # "possible nested set" FutureWarnings are about a future Python's reading of
            # the pattern, not an error in it; the agent's log is no place for them.
            warnings.simplefilter("ignore", FutureWarning)
            return re.compile(value)
    except re.error as error:
        raise ValueError(
            f"{where} must be a valid regular expression: {value!r} ({error}); "
            "quote it in the shell and escape special characters such as '.' or '('"
        ) from error
