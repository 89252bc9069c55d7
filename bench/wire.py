"""A minimal HTTP/1.1 client on raw asyncio sockets, for load: keep-alive, one request at a time
per connection, chunked or sized bodies, and Server-Sent Events read frame by frame.

It is far lighter than a general client (no header objects, no URL parsing, no decoding of the
JSON it does not need), so that 10,000 connections or a few thousand generations a second cost
the client little of the machine's two cores.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import cast

TERMINAL = frozenset({b"done", b"error", b"cancelled"})
_HEAD, _SIZED, _CHUNKED, _IDLE = range(4)


@dataclass(slots=True)
class Exchange:
    """One request and what came back, with the times (``time.perf_counter``) things arrived."""

    sent: float = 0.0
    status: int = 0
    headers_at: float | None = None
    first_event_at: float | None = None
    first_event_id: int | None = None
    first_delta_at: float | None = None
    ended_at: float | None = None
    last_event_id: int | None = None
    events: int = 0
    pings: int = 0
    terminal: str | None = None
    contiguous: bool = True
    start_data: bytes | None = None
    body: bytearray = field(default_factory=bytearray)
    error: str | None = None
    cut: bool = False  # we closed the connection on purpose (stop_after_id)

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200


class Connection(asyncio.Protocol):
    """One keep-alive connection. ``request`` sends and returns a future of the ``Exchange``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._state = _IDLE
        self._remaining = 0
        self._keep_alive = True
        self._sse = bytearray()
        self._exchange: Exchange | None = None
        self._done: asyncio.Future[Exchange] | None = None
        self._first_event: asyncio.Future[None] | None = None
        self._stop_after_id: int | None = None
        self._keep_body = False

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Connection:
        loop = asyncio.get_running_loop()
        _transport, protocol = await loop.create_connection(cls, host, port)
        return protocol

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._exchange is not None and self._done is not None and not self._done.done():
            ex = self._exchange
            if not ex.cut:
                ex.error = f"connection lost: {exc}" if exc else "connection closed by server"
            self._finish()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            if self._exchange is not None:
                self._exchange.error = f"bad response: {exc}"
                self._finish()
            self.close()

    # API

    @property
    def current(self) -> Exchange | None:
        """The exchange in progress, if any."""
        return self._exchange

    def request(
        self,
        raw: bytes,
        *,
        stop_after_id: int | None = None,
        keep_body: bool = False,
    ) -> asyncio.Future[Exchange]:
        """Send ``raw`` (a whole request); the future resolves when the response has ended
        (or the connection broke, or event ``stop_after_id`` arrived and we hung up)."""
        assert self._state == _IDLE and not self.closed and self.transport is not None
        loop = asyncio.get_running_loop()
        self._exchange = Exchange(sent=time.perf_counter())
        self._keep_body = keep_body
        self._done = loop.create_future()
        self._first_event = loop.create_future()
        self._stop_after_id = stop_after_id
        self._state = _HEAD
        self._sse.clear()
        self.transport.write(raw)
        return self._done

    async def first_event(self) -> None:
        """Wait until the current exchange's first SSE event (or its end)."""
        assert self._first_event is not None
        await self._first_event

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # Parsing

    def _parse(self) -> None:
        while self._buf:
            if self._state == _HEAD:
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self._head(bytes(self._buf[:end]))
                del self._buf[: end + 4]
            elif self._state == _SIZED:
                take = min(self._remaining, len(self._buf))
                if self._keep_body and self._exchange is not None:
                    self._exchange.body += self._buf[:take]
                del self._buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._finish()
            elif self._state == _CHUNKED:
                if not self._chunks():
                    return
            else:
                del self._buf[:]  # nothing was asked: ignore
                return

    def _head(self, head: bytes) -> None:
        ex = self._exchange
        assert ex is not None
        lines = head.split(b"\r\n")
        ex.status = int(lines[0].split(b" ", 2)[1])
        ex.headers_at = time.perf_counter()
        chunked = False
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                self._keep_alive = b"close" not in value.lower()
        if chunked:
            self._state = _CHUNKED
        elif length:
            self._state, self._remaining = _SIZED, length
        else:
            self._finish()

    def _chunks(self) -> bool:
        """Consume whole chunks; False when more bytes are needed."""
        buf = self._buf
        pos = 0
        try:
            while True:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    return False
                size = int(buf[pos:nl].split(b";", 1)[0], 16)
                end = nl + 2 + size + 2
                if len(buf) < end:
                    return False
                if size == 0:
                    pos = end
                    self._finish()
                    return True
                self._sse_bytes(buf[nl + 2 : nl + 2 + size])
                pos = end
                if self._state != _CHUNKED:  # we hung up (stop_after_id)
                    return True
        finally:
            del buf[:pos]

    def _sse_bytes(self, data: bytearray) -> None:
        ex = self._exchange
        assert ex is not None
        if self._keep_body:
            ex.body += data
        self._sse += data
        while True:
            end = self._sse.find(b"\n\n")
            if end < 0:
                return
            frame = bytes(self._sse[:end])
            del self._sse[: end + 2]
            self._frame(ex, frame)
            if self._state != _CHUNKED:
                return

    def _frame(self, ex: Exchange, frame: bytes) -> None:
        if frame.startswith(b":"):
            ex.pings += 1
            return
        event_id: int | None = None
        name = b""
        data = b""
        for line in frame.split(b"\n"):
            if line.startswith(b"id: "):
                event_id = int(line[4:])
            elif line.startswith(b"event: "):
                name = line[7:]
            elif line.startswith(b"data: "):
                data = line[6:]
        if event_id is None:
            return  # the retry: line
        now = time.perf_counter()
        if ex.first_event_at is None:
            ex.first_event_at = now
            ex.first_event_id = event_id
            if self._first_event is not None and not self._first_event.done():
                self._first_event.set_result(None)
        elif ex.last_event_id is not None and event_id != ex.last_event_id + 1:
            ex.contiguous = False
        ex.last_event_id = event_id
        ex.events += 1
        if name == b"start":
            ex.start_data = data
        elif name == b"delta" and ex.first_delta_at is None:
            ex.first_delta_at = now
        if name in TERMINAL:
            ex.terminal = name.decode()
        if self._stop_after_id is not None and event_id >= self._stop_after_id:
            ex.cut = True
            self._finish()
            self.abort()

    def _finish(self) -> None:
        ex, done = self._exchange, self._done
        self._state = _IDLE
        self._exchange = None
        if ex is not None:
            ex.ended_at = time.perf_counter()
        if self._first_event is not None and not self._first_event.done():
            self._first_event.set_result(None)
        if done is not None and not done.done() and ex is not None:
            done.set_result(ex)
        if not self._keep_alive:
            self.close()


def request_bytes(
    method: str,
    path: str,
    port: int,
    *,
    token: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + (body or b"")
