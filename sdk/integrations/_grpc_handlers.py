"""Instrumented twins of grpc method handlers: one ``start``/``finish`` per RPC.

grpc picks how to run a handler from what the handler *is* (``grpc.aio`` awaits coroutine
functions, iterates async generator functions and runs anything else in its thread pool;
the sync server calls everything in its pool), so each twin is of the same kind as the
handler it wraps. The hot path is the unary one. On the sync server the count is opened and
closed around the handler, written into the pool thread's own shard, with the outcome read
from grpc's state for the RPC; on ``grpc.aio`` it is closed in the context's done
callback, once grpc has ended the RPC.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Final

import grpc  # type: ignore[import-untyped, unused-ignore]
from drainwatch import _inflight, _runtime, _shutdown
from drainwatch._histogram import WAIT_BUCKETS

PROTOCOL: Final = "grpc"
# Handlers wrapped per interceptor; more distinct methods than this are wrapped per call
# (a catch-all generic handler could otherwise grow the cache without bound).
_MAX_CACHED_METHODS: Final = 1000
_WRAPPED_ATTRIBUTE: Final = "_drainwatch_counted"
_OK: Final = grpc.StatusCode.OK
_BUCKET_BOUNDS: Final = WAIT_BUCKETS
_FIRST_BOUND: Final = WAIT_BUCKETS[0]

Behavior = Callable[..., Any]
Registry = _inflight.InflightRegistry
Stats = _inflight.MethodStats


def _cut_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean an aio RPC was cut short rather than failed by its handler."""
    try:
        from grpc._cython import cygrpc  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return (asyncio.CancelledError,)
    # Raised by an aio context's read()/write() once its server has stopped.
    stopped = getattr(cygrpc, "_ServerStoppedError", None)
    if isinstance(stopped, type) and issubclass(stopped, BaseException):
        return (asyncio.CancelledError, stopped)
    return (asyncio.CancelledError,)


_CUT: Final = _cut_errors()

# -- per-RPC bookkeeping (never raises) -----------------------------------------------------------


def _start(registry: Registry, stats: Stats) -> float | None:
    try:
        return registry.start(stats)
    except Exception:
        _runtime.note_internal_error()
        return None


def _finish(registry: Registry, stats: Stats, started: float | None, outcome: str) -> None:
    if started is None:
        return
    try:
        registry.finish(stats, started, outcome)
    except Exception:
        _runtime.note_internal_error()


def _sync_outcome(context: Any, raised: bool) -> str:
    """A sync server's RPC: its context knows whether the RPC is still alive, and its code."""
    try:
        if not context.is_active():
            return _inflight.aborted_or_cancelled()
        if raised:
            return _inflight.ERROR
        code = context.code()
    except Exception:
        _runtime.note_internal_error()
        return _inflight.ERROR if raised else _inflight.OK
    return _inflight.OK if code is None or code == _OK else _inflight.ERROR


def _plain_outcome(context: Any, raised: bool) -> str:
    """A sync handler on an aio server: its context has neither ``code()`` nor ``is_active()``."""
    return _inflight.ERROR if raised else _inflight.OK


def _aio_outcome(context: Any, error: BaseException | None) -> str:
    if error is not None:
        return _inflight.aborted_or_cancelled() if isinstance(error, _CUT) else _inflight.ERROR
    try:
        code = context.code()
    except Exception:
        _runtime.note_internal_error()
        return _inflight.OK
    return _inflight.OK if code is None or code == _OK else _inflight.ERROR


# -- handler wrappers -----------------------------------------------------------------------------

Outcome = Callable[[Any, bool], str]


def _sync_unary(behavior: Behavior, registry: Registry, stats: Stats, outcome: Outcome) -> Behavior:
    # The hot path of every unary RPC: the bookkeeping is inlined, not called.
    def handler(request: Any, context: Any) -> Any:
        try:
            started = registry.start(stats)
        except Exception:
            _runtime.note_internal_error()
            return behavior(request, context)
        try:
            response = behavior(request, context)
        except BaseException:
            _finish(registry, stats, started, outcome(context, True))
            raise
        try:
            registry.finish(stats, started, outcome(context, False))
        except Exception:
            _runtime.note_internal_error()
        return response

    return handler


