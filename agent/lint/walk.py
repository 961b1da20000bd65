"""Which files ``drainwatch lint PATH...`` reads.

A file given by name is always linted: as a manifest when it ends in ``.yaml``/``.yml``,
else as Python. A directory is walked for ``*.py``, ``*.yaml`` and ``*.yml`` regular files,
skipping hidden directories, ``__pycache__``, ``node_modules`` and virtualenvs (a directory
with ``pyvenv.cfg``). Symlinks are followed, but each directory is entered once (by device
and inode), so a symlink loop ends the walk of that branch instead of the program; broken
links, FIFOs, sockets and devices are passed over. A path that does not exist, or that a
loop makes unreachable, is reported as a problem.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

PYTHON: Final = "python"
MANIFEST: Final = "manifest"
_SKIPPED_DIRS: Final = frozenset({"__pycache__", "node_modules", "site-packages"})
_MANIFEST_SUFFIXES: Final = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class Target:
    path: str  # to open
    shown: str  # in findings: relative to the working directory, with '/'
    kind: str  # python | manifest


@dataclass(frozen=True, slots=True)
class WalkProblem:
    shown: str
    message: str


def shown_path(path: str) -> str:
    absolute = os.path.abspath(path)
    try:
        relative = os.path.relpath(absolute)
    except ValueError:
        relative = absolute
    chosen = absolute if relative.startswith("..") else relative
    return chosen.replace(os.sep, "/")


def _kind(name: str) -> str | None:
    if name.endswith(_MANIFEST_SUFFIXES):
        return MANIFEST
    if name.endswith(".py"):
        return PYTHON
    return None


def _skip_dir(name: str, path: str) -> bool:
    if name.startswith(".") or name in _SKIPPED_DIRS:
        return True
    return os.path.exists(os.path.join(path, "pyvenv.cfg"))


def _walk(root: str, seen: set[tuple[int, int]], found: list[Target]) -> None:
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                listed = sorted(entries, key=lambda entry: entry.name)
        except OSError:
            continue  # vanished, unreadable, or a loop the kernel refused (ELOOP)
        subdirectories = []
        for entry in listed:
            try:
                info = os.stat(entry.path)  # follows symlinks
            except OSError:
                continue  # a broken link or a self-referencing one
            if stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if key in seen or _skip_dir(entry.name, entry.path):
                    continue
                seen.add(key)
                subdirectories.append(entry.path)
            elif stat.S_ISREG(info.st_mode) and (kind := _kind(entry.name)) is not None:
                found.append(Target(entry.path, shown_path(entry.path), kind))
        stack.extend(reversed(subdirectories))


def collect(paths: Sequence[str]) -> tuple[list[Target], list[WalkProblem]]:
    """The files to lint, in a stable order, and the paths that could not be used."""
    found: list[Target] = []
    problems: list[WalkProblem] = []
    seen: set[tuple[int, int]] = set()
    for path in paths:
        try:
            info = os.stat(path)
        except OSError as error:
            problems.append(
                WalkProblem(shown_path(path), f"cannot lint: {error.strerror or error}")
            )
            continue
        if stat.S_ISDIR(info.st_mode):
            key = (info.st_dev, info.st_ino)
            if key not in seen:
                seen.add(key)
                _walk(path, seen, found)
        else:
            kind = MANIFEST if path.endswith(_MANIFEST_SUFFIXES) else PYTHON
            found.append(Target(path, shown_path(path), kind))
    unique: dict[str, Target] = {}
    for target in found:
        unique.setdefault(os.path.realpath(target.path), target)
    return list(unique.values()), problems
