"""A project's messages: history pages, one message, and an assistant message's event stream."""

from __future__ import annotations

from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.errors import Conflict, InvalidInput, NotFound, UnsupportedMediaType
from server.models import (
    MAX_SEQUENCE,
    MessageEnvelope,
    MessagePage,
    RegenerateRequest,
    Variants,
)
from server.parsing import parse_json, path_uuid, query_int, read_body, validate
from server.routes.generations import answer_submission
from server.routes.respond import LastingEndpoint, json_response, stream_message
from server.services import Services, services
from server.sse import check_cursor, last_event_id
from server.store import StoredMessage, User


async def history(request: Request) -> Response:
    app = services(request)
    user = await app.auth.authenticate(request)
    project_id = path_uuid(request, "project_id", "project")
    limit = query_int(request, "limit", default=50, low=1, high=200)
    before = query_int(request, "before", default=None, low=1, high=MAX_SEQUENCE)
    after = query_int(request, "after", default=None, low=0, high=MAX_SEQUENCE)
    if before is not None and after is not None:
        raise InvalidInput("give before or after, not both", code="conflicting_parameters")
    assert limit is not None
    page = await app.store.history(project_id, user.id, limit=limit, before=before, after=after)
    if page is None:
        raise NotFound(f"no project with id '{project_id}'")
    messages, has_more = page
    return json_response(MessagePage(messages=messages, has_more=has_more).model_dump_json())


async def get_message(request: Request) -> Response:
    app = services(request)
    user = await app.auth.authenticate(request)
    stored = await _message(app, request, user)
    return json_response(stored.message.model_dump_json())


async def message_events(request: Request) -> Response:
    app = services(request)
    user = await app.auth.authenticate(request)
    cursor = last_event_id(request)
    # The slot first: a user over the cap is refused before anything is read. Every way out
    # before the stream takes it over gives it back.
    slot = app.worker.streams.take(user.id)
    try:
        project_id, message_id = _message_path(request)
        # Not get_message: opening (or resuming) a stream must not read a running answer whole.
        stored = await app.store.stream_target(project_id, message_id, user.id)
        if stored is None:
            raise NotFound(f"no message with id '{message_id}' in project '{project_id}'")
        if stored.message.role != "assistant":
            raise NotFound("only assistant messages have an event stream")
        check_cursor(cursor, stored.last_event_id)
        return stream_message(app, request, stored, cursor, slot)
    except BaseException:
        slot.release()
        raise


async def cancel(request: Request) -> Response:
    """End a running answer as ``cancelled``, keeping the content written so far."""
    app = services(request)
    user = await app.auth.authenticate(request)
    project_id, message_id = _message_path(request)
    cancelled = await app.store.cancel(project_id, message_id, user.id)
    if cancelled is None:
        stored = await _message(app, request, user)
        if stored.message.role != "assistant":
            raise NotFound("only assistant messages can be cancelled")
        raise Conflict(f"the message is already {stored.message.status}", code="already_finished")
    app.runner.cancelled([message_id])
    return json_response(MessageEnvelope(message=cancelled.message).model_dump_json(), 202)


async def regenerate(request: Request) -> Response:
    """A new answer for the latest answer's question, as a generation answers (SSE or JSON)."""
    app = services(request)
    user = await app.auth.authenticate(request)
    project_id, message_id = _message_path(request)
    raw = await read_body(request, app.settings.max_body_bytes)
    body = RegenerateRequest() if not raw.strip() else await _regenerate_body(request, raw)
    return await answer_submission(
        app,
        request,
        user.id,
        last_event_id(request),
        lambda: app.runner.regenerate(user.id, project_id, message_id, body),
    )


async def _regenerate_body(request: Request, raw: bytes) -> RegenerateRequest:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType()
    return validate(RegenerateRequest, parse_json(raw))


async def variants(request: Request) -> Response:
    """The answers of a message's sequence, in order, and which one is current."""
    app = services(request)
    user = await app.auth.authenticate(request)
    project_id, message_id = _message_path(request)
    return await _variants(app, project_id, message_id, user)


async def choose_variant(request: Request) -> Response:
    """Make this variant of the project's latest answer the current one."""
    app = services(request)
    user = await app.auth.authenticate(request)
    project_id, message_id = _message_path(request)
    if not await app.store.choose_variant(project_id, message_id, user.id):
        raise NotFound(f"no answer with id '{message_id}' in project '{project_id}'")
    return await _variants(app, project_id, message_id, user)


async def _variants(app: Services, project_id: UUID, message_id: UUID, user: User) -> Response:
    found = await app.store.variants(project_id, message_id, user.id)
    if found is None:
        raise NotFound(f"no answer with id '{message_id}' in project '{project_id}'")
    listed, current = found
    return json_response(Variants(variants=listed, current=current).model_dump_json())


def _message_path(request: Request) -> tuple[UUID, UUID]:
    """The project and message ids of a message's path, checked."""
    return (
        path_uuid(request, "project_id", "project"),
        path_uuid(request, "message_id", "message"),
    )


async def _message(app: Services, request: Request, user: User) -> StoredMessage:
    project_id, message_id = _message_path(request)
    stored = await app.store.get_message(project_id, message_id, user.id)
    if stored is None:
        raise NotFound(f"no message with id '{message_id}' in project '{project_id}'")
    return stored


routes = [
    Route("/api/projects/{project_id}/messages", history, methods=["GET"]),
    Route("/api/projects/{project_id}/messages/{message_id}", get_message, methods=["GET"]),
    Route(
        "/api/projects/{project_id}/messages/{message_id}/events",
        LastingEndpoint(message_events),
        methods=["GET"],
    ),
    Route("/api/projects/{project_id}/messages/{message_id}/cancel", cancel, methods=["POST"]),
    Route(
        "/api/projects/{project_id}/messages/{message_id}/regenerate",
        regenerate,
        methods=["POST"],
    ),
    Route("/api/projects/{project_id}/messages/{message_id}/variants", variants, methods=["GET"]),
    Route(
        "/api/projects/{project_id}/messages/{message_id}/current",
        choose_variant,
        methods=["POST"],
    ),
]
