"""An inventory service on the standard library's threaded HTTP server: no SDK, no framework.

It knows nothing about drainwatch; the agent watches it from outside (``--target-pid``):
its ports, its threads' stacks, its health endpoint.

- the business port answers ``GET /stock/<item>`` (``?ms=`` adds handling time);
- the health port answers ``GET /healthz`` (liveness) and ``GET /readyz`` (readiness);
- a restock worker thread waits on a ``queue.Queue`` for jobs that never come (so it is
  the kind of stuck thread a stack sample should find).

On SIGTERM, ``--shutdown broken`` closes the health port first, then keeps serving business
for ``--linger`` seconds before closing it: the kubelet's liveness probe fails while traffic
is still served. ``--shutdown good`` turns readiness off, waits ``--linger`` seconds for the
endpoints to drop the pod, closes the business port, and closes health last.
"""

from __future__ import annotations

import argparse
import http.server
import queue
import signal
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None

    def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class BusinessHandler(_Quiet):
    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if not parts.path.startswith("/stock/"):
            self._answer(404, "not found\n")
            return
        delay = int(parse_qs(parts.query).get("ms", ["0"])[0]) / 1000
        time.sleep(min(delay, 30.0))
        self._answer(200, f"{parts.path.removeprefix('/stock/')}: 7 in stock\n")


class HealthHandler(_Quiet):
    ready = True

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(200, "ok\n")
        elif self.path == "/readyz":
            self._answer(200 if HealthHandler.ready else 503, "ready\n")
        else:
            self._answer(404, "not found\n")


def serve(port: int, handler: type[_Quiet]) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True).start()
    return server


def restock_worker(jobs: queue.Queue[str]) -> None:
    while True:
        job = jobs.get()  # nobody ever puts a job: this thread waits here for good
        print(f"restocking {job}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080, help="business port")
    parser.add_argument("--health-port", type=int, default=8081)
    parser.add_argument("--shutdown", choices=("good", "broken"), default="good")
    parser.add_argument("--linger", type=float, default=1.0, help="seconds between closes")
    args = parser.parse_args()

    business = serve(args.port, BusinessHandler)
    health = serve(args.health_port, HealthHandler)
    jobs: queue.Queue[str] = queue.Queue()
    threading.Thread(target=restock_worker, args=(jobs,), name="restock", daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"inventory: business :{args.port}, health :{args.health_port}", flush=True)
    stop.wait()
    if args.shutdown == "broken":
        health.shutdown()
        health.server_close()
        time.sleep(args.linger)
        business.shutdown()
        business.server_close()
    else:
        HealthHandler.ready = False
        time.sleep(args.linger)
        business.shutdown()
        business.server_close()
        health.shutdown()
        health.server_close()
    print("inventory: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
