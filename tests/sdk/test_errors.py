"""``drainwatch.ChannelClosed``: what it is on each Python, and what catches it."""

from __future__ import annotations

import asyncio
import queue

import drainwatch
import pytest
from drainwatch import Channel, ChannelClosed, ThreadChannel

from .conftest import needs_queue_shutdown, run


def test_channel_closed_is_an_exception_but_no_queue_empty_or_full() -> None:
    """``except Exception`` catches it, while QueueEmpty/QueueFull/Empty/Full handlers do not."""
    assert issubclass(ChannelClosed, Exception)
    for unrelated in (asyncio.QueueEmpty, asyncio.QueueFull, queue.Empty, queue.Full):
        assert not issubclass(ChannelClosed, unrelated), unrelated


def test_channel_closed_is_exported_and_is_what_channels_raise() -> None:
    """Both channel kinds raise the ``drainwatch.ChannelClosed`` named in ``__all__``."""
    assert "ChannelClosed" in drainwatch.__all__
    async_channel: Channel[int] = Channel("raises-async")
    thread_channel: ThreadChannel[int] = ThreadChannel("raises-thread")
    async_channel.close()
    thread_channel.close()
    with pytest.raises(drainwatch.ChannelClosed):
        async_channel.get_nowait()
    with pytest.raises(drainwatch.ChannelClosed):
        thread_channel.get_nowait()


@pytest.mark.skipif(
    hasattr(asyncio, "QueueShutDown"), reason="before 3.13 only: 3.13+ adds the queue bases"
)
def test_channel_closed_is_a_plain_exception_before_python_3_13() -> None:
    """Without 3.13 queue errors to extend, ``ChannelClosed`` derives from ``Exception`` alone."""
    assert ChannelClosed.__bases__ == (Exception,)


@needs_queue_shutdown
def test_channel_closed_is_both_queue_shutdown_errors_on_python_3_13() -> None:
    """On 3.13+ it subclasses ``asyncio.QueueShutDown`` and ``queue.ShutDown``."""
    assert issubclass(ChannelClosed, asyncio.QueueShutDown)  # type: ignore[attr-defined,unused-ignore]
    assert issubclass(ChannelClosed, queue.ShutDown)  # type: ignore[attr-defined,unused-ignore]


@needs_queue_shutdown
def test_except_asyncio_queue_shutdown_catches_a_channels_error() -> None:
    """Code written for 3.13 queues (``except asyncio.QueueShutDown``) handles a Channel."""

    async def main() -> list[str]:
        caught: list[str] = []
        channel: Channel[int] = Channel("catch-async")
        channel.close()
        try:
            await channel.get()
        except asyncio.QueueShutDown:  # type: ignore[attr-defined,unused-ignore]
            caught.append("get")
        try:
            await channel.put(1)
        except asyncio.QueueShutDown:  # type: ignore[attr-defined,unused-ignore]
            caught.append("put")
        return caught

    assert run(main()) == ["get", "put"]


@needs_queue_shutdown
def test_except_queue_shutdown_catches_a_thread_channels_error() -> None:
    """Code written for 3.13 queues (``except queue.ShutDown``) handles a ThreadChannel."""
    shut_down: type[Exception] = queue.ShutDown  # type: ignore[attr-defined,unused-ignore]
    caught: list[str] = []
    channel: ThreadChannel[int] = ThreadChannel("catch-thread")
    channel.close()
    try:
        channel.get()
    except shut_down:
        caught.append("get")
    try:
        channel.put(1)
    except shut_down:
        caught.append("put")
    assert caught == ["get", "put"]
