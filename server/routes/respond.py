"""Answer shapes shared by the handlers: JSON bodies and message event streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from server.events import Batch
from server.follow import follow
from server.limits import StreamSlot
from server.middleware import received_at
from server.services import Services
from server.sse import EventStream
from server.store import StoredMessage


def json_response(body: str, status: int = 200) -> Response:
    """``body`` is already JSON (pydantic's ``model_dump_json``)."""
    return Response(body, status_code=status, media_type="application/json")


def stream_message(
    app: Services, request: Request, stored: StoredMessage, cursor: int, slot: StreamSlot
) -> Response:
    """The SSE stream of an assistant message's log from event ``cursor + 1`` (checked by the
    caller). The stream holds ``slot``, the caller's place under the open-streams limit, until it
    ends; when no stream opens, the slot is given back here."""
    if stored.message.is_terminal and cursor == stored.last_event_id:
        # Nothing left to send: 204 is how a server tells EventSource to stop reconnecting.
        slot.release()
        return Response(status_code=204)
    return event_stream(app, request, followed(app, stored, cursor), slot)


def followed(app: Services, stored: StoredMessage, cursor: int) -> AsyncIterator[Batch]:
    """The batches of an assistant message's log from event ``cursor + 1``."""
    local = app.runner.local_log(stored.message.id)
    # On the producing worker, follow the log's own copy of the message (shared by all of its
    # listeners) rather than this request's: an open stream then keeps no row of its own alive.
    message = stored.message if local is None else local.placeholder
    return follow(
        message,
        cursor,
        store=app.store,
        local=local,
        notifier=app.worker.notifier,
        limits=app.worker.limits(),
    )


def event_stream(
    app: Services,
    request: Request,
    batches: AsyncIterator[Batch],
    slot: StreamSlot,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> EventStream:
    """``batches`` as this worker's SSE response, holding ``slot`` until it ends."""
    return EventStream(
        batches,
        slot=slot,
        watchdog=app.worker.watchdog,
        received=received_at(request.scope),
        retry_ms=app.settings.retry_ms,
        headers=headers,
    )


def reconnect_elsewhere(retry_ms: int) -> Response:
    """An event stream with no event, only ``retry:``, that ends at once: EventSource reconnects
    after ``retry_ms`` with the same URL and ``Last-Event-ID``, as after any stream that ended."""
    return Response(
        f"retry: {retry_ms}\n\n",
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class LastingEndpoint:
    """``handler(request) -> Response`` as a bare ASGI app, for a route whose responses last
    (event streams). Starlette wraps a function endpoint in closures, a Request and a second
    layer of exception handling that all live as long as the response; this keeps one frame.
    The handler's errors reach the app's ExceptionMiddleware, which maps them with the same
    handlers, and its Request is dropped once it returned."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


def events_url(stored: StoredMessage) -> str:
    m = stored.message
    return f"/api/projects/{m.project_id}/messages/{m.id}/events"
