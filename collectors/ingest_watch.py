"""Keep the ingest socket's path pointing at this agent.

The agent listens on a Unix socket path in a directory the pod's containers share. If
something deletes the file (a cleanup job, an operator, ``rm -rf /run/drainwatch/*``), the
agent still listens on the unlinked socket and connected processes still report, but every
process started afterwards finds no agent and counts its records as dropped. If something
puts another file there, the same happens, or worse, a stranger collects the datagrams.

``SocketWatch.check()`` (called about once a second) compares the path with the socket
the agent bound (device and inode):

- the path is gone: bind a new socket there (``deleted``);
- the path is a file, a link or a socket nobody accepts on: remove it and bind again
  (``replaced``);
- the path is a socket another process accepts on: leave it (two agents fighting over a
  path would take turns losing data), say so once in the log, and report it as ``taken``
  until it is gone.

Counts are exported as ``drainwatch_agent_ingest_socket_restored_total{reason}`` and the
taken state as ``drainwatch_agent_ingest_socket_taken``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

logger = logging.getLogger("drainwatch.agent")

DELETED: Final = "deleted"
REPLACED: Final = "replaced"
RESTORE_REASONS: Final = (DELETED, REPLACED)
CHECK_SECONDS: Final = 1.0


@dataclass(slots=True)
class SocketWatchStats:
    restored: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESTORE_REASONS, 0))
    taken: bool = False


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def someone_listens(path: str) -> bool:
    """Whether a process accepts connections on the Unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except BlockingIOError:
        return True  # its backlog is full: it is there, and busy
    except OSError as error:
        return error.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK)
    finally:
        probe.close()
    return True


class SocketWatch:
    """Watches one path; ``rebind()`` (given by the ingest) binds a fresh listener there and
    returns its identity. Not thread-safe: call ``check`` from the agent's event loop."""

    def __init__(self, path: str, bound: tuple[int, int], rebind: Callable[[], None]) -> None:
        self.path = path
        self.stats = SocketWatchStats()
        self._bound = bound
        self._rebind = rebind

    def bound(self, identity: tuple[int, int]) -> None:
        """The ingest now listens on the socket with this (device, inode)."""
        self._bound = identity

    def check(self) -> None:
        """Look at the path once and repair it if needed. Never raises."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            self._restore(DELETED, "was deleted")
            return
        except OSError as error:
            logger.warning("drainwatch agent: cannot check %s: %s", self.path, error)
            return
        if _identity(info) == self._bound:
            self._settle()
            return
        if stat.S_ISDIR(info.st_mode):
            self._taken(f"{self.path} is now a directory")
            return
        if stat.S_ISSOCK(info.st_mode) and someone_listens(self.path):
            self._taken(f"another process now listens on {self.path}")
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as error:
            self._taken(f"{self.path} was replaced and cannot be removed ({error.strerror})")
            return
        self._restore(REPLACED, "was replaced by something that does not serve it")

    def _restore(self, reason: str, what: str) -> None:
        try:
            self._rebind()
        except OSError as error:
            logger.error(
                "drainwatch agent: the ingest socket %s %s and cannot be bound again (%s); "
                "processes started from now on cannot report",
                self.path,
                what,
                error.strerror or error,
            )
            return
        self.stats.restored[reason] += 1
        self.stats.taken = False
        logger.warning(
            "drainwatch agent: the ingest socket %s %s; listening there again (processes "
            "that started in between counted their records as dropped)",
            self.path,
            what,
        )

    def _taken(self, what: str) -> None:
        if not self.stats.taken:
            logger.error(
                "drainwatch agent: %s: processes started from now on report there, not to "
                "this agent; stop the other process or give each agent its own --ingest path",
                what,
            )
        self.stats.taken = True

    def _settle(self) -> None:
        if self.stats.taken:
            logger.info("drainwatch agent: the ingest socket %s is this agent's again", self.path)
        self.stats.taken = False
