"""DW104 blocking-call-in-async: calls that block the event loop inside ``async def``.

A blocked loop serves nothing else: not the other requests, not the health endpoint, not
the shutdown that waits for the drain. Found in an ``async def``'s own code (a nested
``def`` or ``lambda`` runs elsewhere, e.g. in ``asyncio.to_thread``): ``time.sleep``,
``requests`` and sync ``httpx`` calls (and calls on a ``requests.Session`` / ``httpx.Client``
made in the function), ``urllib.request.urlopen``, ``subprocess`` runs, ``os.system``,
``open()``, ``input()``, ``pathlib`` reads and writes, blocking DNS and socket calls (and
``recv``/``send``/``accept``/``connect`` on a socket made in the function). A function only
passed along (``await asyncio.to_thread(time.sleep, 1)``) is not a call here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Final

from .ast_facts import ModuleFacts, call_name, dotted, functions, receiver, scope_nodes
from .rules import BLOCKING_IN_ASYNC, Finding, finding_at
from .source import SourceFile

_HTTP_VERBS: Final = ("get", "post", "put", "patch", "delete", "head", "options", "request")
# qualified name -> what to use instead
BLOCKING: Final[dict[str, str]] = {
    "time.sleep": "`await asyncio.sleep(...)`",
    "urllib.request.urlopen": "an async client (aiohttp, httpx.AsyncClient)",
    "subprocess.run": "`await asyncio.create_subprocess_exec(...)`",
    "subprocess.call": "`await asyncio.create_subprocess_exec(...)`",
    "subprocess.check_call": "`await asyncio.create_subprocess_exec(...)`",
    "subprocess.check_output": "`await asyncio.create_subprocess_exec(...)`",
    "os.system": "`await asyncio.create_subprocess_shell(...)`",
    "socket.create_connection": "`await asyncio.open_connection(...)`",
    "socket.getaddrinfo": "`await loop.getaddrinfo(...)`",
    "socket.gethostbyname": "`await loop.getaddrinfo(...)`",
    "open": "`await asyncio.to_thread(...)` around the file work (or aiofiles)",
    "io.open": "`await asyncio.to_thread(...)` around the file work (or aiofiles)",
    "input": "reading stdin with `loop.connect_read_pipe` or in a thread",
    **{f"requests.{verb}": "an async client (aiohttp, httpx.AsyncClient)" for verb in _HTTP_VERBS},
    **{f"httpx.{verb}": "`httpx.AsyncClient` and `await`" for verb in _HTTP_VERBS},
}
_PATH_METHODS: Final = frozenset({"read_text", "write_text", "read_bytes", "write_bytes"})
_SESSIONS: Final = frozenset({"requests.Session", "requests.session", "httpx.Client"})
_SOCKETS: Final = frozenset({"socket.socket", "socket.create_connection"})
_SOCKET_METHODS: Final = frozenset(
    {"recv", "recv_into", "recvfrom", "send", "sendall", "sendto", "accept", "connect"}
)


def _made_here(function: ast.AST, facts: ModuleFacts, kinds: frozenset[str]) -> set[str]:
    """Names assigned in ``function`` from a call of one of ``kinds``."""
    names: set[str] = set()
    for node in scope_nodes(function):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            if (facts.qualified(node.value.func) or "") in kinds:
                names.update(name for name in map(dotted, node.targets) if name)
        elif isinstance(node, ast.With):
            for item in node.items:
                made = item.context_expr
                name = dotted(item.optional_vars) if item.optional_vars is not None else None
                if (
                    name is not None
                    and isinstance(made, ast.Call)
                    and (facts.qualified(made.func) or "") in kinds
                ):
                    names.add(name)
    return names


def _blocking(
    call: ast.Call, facts: ModuleFacts, sessions: set[str], sockets: set[str]
) -> tuple[str, str] | None:
    """(what is called, what to use instead) when ``call`` blocks."""
    called = facts.qualified(call.func)
    if called in BLOCKING:
        # ``open`` only when it is the builtin (not ``from aiofiles import open``)
        return called, BLOCKING[called]
    name = call_name(call)
    owner = receiver(call)
    if owner in sessions and name in _HTTP_VERBS:
        return f"{owner}.{name}", "an async client (aiohttp, httpx.AsyncClient)"
    if owner in sockets and name in _SOCKET_METHODS:
        return f"{owner}.{name}", "asyncio streams (`asyncio.open_connection`) or loop.sock_*"
    if name in _PATH_METHODS and isinstance(call.func, ast.Attribute):
        shown = ast.unparse(call.func)
        shown = shown if len(shown) <= 40 else "..." + shown[-37:]
        return shown, "`await asyncio.to_thread(...)` around the file work"
    return None


def check(source: SourceFile, facts: ModuleFacts) -> Iterator[Finding]:
    for function in functions(source.tree):
        if not isinstance(function, ast.AsyncFunctionDef):
            continue
        sessions = _made_here(function, facts, _SESSIONS)
        sockets = _made_here(function, facts, _SOCKETS)
        for node in scope_nodes(function):
            if not isinstance(node, ast.Call):
                continue
            found = _blocking(node, facts, sessions, sockets)
            if found is None:
                continue
            what, instead = found
            yield finding_at(
                source.path,
                node.lineno,
                source.column(node),
                BLOCKING_IN_ASYNC,
                f"`{what}()` blocks the event loop inside `async def {function.name}`: "
                "nothing else runs meanwhile, not other requests, not the health endpoint, "
                f"not the shutdown; use {instead}",
            )
