"""A fake OpenAI-compatible model server on a loopback port, scripted per test: it answers its
n-th request with the n-th reply script, speaking the chat-completion streaming protocol on the
wire (HTTP/1.1, chunked, ``data:`` lines, ``[DONE]``), and remembers every request.

Shared by the openai generator's tests (tests/integration/test_openai_generator.py) and the
fault suite's runs with ``GENERATOR=openai`` (tests/faults/)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

MODEL = "test-model"


@dataclass
class Received:
    """One request as the fake model server read it off the wire."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class Exchange:
    """One connection to the fake model server: its request, and ways to answer on the wire."""

    def __init__(
        self,
        request: Received,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_closed_by_client: Callable[[], None],
    ) -> None:
        self.request = request
        self.reader = reader
        self.writer = writer
        self._on_closed_by_client = on_closed_by_client

    async def head(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        lines = [f"HTTP/1.1 {status} Whatever", "Connection: close"]
        lines += ["Content-Type: text/event-stream", "Transfer-Encoding: chunked"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        await self._write("\r\n".join(lines).encode() + b"\r\n\r\n")

    async def piece(self, text: str) -> None:
        """One piece of a chunked body."""
        data = text.encode()
        await self._write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    async def event(self, data: str) -> None:
        await self.piece(f"data: {data}\n\n")

    async def delta(
        self, content: str | None = None, *, finish_reason: str | None = None, **delta: Any
    ) -> None:
        if content is not None:
            delta["content"] = content
        chunk: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "model": MODEL}
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        await self.event(json.dumps(chunk))

    async def usage(self, usage: Any) -> None:
        """The last chunk of an answer whose request asked for usage: no choices."""
        chunk = {"id": "c1", "object": "chat.completion.chunk", "model": MODEL, "choices": []}
        await self.event(json.dumps({**chunk, "usage": usage}))

    @property
    def asks_for_usage(self) -> bool:
        options = self.request.body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    async def end(self) -> None:
        """The end of the chunked body (HTTP is complete; [DONE] is separate)."""
        await self._write(b"0\r\n\r\n")

    async def done(self) -> None:
        await self.event("[DONE]")
        await self.end()

    async def until_closed(self) -> None:
        """Send nothing more; return when the client closes the connection."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(1024):
                pass
        self._on_closed_by_client()

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Reply = Callable[[Exchange], Awaitable[None]]


@dataclass
class FakeModel:
    """An OpenAI-compatible server that answers its n-th request with ``replies[n]`` (the last
    reply repeats) and remembers every request and every connection the client closed."""

    replies: list[Reply]
    requests: list[Received] = field(default_factory=list)
    closed_by_client: int = 0
    base_url: str = ""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> FakeModel:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_closed_by_client(self, timeout: float) -> None:
        await asyncio.wait_for(self._closed.wait(), timeout)

    async def settled(self, timeout: float) -> None:
        """Wait until every connection is over: an answer left open upstream fails the test."""
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            assert not pending, "the app left an upstream request open"

    def _closed_by_client(self) -> None:
        self.closed_by_client += 1
        self._closed.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            request = await read_request(reader)
            self.requests.append(request)
            reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
            await reply(Exchange(request, reader, writer, self._closed_by_client))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def read_request(reader: asyncio.StreamReader) -> Received:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    request_line, *header_lines = head.split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Received(method, path, headers, json.loads(body) if body else None)


def answer(
    *pieces: str, pause: float = 0.0, finish_reason: str = "stop", usage: Any = None
) -> Reply:
    """The pieces, the finish reason, and ``usage`` (when given, and asked for), as OpenAI
    sends them."""

    async def reply(x: Exchange) -> None:
        await x.head()
        await x.delta(role="assistant", content="")  # as OpenAI does: a role-only first chunk
        for piece in pieces:
            await asyncio.sleep(pause)
            await x.delta(piece)
        await x.delta(finish_reason=finish_reason)
        if usage is not None and x.asks_for_usage:
            await x.usage(usage)
        await x.done()

    return reply
