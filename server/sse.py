"""An event log, followed, as a Server-Sent Events response (frames built by sse-starlette)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from sse_starlette import ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from server import metrics
from server.errors import InvalidInput, MalformedRequest
from server.events import Event
from server.limits import StreamSlot

logger = logging.getLogger(__name__)
SEP = "\n"
MAX_EVENT_ID = 2**31 - 1


def last_event_id(request: Request) -> int:
    """The client's cursor: the ``Last-Event-ID`` header, else ``lastEventId``, else 0."""
    raw = request.headers.get("last-event-id")
    if raw is None:
        raw = request.query_params.get("lastEventId")
    if raw is None or raw.strip() == "":
        return 0
    raw = raw.strip()
    if not raw.isdigit() or not raw.isascii():
        raise MalformedRequest(
            "Last-Event-ID must be a non-negative integer", code="invalid_last_event_id"
        )
    value = int(raw) if len(raw) < 12 else MAX_EVENT_ID + 1
    return value


def check_cursor(cursor: int, last_event_id: int) -> None:
    if cursor > last_event_id:
        raise InvalidInput(
            f"Last-Event-ID {cursor} is beyond the log (last event {last_event_id})",
            code="last_event_id_out_of_range",
        )


PING = ServerSentEvent(comment="ping", sep=SEP).encode()
_RAW_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def encode(batch: list[Event]) -> bytes:
    """A batch of events as one chunk of frames; an empty batch is a ping."""
    if not batch:
        return PING
    return b"".join(
        ServerSentEvent(data=e.data, event=e.name, id=str(e.id), sep=SEP).encode() for e in batch
    )


class EventStream(Response):
    """A followed log as a Server-Sent Events response.

    Frames are sse-starlette's ``ServerSentEvent``; the response itself is ours: one task writes
    (each send bounded by ``send_timeout``, pings included, so a client that stops reading is
    dropped) while another watches for the client going away. sse-starlette's response spawns
    four tasks and a cancel scope per frame, which the benchmark profile showed as the largest
    per-stream cost in CPU and memory (docs/benchmarks.md). Pings come from ``follow``, which
    yields an empty batch when nothing was due for ``PING_SECONDS``.
    """

    def __init__(
        self,
        batches: AsyncIterator[list[Event]],
        *,
        slot: StreamSlot,
        received: float,
        retry_ms: int,
        send_timeout: float,
    ) -> None:
        # Not Response.__init__: there is no body to render; only __call__ is ours.
        self.status_code = 200
        self.background = None
        self.batches = batches
        self.slot = slot  # this stream's place under the open-streams limit, held until it ends
        self.received = received
        self.retry_ms = retry_ms
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._stream(scope, receive, send)
        finally:
            self.slot.release()  # however the stream ended: done, disconnect, error, HEAD

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD":  # a stream that never ends must not be opened for HEAD
            await send({"type": "http.response.start", "status": 200, "headers": _RAW_HEADERS})
            await send({"type": "http.response.body", "body": b""})
            return
        writer = asyncio.create_task(self._write(send))
        watcher = asyncio.create_task(_until_disconnect(receive))
        try:
            await asyncio.wait((writer, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (writer, watcher):
                task.cancel()
            await asyncio.gather(writer, watcher, return_exceptions=True)
            await self.batches.aclose()  # type: ignore[attr-defined]
        failure = writer.exception() if writer.done() and not writer.cancelled() else None
        if isinstance(failure, TimeoutError):
            logger.info("closed a stream whose client stopped reading")
        elif failure is not None:
            logger.error("stream failed", exc_info=failure)

    async def _write(self, send: Send) -> None:
        await self._send(
            send, {"type": "http.response.start", "status": 200, "headers": _RAW_HEADERS}
        )
        await self._body(send, ServerSentEvent(retry=self.retry_ms, sep=SEP).encode())
        first = True
        async for batch in self.batches:
            await self._body(send, encode(batch))
            if first and batch:
                metrics.FIRST_EVENT_SECONDS.observe(time.perf_counter() - self.received)
                first = False
        await self._send(send, {"type": "http.response.body", "body": b""})

    async def _body(self, send: Send, chunk: bytes) -> None:
        await self._send(send, {"type": "http.response.body", "body": chunk, "more_body": True})

    async def _send(self, send: Send, message: Message) -> None:
        async with asyncio.timeout(self.send_timeout):
            await send(message)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
