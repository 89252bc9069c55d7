"""An event log, followed, as a Server-Sent Events response.

The hot path of every stream: a constant, small Python cost per event. Frames are built directly
as bytes (``Event.frame``); the request's own task writes them (a ``DisconnectWatch``, not a task,
watches for the client going away); and no timer is set around a send: a per-worker ``SendWatchdog``
drops, once a second, the streams whose client has not taken a frame for ``SEND_TIMEOUT_SECONDS``.
Middleware sees the response start (access log, security headers); body chunks go straight to the
server's ``send`` (see ``server/middleware.RAW_SEND``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from server import metrics
from server.disconnect import DisconnectWatch
from server.errors import InvalidInput, MalformedRequest
from server.events import Batch
from server.limits import StreamSlot
from server.middleware import RAW_SEND
from server.parsing import query_param

logger = logging.getLogger(__name__)
MAX_EVENT_ID = 2**31 - 1
PING = b": ping\n\n"
_RAW_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def last_event_id(request: Request) -> int:
    """The client's cursor: the ``Last-Event-ID`` header, else ``lastEventId``, else 0. Both are
    checked when both are sent, and an empty one counts as not sent (as /openapi.json says)."""
    header = _cursor(request.headers.get("last-event-id"))
    query = _cursor(query_param(request, "lastEventId"))
    if header is not None:
        return header
    return query if query is not None else 0


def _cursor(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    # Exactly as /openapi.json says (^[0-9]*$): HTTP trims a header's own spaces already.
    if not raw.isdigit() or not raw.isascii():
        raise MalformedRequest(
            "Last-Event-ID must be a non-negative integer", code="invalid_last_event_id"
        )
    # Leading zeros say nothing (000000000001 is 1); only the significant digits can make a
    # number too long to be an id, and those are not parsed: any such number is past the log.
    digits = raw.lstrip("0") or "0"
    return int(digits) if len(digits) < 12 else MAX_EVENT_ID + 1


def check_cursor(cursor: int, last_event_id: int) -> None:
    if cursor > last_event_id:
        raise InvalidInput(
            f"Last-Event-ID {cursor} is beyond the log (last event {last_event_id})",
            code="last_event_id_out_of_range",
        )


def encode(batch: Batch) -> bytes:
    """A batch of events as one chunk of frames; a batch without frames is a ping."""
    frames = batch.frames
    if not frames:
        return PING
    return frames[0] if len(frames) == 1 else b"".join(frames)


class SendWatchdog:
    """One deadline per stream instead of a timer around every send: a stream records when its
    current send began; once a second the watchdog stops the streams whose send has waited longer
    than ``timeout`` (a client that stopped reading: the transport's buffer is full)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.streams: set[EventStream] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.timeout / 2))
            now = loop.time()
            for stream in list(self.streams):
                if stream.sending_since and now - stream.sending_since > self.timeout:
                    stream.stop("timed out")


class EventStream(Response):
    """A followed log as a Server-Sent Events response. Pings come from ``follow``, which yields
    an empty batch when nothing was due for ``PING_SECONDS``."""

    def __init__(
        self,
        batches: AsyncIterator[Batch],
        *,
        slot: StreamSlot,
        watchdog: SendWatchdog,
        received: float,
        retry_ms: int,
        headers: list[tuple[bytes, bytes]] | None = None,  # None: an SSE stream's own
    ) -> None:
        # Not Response.__init__: there is no body to render; only __call__ is ours.
        self.status_code = 200
        self.background = None
        self.batches = batches
        self.slot = slot  # this stream's place under the open-streams limit, held until it ends
        self.watchdog = watchdog
        self.received = received
        self.retry_ms = retry_ms
        self.stream_headers = headers or _RAW_HEADERS
        self.sending_since = 0.0  # loop time the current send began; 0.0: not sending
        self.stopped: str | None = None  # why the stream was stopped from outside
        self._task: asyncio.Task[object] | None = None

    def stop(self, reason: str) -> None:
        """End the stream now (its client went away, or stopped reading)."""
        if self.stopped is None and self._task is not None:
            self.stopped = reason
            self._task.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One frame for the life of the stream: each coroutine nested in it would be kept alive
        # as long, by every open stream. What runs before or after the loop may nest.
        if scope["method"] == "HEAD":  # a stream that never ends must not be opened for HEAD
            self.slot.release()
            await _head(send)
            return
        task = self._task = asyncio.current_task()
        watcher = DisconnectWatch(receive, self._disconnected)
        try:
            watcher.start()
            self.watchdog.streams.add(self)
            loop = asyncio.get_running_loop()
            raw_send = scope.get(RAW_SEND, send)
            await send(
                {"type": "http.response.start", "status": 200, "headers": self.stream_headers}
            )
            retry = b"retry: %d\n\n" % self.retry_ms
            await raw_send({"type": "http.response.body", "body": retry, "more_body": True})
            first = True
            async for batch in self.batches:
                self.sending_since = loop.time()
                body = encode(batch)
                await raw_send({"type": "http.response.body", "body": body, "more_body": True})
                self.sending_since = 0.0
                if first and batch.frames:
                    metrics.FIRST_EVENT_SECONDS.observe(time.perf_counter() - self.received)
                    first = False
            await raw_send({"type": "http.response.body", "body": b""})
        except asyncio.CancelledError:
            if self.stopped is None or task is None:
                raise  # the server's own cancellation
            task.uncancel()
            if self.stopped == "timed out":
                logger.info("closed a stream whose client stopped reading")
        finally:
            await self._close(watcher)

    def _disconnected(self) -> None:
        self.stop("disconnected")

    async def _close(self, watcher: DisconnectWatch) -> None:
        """However the stream ended (done, disconnect, error): stop watching it, close its
        follow and give its slot back."""
        try:
            self._task = None  # a disconnect from now on has nothing left to stop
            self.watchdog.streams.discard(self)
            watcher.close()
            await self.batches.aclose()  # type: ignore[attr-defined]
        finally:
            self.slot.release()


async def _head(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _RAW_HEADERS})
    await send({"type": "http.response.body", "body": b""})
