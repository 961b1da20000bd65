"""Reading one file for the linter, whatever is in it.

``read_python`` and ``read_text`` never raise for bad content: a file that is not a regular
file, bigger than the limit, binary, not valid in its declared encoding, or not parsable
(including nesting too deep for the parser) raises ``SourceError`` with a message saying
which, and where when known. Only ``max_bytes + 1`` bytes are ever read.
"""

from __future__ import annotations

import ast
import io
import os
import stat
import tokenize
from dataclasses import dataclass, field
from typing import Final

DEFAULT_MAX_BYTES: Final = 2_000_000


class SourceError(Exception):
    """The file cannot be linted; ``str()`` says why. ``line``/``column`` when known."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.line = max(1, line)
        self.column = max(1, column)


def read_bytes(path: str, max_bytes: int) -> bytes:
    try:
        info = os.stat(path)
    except OSError as error:
        raise SourceError(f"cannot read: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SourceError("not a regular file (a FIFO, socket or device is never read)")
    if info.st_size > max_bytes:
        raise SourceError(
            f"too large to lint: {info.st_size} bytes, the limit is {max_bytes} "
            "(raise it with --max-file-size)"
        )
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as error:
        raise SourceError(f"cannot read: {error.strerror or error}") from None
    if len(data) > max_bytes:  # it grew while we looked
        raise SourceError(f"too large to lint: over {max_bytes} bytes")
    if b"\0" in data:
        offset = data.index(b"\0")
        line = data.count(b"\n", 0, offset) + 1
        raise SourceError("binary file: it contains NUL bytes", line)
    return data


def _decode(data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise SourceError(
            f"not valid {encoding}: byte {data[error.start : error.start + 1]!r} at offset "
            f"{error.start}; save the file as UTF-8 or declare its encoding",
            line,
        ) from None
    except LookupError:
        raise SourceError(f"unknown encoding {encoding!r}") from None


@dataclass(frozen=True)
class SourceFile:
    path: str  # as shown in findings
    text: str
    tree: ast.Module
    lines: list[str] = field(repr=False)

    def column(self, node: ast.AST) -> int:
        """1-based column in characters of ``node`` (``ast`` counts UTF-8 bytes)."""
        line = getattr(node, "lineno", 1)
        offset = getattr(node, "col_offset", 0)
        if not 1 <= line <= len(self.lines):
            return offset + 1
        prefix = self.lines[line - 1].encode("utf-8")[:offset]
        return len(prefix.decode("utf-8", "replace")) + 1


def read_python(path: str, shown: str, max_bytes: int = DEFAULT_MAX_BYTES) -> SourceFile:
    data = read_bytes(path, max_bytes)
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError as error:
        _decode(data, "utf-8")  # bytes that are not UTF-8 are the likelier story: say so
        raise SourceError(f"bad encoding declaration: {error}") from None
    text = _decode(data, "utf-8" if encoding == "utf-8-sig" else encoding)
    text = text.removeprefix("\ufeff")
    try:
        tree = ast.parse(text, filename=shown)
    except SyntaxError as error:
        raise SourceError(
            f"cannot parse: {error.msg}", error.lineno or 1, error.offset or 1
        ) from None
    except RecursionError:
        raise SourceError("cannot parse: expressions nested too deeply") from None
    except (MemoryError, ValueError) as error:
        raise SourceError(f"cannot parse: {type(error).__name__} {error}".strip()) from None
    return SourceFile(shown, text, tree, text.splitlines())


def read_text(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """A text file (a manifest) as UTF-8."""
    data = read_bytes(path, max_bytes)
    return _decode(data, "utf-8").removeprefix("\ufeff")
