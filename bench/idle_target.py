"""The watched service of the idle figure: ``python -m bench.idle_target``.

An idle service without the SDK: a few threads that wait, and an HTTP server on a
loopback port answering ``GET /healthz`` with 200 (what the agent's probe asks). Prints
``ready <port>`` once it listens; stops when stdin closes.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_IDLE_THREADS = 4


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/healthz" else 404
        body = b"ok\n" if status == 200 else b"not found\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def main() -> int:
    stop = threading.Event()
    for index in range(_IDLE_THREADS):
        threading.Thread(target=stop.wait, name=f"idle-{index}", daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    print("ready", server.server_address[1], flush=True)
    sys.stdin.read()
    stop.set()
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
