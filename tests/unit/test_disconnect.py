"""DisconnectWatch: a client's going away noticed without a task, on real asyncio futures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.disconnect import DisconnectWatch


class Receiver:
    """An ASGI ``receive`` over a queue of messages, as a server's: it blocks until one comes."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.calls = 0
        self.waiting = 0  # calls blocked right now

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        self.waiting += 1
        try:
            return await self.queue.get()
        finally:
            self.waiting -= 1


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_the_disconnect_is_noticed_once_after_other_messages() -> None:
    receive, seen = Receiver(), []
    watch = DisconnectWatch(receive, lambda: seen.append("gone"))
    watch.start()
    assert receive.waiting == 1 and not seen
    receive.queue.put_nowait({"type": "http.request", "body": b"rest", "more_body": False})
    await settle()
    assert receive.calls == 2 and receive.waiting == 1 and not seen
    receive.queue.put_nowait({"type": "http.disconnect"})
    await settle()
    assert seen == ["gone"] and receive.waiting == 0
    watch.close()  # after the end: nothing to do
    assert seen == ["gone"]


async def test_closed_before_the_disconnect_it_lets_go_of_receive() -> None:
    receive, seen = Receiver(), []
    watch = DisconnectWatch(receive, lambda: seen.append("gone"))
    watch.start()
    watch.close()
    assert receive.waiting == 0  # the pending receive() was closed: its finally ran
    receive.queue.put_nowait({"type": "http.disconnect"})
    await settle()
    assert not seen and receive.calls == 1


async def test_a_disconnect_already_there_is_noticed_at_start() -> None:
    receive, seen = Receiver(), []
    receive.queue.put_nowait({"type": "http.disconnect"})
    DisconnectWatch(receive, lambda: seen.append("gone")).start()
    assert seen == ["gone"]


async def test_a_receive_that_yields_bare_is_stepped_again() -> None:
    seen = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)  # a bare yield, not a future
        return {"type": "http.disconnect"}

    DisconnectWatch(receive, lambda: seen.append("gone")).start()
    assert not seen
    await settle()
    assert seen == ["gone"]


async def test_a_failing_receive_is_reported_not_raised() -> None:
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    receive = Receiver()

    async def failing() -> dict[str, Any]:
        await receive()
        raise RuntimeError("the server broke")

    try:
        DisconnectWatch(failing, lambda: pytest.fail("not a disconnect")).start()
        receive.queue.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        await settle()
    finally:
        loop.set_exception_handler(previous)
    assert [type(c["exception"]) for c in reported] == [RuntimeError]


async def test_a_receive_whose_future_is_cancelled_ends_the_watch_quietly() -> None:
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    waited: asyncio.Future[dict[str, Any]] = loop.create_future()

    async def receive() -> dict[str, Any]:
        return await waited

    try:
        DisconnectWatch(receive, lambda: pytest.fail("not a disconnect")).start()
        waited.cancel()
        await settle()
    finally:
        loop.set_exception_handler(previous)
    assert reported == []
