"""The agent's state directory: drain reports that outlive the target and the agent.

One JSON file per shutdown, ``report-<UTC time>-<counter>.json``: names are built from
the agent's own clock (the report's ``updated`` time) and a counter, never from anything
a target sent, so they sort by time and cannot point outside the directory. A newer
report of the same (service, instance) replaces the older file; beyond ``keep`` files the
oldest are deleted.

Writes are atomic: a temporary file in the same directory, fsync, ``os.replace``, fsync of
the directory. A crash mid-write leaves the previous files intact and a temporary file that
readers ignore and the next ``StateDir`` removes. On reading, a corrupt, truncated,
oversized or foreign file is moved to ``quarantine/`` (counted, logged once) and the rest
still load. A full disk or a read-only volume is counted and logged with the fix; nothing
here raises after ``check_state_dir`` accepted the directory.

All methods do blocking file I/O: call them from a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import stat
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger("drainwatch.agent")

DEFAULT_KEEP: Final = 20
MAX_REPORT_BYTES: Final = 8 << 20
FORMAT: Final = 1
QUARANTINE: Final = "quarantine"
_NAME = re.compile(r"report-(\d{8}T\d{6}\.\d{6}Z)-(\d{6,12})\.json")
_TEMP_PREFIX = ".tmp-report-"
_CHUNK = 1 << 20
_DIR_MODE = 0o750
_FILE_MODE = 0o640
_LATEST_STAMP = 253_402_300_799.0  # 9999-12-31T23:59:59Z: names stay fixed-width
_WRITE_FIXES: Final = {
    "no_space": "free space on the volume or give it more (an emptyDir sizeLimit, a bigger PVC)",
    "read_only": "mount the state directory read-write",
    "permission": "let the agent's user write there (runAsUser, fsGroup or the directory mode)",
    "io_error": "check the volume behind the state directory",
}


class StateDirError(Exception):
    """The state directory cannot be used. ``str()`` names the setting, the rule, the
    value and the fix."""


def check_state_dir(path: str | os.PathLike[str], where: str = "--state-dir") -> Path:
    """The directory as a ``Path``, created with mode 0750 when missing, proven writable by
    creating and deleting a file. Raises ``StateDirError`` (for config: exit code 2)."""
    text = os.fspath(path)
    if not text or "\x00" in text or not os.path.isabs(text):
        raise StateDirError(
            f'{where} must be an absolute directory path: "{text!s}"; for example '
            "/var/lib/drainwatch (an emptyDir or a volume mounted into the sidecar)"
        )
    directory = Path(text)
    if directory.exists() and not directory.is_dir():
        raise StateDirError(
            f'{where} must be a directory: "{directory}" is a file; point it at a directory '
            "(an emptyDir or a volume mount)"
        )
    if not directory.exists():
        try:
            directory.mkdir(mode=_DIR_MODE, parents=True)
            os.chmod(directory, _DIR_MODE)  # mkdir's mode is cut by the umask
        except OSError as error:
            raise StateDirError(
                f'{where} must be a directory the agent can create: "{directory}": '
                f"{error.strerror or error}; create it or mount a volume there"
            ) from None
    try:
        fd, check = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}check-", dir=directory)
        os.close(fd)
        os.unlink(check)
    except OSError as error:
        raise StateDirError(
            f'{where} must be a writable directory: "{directory}": '
            f"{error.strerror or error}; mount it read-write and let the agent's user write "
            "there (runAsUser, fsGroup or the directory mode)"
        ) from None
    return directory


@dataclass(frozen=True, slots=True)
class StateDirStats:
    saved: int
    write_errors: dict[
        str, int
    ]  # no_space | read_only | permission | io_error | too_large | unserializable
    quarantined: dict[str, int]  # corrupt | oversized | unknown_format | not_a_file
    pruned: int
    last_error: str | None


def _reason(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no_space"
    if error.errno == errno.EROFS:
        return "read_only"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission"
    return "io_error"


def _sequence(name: str) -> int:
    match = _NAME.fullmatch(name)
    return int(match[2]) if match else 0


def _key(report: Mapping[str, Any]) -> tuple[str, str] | None:
    service, instance = report.get("service"), report.get("instance")
    if isinstance(service, str) and isinstance(instance, str):
        return service, instance
    return None


def _parse(data: bytes) -> dict[str, Any] | tuple[str, str]:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:
        return "corrupt", f"not JSON ({error})"
    if (
        not isinstance(document, dict)
        or document.get("format") != FORMAT
        or not isinstance(document.get("report"), dict)
    ):
        return "unknown_format", f"not a format {FORMAT} drainwatch report"
    report: dict[str, Any] = document["report"]
    return report


class StateDir:
    """Drain reports on disk. Thread-safe; blocking (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        keep: int = DEFAULT_KEEP,
        max_bytes: int = MAX_REPORT_BYTES,
        clock: Callable[[], float] = time.time,
        where: str = "--state-dir",
    ) -> None:
        if keep < 1:
            raise StateDirError(f"state directory history must keep at least 1 report: {keep}")
        self.path = check_state_dir(path, where)
        self.keep = keep
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._index: dict[tuple[str, str], str] = {}
        self._saved = self._pruned = 0
        self._write_errors: Counter[str] = Counter()
        self._quarantined: Counter[str] = Counter()
        self._logged_reasons: set[str] = set()  # write failures logged since the last success
        self._logged: set[str] = set()  # files (and listings) already logged about
        self._unmovable: set[str] = set()  # bad files quarantine could not move
        self._last_error: str | None = None
        self._counter = max((_sequence(name) for name in self._report_names()), default=0)
        self._remove_stale_temporaries()

    # -- writing -------------------------------------------------------------------------------

    def save_report(self, report: Mapping[str, Any]) -> Path | None:
        """Write ``report`` (a ``DrainReport.to_json()``) atomically; the file, or None when
        it could not be written (counted and logged with the fix; never raises)."""
        with self._lock:
            now = self._clock()
            updated = report.get("updated")
            moment = (
                float(updated)
                if isinstance(updated, int | float)
                and not isinstance(updated, bool)
                and math.isfinite(updated)
                and 0 <= updated < _LATEST_STAMP
                else now
            )
            stamp = datetime.fromtimestamp(moment, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            self._counter += 1
            name = f"report-{stamp}-{self._counter:06d}.json"
            try:
                data = json.dumps({"format": FORMAT, "saved_at": now, "report": report}).encode()
            except (TypeError, ValueError, RecursionError) as error:
                self._write_failed("unserializable", f"the report is not JSON: {error}")
                return None
            if len(data) > self.max_bytes:
                self._write_failed(
                    "too_large",
                    f"the report is {len(data)} bytes, more than the {self.max_bytes} allowed",
                )
                return None
            temporary = self.path / f"{_TEMP_PREFIX}{os.getpid()}-{self._counter}.json"
            final = self.path / name
            try:
                self._write_atomically(temporary, final, data)
            except OSError as error:
                self._remove(temporary)
                reason = _reason(error)
                self._write_failed(reason, f"{error.strerror or error}; {_WRITE_FIXES[reason]}")
                return None
            self._saved += 1
            if self._last_error is not None:
                logger.info("drainwatch agent: drain reports are saved in %s again", self.path)
                self._last_error = None
                self._logged_reasons.clear()
            key = _key(report)
            if key is not None:
                older = self._index.get(key)
                self._index[key] = name
                if older is not None and older != name:
                    self._remove(self.path / older)
            self._prune()
            return final

    def _write_atomically(self, temporary: Path, final: Path, data: bytes) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(temporary, flags, _FILE_MODE)
        try:
            os.fchmod(fd, _FILE_MODE)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[:_CHUNK]) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, final)
        directory = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        except OSError as error:
            if error.errno != errno.EINVAL:  # some filesystems cannot sync a directory
                raise
        finally:
            os.close(directory)

    def _write_failed(self, reason: str, why: str) -> None:
        self._write_errors[reason] += 1
        message = (
            f"drainwatch agent: cannot save a drain report in {self.path}: {why}; the agent "
            "keeps running and still serves the report from memory"
        )
        self._last_error = message
        if reason in self._logged_reasons:
            logger.debug(message)
        else:
            self._logged_reasons.add(reason)
            logger.warning(message)

    # -- reading -------------------------------------------------------------------------------

    def load_reports(
        self, validate: Callable[[dict[str, Any]], object] | None = None
    ) -> list[dict[str, Any]]:
        """The kept reports, newest first (at most ``keep``). Bad files are quarantined,
        unknown files ignored; never raises. ``validate`` raises ``ValueError`` for a
        report that parses as JSON but cannot be used: that file is quarantined too."""
        with self._lock:
            reports: list[dict[str, Any]] = []
            self._index.clear()
            for name in self._report_names():
                report = self._read(name)
                if report is None:
                    continue
                if validate is not None:
                    try:
                        validate(report)
                    except ValueError as error:
                        self._quarantine(name, "invalid", f"not a drain report: {error}")
                        continue
                key = _key(report)
                if key is not None and key in self._index:
                    self._remove(self.path / name)  # an older copy of a report kept newer
                    continue
                if key is not None:
                    self._index[key] = name
                reports.append(report)
            self._prune()
            return reports[: self.keep]

    def _read(self, name: str) -> dict[str, Any] | None:
        data = self._read_bytes(name)
        found = _parse(data) if isinstance(data, bytes) else data
        if found is None or isinstance(found, dict):
            return found
        self._quarantine(name, *found)
        return None

    def _read_bytes(self, name: str) -> bytes | tuple[str, str] | None:
        """The file's bytes, or (reason, why) for quarantine, or None to skip it."""
        path = self.path / name
        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                return "not_a_file", "not a regular file"
            if info.st_size > self.max_bytes:
                return "oversized", f"{info.st_size} bytes, more than {self.max_bytes}"
            chunks: list[bytes] = []
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                while (size := sum(map(len, chunks))) <= self.max_bytes:
                    chunk = os.read(fd, min(_CHUNK, self.max_bytes + 1 - size))
                    if not chunk:
                        break
                    chunks.append(chunk)
            finally:
                os.close(fd)
        except FileNotFoundError:
            return None
        except OSError as error:
            self._log_once(name, f"drainwatch agent: cannot read {path}: {error}; skipped")
            return None
        if size > self.max_bytes:
            return "oversized", f"more than {self.max_bytes} bytes"
        return b"".join(chunks)

    def _quarantine(self, name: str, reason: str, why: str) -> None:
        if name in self._unmovable:
            return  # counted and logged when it could not be moved
        self._quarantined[reason] += 1
        target = self.path / QUARANTINE
        try:
            target.mkdir(mode=_DIR_MODE, exist_ok=True)
            os.replace(self.path / name, target / name)
            where = f"moved to {target}"
        except OSError as error:
            self._unmovable.add(name)
            where = f"could not move it to {target} ({error.strerror or error})"
        self._log_once(
            name,
            f"drainwatch agent: {self.path / name} is {why}: {where}; the other reports "
            "still load (delete the file once looked at)",
        )
        self._prune(target)
        return

    # -- housekeeping --------------------------------------------------------------------------

    def _report_names(self, directory: Path | None = None) -> list[str]:
        """Report file names, newest first; anything else is ignored."""
        try:
            names = os.listdir(directory or self.path)
        except OSError as error:
            self._log_once("listdir", f"drainwatch agent: cannot list {self.path}: {error}")
            return []
        matched = [(m[1], int(m[2]), m[0]) for n in names if (m := _NAME.fullmatch(n))]
        return [name for *_, name in sorted(matched, reverse=True)]

    def _prune(self, directory: Path | None = None) -> None:
        for name in self._report_names(directory)[self.keep :]:
            if self._remove((directory or self.path) / name) and directory is None:
                self._pruned += 1
                for key in [key for key, kept in self._index.items() if kept == name]:
                    del self._index[key]

    def _remove_stale_temporaries(self) -> None:
        try:
            names = [name for name in os.listdir(self.path) if name.startswith(_TEMP_PREFIX)]
        except OSError:
            return
        for name in names:
            if self._remove(self.path / name):
                logger.info("drainwatch agent: removed %s, left by an interrupted write", name)

    def _remove(self, path: Path) -> bool:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as error:
            self._log_once(path.name, f"drainwatch agent: cannot delete {path}: {error}")
            return False
        return True

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            logger.warning(message)

    def stats(self) -> StateDirStats:
        with self._lock:
            return StateDirStats(
                self._saved,
                dict(self._write_errors),
                dict(self._quarantined),
                self._pruned,
                self._last_error,
            )