def _sync_server_unary(behavior: Behavior, registry: Registry, stats: Stats) -> Behavior:
    """``_sync_unary`` for the sync server, reading how the RPC stands from grpc's own state.

    Every unary RPC runs this, so the count is written here rather than through the
    registry's ``start``/``finish`` (four calls per RPC, about half of what it added):
    a pool thread's own shard is written by that thread only, so it needs no lock. A
    thread without a shard yet (its first RPC of the method), or past ``MAX_SHARDS``
    (which share one, under a lock), goes through the registry instead.
    """
    general = _sync_unary(behavior, registry, stats, _sync_outcome)
    shutdown = _shutdown.STATE
    clock = _inflight.clock
    thread_id = threading.get_ident
    cut_short = _inflight.aborted_or_cancelled
    outcome_base = _inflight.OUTCOME_BASE
    ok_base, error_base = _inflight.OK_BASE, _inflight.ERROR_BASE

    def handler(request: Any, context: Any) -> Any:
        try:
            shard = stats.shards.get(thread_id())
            if shard is not None:
                shard.started += 1
                if shutdown.shutting_down:
                    shard.started_during_drain += 1
                started = clock()
        except Exception:
            _runtime.note_internal_error()
            return behavior(request, context)
        if shard is None:
            return general(request, context)
        try:
            response = behavior(request, context)
        except BaseException:
            _finish_shard(shard, started, _sync_outcome(context, True))
            raise
        try:
            elapsed = clock() - started
            # The count is closed here, before grpc sends the response. Asking the
            # context (code(), is_active(), add_callback()) takes its condition on every
            # call, which cost more than the whole count; two reads of the state it
            # guards say the same without it: grpc drops the RPC's callback list once the
            # RPC has ended, which before the response means a cancel, a deadline or a
            # server stop cut it (grpc then sends nothing). A context laid out otherwise
            # is asked through its public methods.
            try:
                rpc_state = context._state
                cut = rpc_state.callbacks is None
                code = rpc_state.code
            except AttributeError:
                base = outcome_base[_sync_outcome(context, False)]
            else:
                if cut:
                    base = outcome_base[cut_short()]
                else:
                    base = ok_base if code is None or code is _OK else error_base
            # Most RPCs end within the first bucket: no search for them.
            if elapsed > _FIRST_BOUND:
                base += bisect_left(_BUCKET_BOUNDS, elapsed)
            shard.counts[base] += 1
            shard.total += elapsed
            if shutdown.shutting_down:
                shard.registry.check_drained()
        except Exception:
            _runtime.note_internal_error()
        return response

    return handler


def _finish_shard(shard: _inflight.Shard, started: float, outcome: str) -> None:
    try:
        shard.finish(started, outcome)
    except Exception:
        _runtime.note_internal_error()


def _sync_stream(
    behavior: Behavior, registry: Registry, stats: Stats, outcome: Outcome
) -> Behavior:
    def handler(request: Any, context: Any) -> Any:
        started = _start(registry, stats)
        try:
            responses = behavior(request, context)
        except BaseException:
            _finish(registry, stats, started, outcome(context, True))
            raise
        if started is None:
            return responses
        if not hasattr(type(responses), "__next__"):
            # Not an iterator: grpc fails the RPC when it calls next() on it, as it would have.
            _finish(registry, stats, started, _inflight.ERROR)
            return responses
        following = _follow(responses, context, registry, stats, started, outcome)
        next(following)  # runs up to its first bare yield, so closing it is always seen
        return following

    return handler


def _follow(
    responses: Iterator[Any],
    context: Any,
    registry: Registry,
    stats: Stats,
    started: float,
    outcome: Outcome,
) -> Iterator[Any]:
    """Yield ``responses`` unchanged; the RPC ends when they run out or grpc drops them."""
    try:
        yield None  # the priming step, consumed by the handler
        yield from responses
    except GeneratorExit:  # grpc stopped iterating: the client or the server cut the RPC
        _finish(registry, stats, started, _inflight.aborted_or_cancelled())
        raise
    except BaseException:
        _finish(registry, stats, started, outcome(context, True))
        raise
    _finish(registry, stats, started, outcome(context, False))


def _aio_coroutine(behavior: Behavior, registry: Registry, stats: Stats) -> Behavior:
    """Unary responses, and response streams written with ``context.write()``.

    The count is closed in the context's done callback, when grpc has ended the RPC: the
    response goes out first, and the bookkeeping runs while the loop would wait for the
    next request anyway. The status is read there too, once it is final.
    """
    start = registry.start

    async def handler(request: Any, context: Any) -> Any:
        try:
            started = start(stats)
        except Exception:
            _runtime.note_internal_error()
            return await behavior(request, context)
        try:
            response = await behavior(request, context)
        except BaseException as raised:
            _finish(registry, stats, started, _aio_outcome(context, raised))
            raise
        try:
            context.add_done_callback(partial(_aio_ended, registry, stats, started))
        except Exception:
            _finish(registry, stats, started, _aio_outcome(context, None))
        return response

    return handler


