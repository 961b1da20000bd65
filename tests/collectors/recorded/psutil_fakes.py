"""Fakes of psutil that replay the recorded JSON (``record.py`` writes it from real processes).

A ``RecordedProcess`` answers every call the collectors make with the value, or raises the
psutil exception, that real psutil gave for that process; ``FakeHost`` is a process table
(``pids()`` and ``process(pid)``) tests can change between calls: a process exits, its PID
is reused, a worker is forked.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psutil
from drainwatch.collectors.sock_diag import DiagSocket, parse_sock_diag

HERE = Path(__file__).parent
_ERRORS: dict[str, type[psutil.Error]] = {
    "NoSuchProcess": psutil.NoSuchProcess,
    "ZombieProcess": psutil.ZombieProcess,
    "AccessDenied": psutil.AccessDenied,
}


def load(name: str) -> dict[str, Any]:
    """The recorded document ``<name>.json``."""
    document: dict[str, Any] = json.loads((HERE / f"{name}.json").read_text())
    return document


class Address(NamedTuple):
    ip: str
    port: int


class Conn(NamedTuple):
    fd: int
    family: socket.AddressFamily
    type: socket.SocketKind
    laddr: Address | tuple[()]
    raddr: Address | tuple[()]
    status: str


class CpuTimes(NamedTuple):
    user: float
    system: float


class Memory(NamedTuple):
    rss: int


def _address(raw: list[Any]) -> Address | tuple[()]:
    return Address(str(raw[0]), int(raw[1])) if raw else ()


def _connection(raw: Mapping[str, Any]) -> Conn:
    return Conn(
        raw["fd"],
        socket.AddressFamily(raw["family"]),
        socket.SocketKind(raw["type"]),
        _address(raw["laddr"]),
        _address(raw["raddr"]),
        raw["status"],
    )


class RecordedProcess:
    """One recorded ``psutil.Process``; ``overrides`` replace recorded call results (a
    value, or an exception class to raise); ``vanish_at`` makes that call and every later
    one raise ``NoSuchProcess``, as for a process that exits in the middle of a sample."""

    def __init__(
        self,
        snapshot: Mapping[str, Any],
        *,
        pid: int | None = None,
        vanish_at: str | None = None,
        **overrides: object,
    ) -> None:
        self._pid = int(snapshot["pid"]) if pid is None else pid
        self._calls: dict[str, Any] = dict(snapshot.get("calls", {}))
        for name, value in overrides.items():
            self._calls[name] = {"value": value}
        self._vanish_at = vanish_at
        self._vanished = False
        self.calls: list[str] = []

    @property
    def pid(self) -> int:
        return self._pid

    def oneshot(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def _call(self, name: str) -> Any:
        self.calls.append(name)
        if name == self._vanish_at:
            self._vanished = True
        if self._vanished:
            raise psutil.NoSuchProcess(self._pid)
        entry = self._calls[name]
        value = entry.get("value")
        if isinstance(value, type) and issubclass(value, psutil.Error):
            raise value(self._pid) if value is not psutil.AccessDenied else value()
        if "raises" in entry:
            error = _ERRORS[entry["raises"]]
            raise error(self._pid) if error is not psutil.AccessDenied else error()
        return value

    def create_time(self) -> float:
        return float(self._call("create_time"))

    def ppid(self) -> int:
        return int(self._call("ppid"))

    def cmdline(self) -> list[str]:
        return list(self._call("cmdline"))

    def status(self) -> str:
        return str(self._call("status"))

    def cpu_times(self) -> CpuTimes:
        raw = self._call("cpu_times")
        return CpuTimes(raw["user"], raw["system"])

    def memory_info(self) -> Memory:
        return Memory(self._call("memory_info")["rss"])

    def num_threads(self) -> int:
        return int(self._call("num_threads"))

    def num_fds(self) -> int:
        return int(self._call("num_fds"))

    def net_connections(self, kind: str = "inet") -> list[Conn]:
        return [_connection(raw) for raw in self._call("net_connections")]


@dataclass
class FakeHost:
    """A process table: ``pids()`` and ``process(pid)`` behave as psutil's do."""

    table: dict[int, RecordedProcess] = field(default_factory=dict)
    listed: int = 0

    def add(self, *processes: RecordedProcess) -> None:
        for process in processes:
            self.table[process.pid] = process

    def remove(self, *pids: int) -> None:
        for pid in pids:
            del self.table[pid]

    def pids(self) -> list[int]:
        self.listed += 1
        return sorted(self.table)

    def process(self, pid: int) -> RecordedProcess:
        try:
            return self.table[pid]
        except KeyError:
            raise psutil.NoSuchProcess(pid) from None


@dataclass
class FakeClock:
    now: float = 1_800_000_000.0
    step: float = 0.0  # added after every reading

    def __call__(self) -> float:
        value = self.now
        self.now += self.step
        return value

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordedSockDiag:
    """Replays the recorded netlink sock_diag replies (all TCP states) through the real
    parser; a listeners-only dump keeps the LISTEN entries, as the kernel would."""

    def __init__(self, recorded: Mapping[str, Any]) -> None:
        self._replies: dict[int, list[bytes]] = {
            socket.AF_INET: [bytes.fromhex(part) for part in recorded["ipv4"]],
            socket.AF_INET6: [bytes.fromhex(part) for part in recorded["ipv6"]],
        }
        self.calls = 0

    def __call__(self, family: int, connections: bool, wanted: frozenset[int]) -> list[DiagSocket]:
        self.calls += 1
        found: list[DiagSocket] = []
        for reply in self._replies[family]:
            part, done = parse_sock_diag(reply, wanted)
            found += part
            if done:
                break
        return [item for item in found if connections or item.state == psutil.CONN_LISTEN]


class RecordedFds:
    """The recorded socket fds of the process (``/proc/PID/fd``), which tests can close."""

    def __init__(self, recorded: Mapping[str, Any]) -> None:
        self.fds = {int(fd): int(inode) for fd, inode in recorded["fds"].items()}
        self.scans = 0
        self.rechecks = 0

    def sockets(self, pid: int) -> dict[int, int]:
        self.scans += 1
        return dict(self.fds)

    def socket_at(self, pid: int, fd: int) -> int | None:
        self.rechecks += 1
        return self.fds.get(fd)


def inodes_of(recorded: Mapping[str, Any]) -> frozenset[int]:
    return frozenset(int(inode) for inode in recorded["fds"].values())


def processes_of(document: Mapping[str, Any]) -> Iterable[RecordedProcess]:
    for snapshot in document["processes"]:
        yield RecordedProcess(snapshot)
