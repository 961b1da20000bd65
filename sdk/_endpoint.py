"""Parse the ingest endpoint URL shared by the SDK (sender) and the agent (receiver).

Two transports exist:

* ``unix:///path/to/ingest.sock``: a Unix ``SOCK_SEQPACKET`` socket. Messages keep their
  boundaries like datagrams, but the kernel queues them by bytes rather than by count
  (plain Unix datagram sockets allow only ``net.unix.max_dgram_qlen`` = 10 queued
  messages by default, so a burst of closes would be dropped), and messages already
  sent survive the sender being SIGKILLed.
* ``udp://127.0.0.1:PORT``: UDP on a loopback address only; bursts larger than the
  agent's receive buffer are lost (and counted by the SDK when the kernel says so).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

DEFAULT_SOCKET_PATH = "/tmp/drainwatch/ingest.sock"  # noqa: S108 - the pod-local default
DEFAULT_ENDPOINT = f"unix://{DEFAULT_SOCKET_PATH}"

# Unix socket paths are limited by sockaddr_un.sun_path (108 bytes on Linux, with NUL).
_MAX_UNIX_PATH = 107


class EndpointError(ValueError):
    """An ingest endpoint URL that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Endpoint:
    scheme: Literal["unix", "udp"]
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"udp://{host}:{self.port}"


DEFAULT = Endpoint("unix", path=DEFAULT_SOCKET_PATH)


def parse_endpoint(url: str, *, setting: str = "endpoint") -> Endpoint:
    """Parse ``unix:///abs/path`` or ``udp://LOOPBACK:PORT``; raise ``EndpointError``.

    UDP must name a loopback address: datagrams carry stack locations and channel names
    and have no authentication, so they must never cross the pod's network.
    """
    # A bare setting name is quoted; a described source ("flag --ingest", "config file
    # x.yaml:3: ...") is shown as given.
    setting = setting if " " in setting or '"' in setting else f'"{setting}"'
    if not isinstance(url, str) or not url.strip():
        raise EndpointError(
            f"{setting} must be a URL like {DEFAULT_ENDPOINT} or udp://127.0.0.1:9470: {url!r}"
        )
    try:
        parts = urlsplit(url.strip())
    except ValueError as error:  # e.g. an unbalanced "[" ("Invalid IPv6 URL")
        raise EndpointError(f"{setting} must be a well-formed URL ({error}): {url!r}") from None
    if parts.scheme == "unix":
        path = parts.netloc + parts.path if parts.netloc else parts.path
        if not path.startswith("/"):
            raise EndpointError(
                f"{setting} must be an absolute Unix socket path (unix:///run/x.sock): {url!r}"
            )
        if len(path.encode()) > _MAX_UNIX_PATH or "\x00" in path:
            raise EndpointError(
                f"{setting} socket path must be at most {_MAX_UNIX_PATH} bytes without NUL: "
                f"{url!r}; choose a shorter directory"
            )
        return Endpoint("unix", path=path)
    if parts.scheme == "udp":
        try:
            port = parts.port
        except ValueError:
            port = None
        host = parts.hostname or ""
        if not port:
            raise EndpointError(f"{setting} must give a UDP port between 1 and 65535: {url!r}")
        if host == "localhost":
            host = "127.0.0.1"
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise EndpointError(
                f"{setting} must use a literal loopback address (127.0.0.1 or ::1): {url!r}"
            ) from None
        if not address.is_loopback:
            raise EndpointError(
                f"{setting} must be a loopback address; {host} is not. drainwatch datagrams "
                f"are unauthenticated and must stay inside the pod: {url!r}"
            )
        return Endpoint("udp", host=str(address), port=port)
    raise EndpointError(
        f"{setting} must start with unix:// or udp://: {url!r}; for example {DEFAULT_ENDPOINT}"
    )
