"""Instructions per HTTP request, counted by callgrind: a noise-free view of what a variant adds.

``python -m bench.http_instructions aiohttp|asgi [--requests 1000]`` runs ``bench.http_target``
under ``valgrind --tool=callgrind`` once per variant (no middleware, drainwatch's), sends 300
warm-up requests, zeroes the counters (``callgrind_control -z``), sends ``--requests`` more
to that variant's port, dumps the counters and prints the instructions per request of each
and what drainwatch adds. Timings on a shared machine wander by a percent or more from run
to run; instruction counts repeat within about 0.5 %, so they tell whether a change to the
per-request path helps before a timed run (``python -m bench --only 'HTTP aiohttp'``) says
by how much. By hand only: it needs valgrind (``apt-get install valgrind``) and takes about
a minute per variant.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .http_target import BODY, KINDS, ROUTE, VARIANTS

_REPO_ROOT = Path(__file__).resolve().parent.parent
_WARMUP_REQUESTS = 300
_MEASURED: tuple[str, ...] = ("baseline", "drainwatch")


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


def instructions_per_request(kind: str, variant: str, requests: int) -> float:
    """The instructions ``bench.http_target`` runs per request to ``variant``'s port."""
    with tempfile.TemporaryDirectory() as directory:
        dump = Path(directory) / "callgrind.out"
        server = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={dump}",
                sys.executable,
                "-m",
                "bench.http_target",
                kind,
            ],
            cwd=_REPO_ROOT,
            # Fixed string hashes: dict and type-cache layouts repeat from run to run.
            env={**os.environ, "PYTHONHASHSEED": "0"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            if server.stdout is None or server.stdin is None:
                raise RuntimeError("the server's pipes are missing")  # pragma: no cover
            fields = server.stdout.readline().split()
            if fields[:1] != ["ready"]:
                raise RuntimeError(f"the {kind} server did not start: {fields!r}")
            port = int(fields[1 + VARIANTS.index(variant)])
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _send(sock, 0, _WARMUP_REQUESTS)
                pid = str(server.pid)
                subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
                _send(sock, _WARMUP_REQUESTS, requests)
                subprocess.run(
                    ["callgrind_control", "-d", "measured", pid], check=True, capture_output=True
                )
            server.stdin.close()
            server.wait(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        dumps = sorted(Path(directory).glob("callgrind.out.*"))
        if not dumps:
            raise RuntimeError("callgrind wrote no dump of the measured requests")
        summary = re.search(r"^summary: (\d+)$", dumps[0].read_text(), re.MULTILINE)
        if summary is None:
            raise RuntimeError(f"no summary line in {dumps[0].name}")
        return int(summary.group(1)) / requests


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_instructions")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--requests", type=int, default=1000, help="measured requests (>= 1)")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error(f"--requests must be at least 1, got {args.requests}")
    counts = {v: instructions_per_request(args.kind, v, args.requests) for v in _MEASURED}
    for variant, count in counts.items():
        print(f"{variant:<12} {count:>10,.0f} instructions/request")
    added = counts["drainwatch"] - counts["baseline"]
    print(f"{'added':<12} {added:>+10,.0f} ({added / counts['baseline']:+.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
