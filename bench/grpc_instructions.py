"""Instructions per unary gRPC call, counted by callgrind: what drainwatch adds to a server.

``python -m bench.grpc_instructions sync|aio [--calls 1000]`` runs ``bench.grpc_target``
under ``valgrind --tool=callgrind`` once per variant (no interceptor, drainwatch's
``server()``/``aio_server()``), makes 300 warm-up calls over one channel, then ``--calls``
more, and prints the instructions per call of each and what drainwatch adds (see
``bench.callgrind``); every thread of the server process counts. By hand only: it needs
valgrind and takes about a minute per variant.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc

from .callgrind import Send, instructions_per_call, tool_main
from .grpc_target import FULL_METHOD, KINDS, VARIANTS

_PAYLOAD = b"ping"


@contextmanager
def _sync_channel(port: int) -> Iterator[Send]:
    # The client is sync for both kinds: only the server's instructions are counted.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.unary_unary(FULL_METHOD, _registered_method=True)

        def send(first: int, count: int) -> None:
            for _ in range(count):
                if stub(_PAYLOAD) != _PAYLOAD:
                    raise RuntimeError(f"the server on port {port} did not echo the call")

        yield send


def instructions_per_rpc(kind: str, variant: str, calls: int) -> float:
    """The instructions ``bench.grpc_target`` runs per call to ``variant``'s server."""
    return instructions_per_call(
        ["bench.grpc_target", kind], VARIANTS.index(variant), _sync_channel, calls
    )


def main(argv: Sequence[str]) -> int:
    return tool_main(
        argv,
        prog="python -m bench.grpc_instructions",
        kinds=KINDS,
        unit="call",
        per_call=instructions_per_rpc,
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
