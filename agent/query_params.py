"""Query strings of the agent's HTTP endpoints: one check shared by every endpoint."""

from __future__ import annotations

from typing import Final

from aiohttp import web

MAX_QUERY_VALUE: Final = 256


def query_error(request: web.Request, known: frozenset[str]) -> str | None:
    """Why the query string is refused, or None: unknown, repeated or oversized values."""
    unknown = sorted(set(request.query) - known)
    if unknown:
        return (
            f"unknown query parameter {unknown[0][:MAX_QUERY_VALUE]!r}; "
            f"this endpoint takes: {', '.join(sorted(known))}"
        )
    for name in sorted(known):
        values = request.query.getall(name, [])
        if len(values) > 1:
            return f'"{name}" may be given once'
        if values and not 0 < len(values[0]) <= MAX_QUERY_VALUE:
            return f'"{name}" must be 1 to {MAX_QUERY_VALUE} characters'
    return None