class StateDirCollector(Collector):
    """``drainwatch_state_dir_*`` counters for the agent's ``service``; never raises."""

    def __init__(self, state_dir: StateDir, service: str | Callable[[], str]) -> None:
        self._state_dir = state_dir
        self._service = service

    def collect(self) -> Iterator[Metric]:
        service = self._service() if callable(self._service) else self._service
        stats = self._state_dir.stats()
        saved = CounterMetricFamily(
            "drainwatch_state_dir_reports_saved",
            "Drain reports written to the state directory.",
            labels=["service"],
        )
        saved.add_metric([service], stats.saved)
        errors = CounterMetricFamily(
            "drainwatch_state_dir_write_errors",
            "Drain reports that could not be written, by reason (no_space, read_only, "
            "permission, io_error, too_large, unserializable).",
            labels=["service", "reason"],
        )
        for reason in (*_WRITE_FIXES, "too_large", "unserializable"):
            errors.add_metric([service, reason], stats.write_errors.get(reason, 0))
        quarantined = CounterMetricFamily(
            "drainwatch_state_dir_quarantined",
            "Files moved to quarantine/ on reading, by reason (corrupt, oversized, "
            "unknown_format, not_a_file, invalid).",
            labels=["service", "reason"],
        )
        for reason in ("corrupt", "oversized", "unknown_format", "not_a_file", "invalid"):
            quarantined.add_metric([service, reason], stats.quarantined.get(reason, 0))
        yield from (saved, errors, quarantined)
