"""Record real psutil (and netlink sock_diag) output into the JSON fixtures next to this file.

Run as root from the repository root: ``python tests/collectors/recorded/record.py``. It
starts real processes, reads them with psutil as the agent would, and stores every call's
result or the psutil exception it raised, so tests can replay a real host.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from drainwatch.collectors.sock_diag import parse_sock_diag, sock_diag_request

HERE = Path(__file__).parent
CALLS = (
    "create_time",
    "ppid",
    "cmdline",
    "status",
    "cpu_times",
    "memory_info",
    "num_threads",
    "num_fds",
    "net_connections",
)

# Listens on a "health" port (IPv4) and a "business" port (IPv6 loopback); accepts; closes
# the port named on each stdin line ("health", "business"); exits on "exit".
SERVER = """
import socket, sys, threading
ports = {}
for name, family, host in (("health", socket.AF_INET, "127.0.0.1"),
                           ("business", socket.AF_INET6, "::1")):
    listener = socket.socket(family)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen()
    ports[name] = listener
accepted = []
def accept(listener):
    while True:
        try:
            accepted.append(listener.accept())
        except OSError:
            return
for listener in ports.values():
    threading.Thread(target=accept, args=(listener,), daemon=True).start()
print(ports["health"].getsockname()[1], ports["business"].getsockname()[1], flush=True)
for line in sys.stdin:
    word = line.strip()
    if word == "exit":
        break
    ports[word].close()
    print("closed", word, flush=True)
"""

# A parent that binds one port and forks two workers accepting on the inherited socket.
WORKERS = """
import os, socket, sys, time
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children.append(pid)
print(listener.getsockname()[1], *children, flush=True)
time.sleep(60)
"""


def encode(value: Any) -> Any:
    if hasattr(value, "laddr"):  # psutil's pconn
        return {
            "fd": value.fd,
            "family": int(value.family),
            "type": int(value.type),
            "laddr": list(value.laddr),
            "raddr": list(value.raddr),
            "status": value.status,
        }
    if hasattr(value, "_asdict"):
        return dict(value._asdict())
    if isinstance(value, list):
        return [encode(item) for item in value]
    return value


def snapshot(pid: int) -> dict[str, Any]:
    """Every call the collectors make on ``psutil.Process(pid)``: value or exception."""
    try:
        process = psutil.Process(pid)
    except psutil.Error as error:
        return {"pid": pid, "constructor": {"raises": type(error).__name__}}
    calls: dict[str, Any] = {}
    for name in CALLS:
        try:
            method = getattr(process, name)
            value = method(kind="tcp") if name == "net_connections" else method()
            calls[name] = {"value": encode(value)}
        except psutil.Error as error:
            calls[name] = {"raises": type(error).__name__}
    return {"pid": pid, "calls": calls}


def sock_diag_replies(family: int) -> list[str]:
    """The raw netlink replies to a dump of every TCP socket of ``family``, as hex."""
    replies = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4) as channel:
        channel.settimeout(1.0)
        channel.sendto(sock_diag_request(family, True), (0, 0))
        for _ in range(10_000):
            data = channel.recv(1 << 16)
            replies.append(data.hex())
            if parse_sock_diag(data, None)[1]:
                break
        return replies


def socket_fds(pid: int) -> dict[str, int]:
    """The process's socket file descriptors and their inodes, from /proc/PID/fd."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{name}")
        if target.startswith("socket:["):
            found[name] = int(target[8:-1])
    return found


def as_other_user(pid: int) -> dict[str, Any]:
    """The same calls made by an unprivileged user (nobody) on a root process."""
    output = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            __file__,
            "--snapshot",
            str(pid),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    result: dict[str, Any] = json.loads(output)
    return result


def wait_gone(pid: int, port: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ports = {
            item.laddr[1]
            for item in psutil.Process(pid).net_connections(kind="tcp")
            if item.status == psutil.CONN_LISTEN
        }
        if port not in ports:
            return
        time.sleep(0.01)
    raise RuntimeError(f"port {port} still listening")


def record_listener() -> dict[str, Any]:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        health, business = map(int, server.stdout.readline().split())
        clients = [socket.create_connection(("127.0.0.1", health))]
        clients += [socket.create_connection(("::1", business)) for _ in range(2)]
        time.sleep(0.3)
        stages: dict[str, Any] = {"serving": snapshot(server.pid)}
        record: dict[str, Any] = {
            "health_port": health,
            "business_port": business,
            "denied": as_other_user(server.pid),
            "sock_diag": {
                "fds": socket_fds(server.pid),
                "ipv4": sock_diag_replies(socket.AF_INET),
                "ipv6": sock_diag_replies(socket.AF_INET6),
            },
        }
        for word in ("health", "business"):
            server.stdin.write(word + "\n")
            server.stdin.flush()
            server.stdout.readline()
            wait_gone(server.pid, health if word == "health" else business)
            stages[f"{word}_closed"] = snapshot(server.pid)
        for client in clients:
            client.close()
        server.stdin.write("exit\n")
        server.stdin.flush()
        deadline = time.monotonic() + 5
        while psutil.Process(server.pid).status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not exit")
            time.sleep(0.01)
        stages["zombie"] = snapshot(server.pid)
        server.wait(5)
        stages["reaped"] = snapshot(server.pid)
        record["stages"] = stages
        return record
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)


def record_workers() -> dict[str, Any]:
    parent = subprocess.Popen(
        [sys.executable, "-c", WORKERS, "--service=orders"], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    try:
        port, *children = map(int, parent.stdout.readline().split())
        time.sleep(0.2)
        own = os.getpid()
        unrelated = [1, os.getppid(), own]
        pids = [parent.pid, *children, *unrelated]
        return {
            "port": port,
            "parent": parent.pid,
            "children": children,
            "recorder": own,
            "processes": [snapshot(pid) for pid in pids],
        }
    finally:
        parent.kill()
        parent.wait(5)
        for child in psutil.pids():
            try:
                process = psutil.Process(child)
                if process.ppid() == 1 and "--service=orders" in process.cmdline():
                    process.kill()
            except psutil.Error:
                pass


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--snapshot":
        print(json.dumps(snapshot(int(sys.argv[2]))))
        return
    for name, record in (("listener", record_listener()), ("workers", record_workers())):
        document = {
            "recorded_with": {
                "psutil": psutil.__version__,
                "python": sys.version.split()[0],
                "kernel": os.uname().release,
            },
            **record,
        }
        path = HERE / f"{name}.json"
        path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        print("wrote", path)


if __name__ == "__main__":
    main()
