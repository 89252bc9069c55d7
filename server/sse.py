"""An event log, followed, as a Server-Sent Events response (frames built by sse-starlette)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request

from server import metrics
from server.errors import InvalidInput, MalformedRequest, TooManyStreams
from server.events import Event

SEP = "\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
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


class StreamGauge:
    """Counts this worker's open streams against its limit (checked when a stream is asked for)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def check(self) -> None:
        if self.open >= self.limit:
            raise TooManyStreams()


def ping() -> ServerSentEvent:
    return ServerSentEvent(comment="ping", sep=SEP)


def event_stream(
    events: AsyncIterator[list[Event]],
    *,
    gauge: StreamGauge,
    received: float,
    ping_seconds: float,
    retry_ms: int,
    send_timeout: float,
) -> EventSourceResponse:
    gauge.check()

    async def frames() -> AsyncIterator[ServerSentEvent | bytes]:
        gauge.open += 1
        metrics.OPEN_STREAMS.inc()
        first = True
        try:
            yield ServerSentEvent(retry=retry_ms, sep=SEP)
            async for batch in events:
                yield b"".join(
                    ServerSentEvent(data=e.data, event=e.name, id=str(e.id), sep=SEP).encode()
                    for e in batch
                )
                if first:
                    metrics.FIRST_EVENT_SECONDS.observe(time.perf_counter() - received)
                    first = False
        finally:
            gauge.open -= 1
            metrics.OPEN_STREAMS.dec()

    return EventSourceResponse(
        frames(),
        headers=HEADERS,
        ping=ping_seconds,
        ping_message_factory=ping,
        sep=SEP,
        send_timeout=send_timeout,
    )
