"""Instructions per HTTP request, counted by callgrind: a noise-free view of what a variant adds.

``python -m bench.http_instructions aiohttp|asgi [--requests 1000]`` runs ``bench.http_target``
under ``valgrind --tool=callgrind`` once per variant (no middleware, drainwatch's), sends 300
warm-up requests over one kept-alive connection, then ``--requests`` more, and prints the
instructions per request of each and what drainwatch adds (see ``bench.callgrind``). By hand
only: it needs valgrind and takes about a minute per variant.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .callgrind import Send, instructions_per_call, tool_main
from .http_target import BODY, KINDS, ROUTE, VARIANTS


def _send(sock: socket.socket, first: int, count: int) -> None:
    for number in range(first, first + count):
        path = ROUTE.replace("{item_id}", str(number))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        received = b""
        while not received.endswith(BODY):
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("the server closed the connection")
            received += chunk


@contextmanager
def _connection(port: int) -> Iterator[Send]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        yield lambda first, count: _send(sock, first, count)


def instructions_per_request(kind: str, variant: str, requests: int) -> float:
    """The instructions ``bench.http_target`` runs per request to ``variant``'s port."""
    return instructions_per_call(
        ["bench.http_target", kind], VARIANTS.index(variant), _connection, requests
    )


def main(argv: Sequence[str]) -> int:
    return tool_main(
        argv,
        prog="python -m bench.http_instructions",
        kinds=KINDS,
        unit="request",
        per_call=instructions_per_request,
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