def _aio_ended(registry: Registry, stats: Stats, started: float, context: Any) -> None:
    """A ``grpc.aio`` context's done callback, for an RPC whose handler returned."""
    _finish(registry, stats, started, _aio_outcome(context, None))


def _aio_generator(behavior: Behavior, registry: Registry, stats: Stats) -> Behavior:
    async def handler(request: Any, context: Any) -> Any:
        started = _start(registry, stats)
        responses = behavior(request, context)
        try:
            async for response in responses:
                yield response
        except GeneratorExit:  # closed before the end: the client or the server cut it
            _finish(registry, stats, started, _inflight.aborted_or_cancelled())
            await responses.aclose()
            raise
        except BaseException as error:
            _finish(registry, stats, started, _aio_outcome(context, error))
            raise
        _finish(registry, stats, started, _aio_outcome(context, None))

    return handler


def _wrap_behavior(
    behavior: Behavior, kind: str, aio: bool, registry: Registry, stats: Stats
) -> Behavior | None:
    """The instrumented twin of ``behavior``, of the same kind: grpc dispatches on it
    (``grpc.aio`` awaits coroutine functions, iterates async generator functions and
    runs everything else in its thread pool), so the twin must look the same."""
    streaming = kind.endswith("_stream")
    if not aio:
        if getattr(behavior, "experimental_non_blocking", False):
            return None  # ends through a callback we cannot see; served uninstrumented
        if not streaming:
            return _sync_server_unary(behavior, registry, stats)
        outcome: Outcome = _sync_outcome
    elif inspect.iscoroutinefunction(behavior):
        return _aio_coroutine(behavior, registry, stats)
    elif inspect.isasyncgenfunction(behavior):
        wrap_async = _aio_generator if streaming else _aio_coroutine
        return wrap_async(behavior, registry, stats)
    elif not streaming and _awaitable(behavior):
        return _aio_coroutine(behavior, registry, stats)
    else:
        outcome = _plain_outcome
    wrap = _sync_stream if streaming else _sync_unary
    return wrap(behavior, registry, stats, outcome)


def _awaitable(candidate: object) -> bool:
    return inspect.isawaitable(candidate)


_KINDS: Final = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


class HandlerCache:
    """Instrumented method handlers, built once per method and reused for every RPC."""

    def __init__(self, aio: bool) -> None:
        self._aio = aio
        self._registry = _inflight.REGISTRY
        self._handlers: dict[str, tuple[Any, Any]] = {}
        _runtime.current()  # start reporting: the first RPC should not pay for it

    def instrumented(self, handler: Any, method: str) -> Any:
        """The instrumented twin of ``handler`` (None stays None); never raises."""
        if handler is None:
            return None
        if _inflight.REGISTRY is not self._registry:  # replaced (tests): start afresh
            self._registry = _inflight.REGISTRY
            self._handlers = {}
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        instrumented = self.build(handler, method)
        if len(self._handlers) < _MAX_CACHED_METHODS or method in self._handlers:
            self._handlers[method] = (handler, instrumented)
        return instrumented

    def build(self, handler: Any, method: str) -> Any:
        """A new instrumented twin of ``handler``, not cached; ``handler`` itself if it
        cannot be instrumented. Never raises."""
        try:
            return self._build(handler, method)
        except Exception:
            _runtime.note_internal_error()
            return handler

    def _build(self, handler: Any, method: str) -> Any:
        kind = _KINDS[bool(handler.request_streaming), bool(handler.response_streaming)]
        behavior = getattr(handler, kind)
        if behavior is None or getattr(behavior, _WRAPPED_ATTRIBUTE, False):
            return handler  # nothing to serve, or counted by another of our wrappers
        registry = _inflight.REGISTRY
        stats = registry.stats(PROTOCOL, method)
        wrapped = _wrap_behavior(behavior, kind, self._aio, registry, stats)
        if wrapped is None:
            return handler
        functools.update_wrapper(wrapped, behavior)  # keeps experimental_thread_pool & co.
        setattr(wrapped, _WRAPPED_ATTRIBUTE, True)
        return handler._replace(**{kind: wrapped})
