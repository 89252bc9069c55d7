"""The AI SDK's chat routes (``DefaultChatTransport``): send, reconnect, stop (server/chat.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.chat import (
    HEADERS,
    ChatRequest,
    Step,
    UiMessageStream,
    chain,
    chat_id_from_path,
    chat_project_id,
    replay_frames,
    title_of,
    tool_turn,
    ui_batches,
    ui_message_id,
    user_turn,
)
from server.errors import Conflict, InvalidInput, NotFound
from server.limits import StreamSlot
from server.models import MAX_SEQUENCE, Message, RegenerateRequest
from server.parsing import read_json
from server.routes.generations import check_sizes
from server.routes.respond import LastingEndpoint, event_stream, followed
from server.runner import Submission
from server.services import Services, services
from server.sse import EventStream
from server.store import StoredMessage

# Of a conversation, what is read to find its latest answer and the earlier steps of its UI
# message (a chain of tool calls longer than this is shown from its last steps).
RECENT = 200


async def send(request: Request) -> Response:
    """``sendMessages``: a message, tool outputs, or a regenerate; the answer's UI message
    stream."""
    app = services(request)
    user = await app.auth.authenticate(request)
    body = await read_json(request, ChatRequest, max_bytes=app.settings.chat_max_body_bytes)
    project_id, client_made = chat_project_id(body.id, user.id)
    last = body.messages[-1]
    if body.trigger == "submit-message" and last.role == "user":
        generation = user_turn(body)
        check_sizes(generation, app.settings.max_message_chars)
        if client_made:  # the chat's first message makes its project
            await app.store.chat_project(project_id, user.id, title_of(generation.message))
        submit = lambda: app.runner.submit(user.id, project_id, generation)  # noqa: E731
    elif await app.store.get_project(project_id, user.id) is None:
        raise NotFound(f"no chat with id '{body.id}'")
    elif body.trigger == "regenerate-message":
        latest = await _latest_answer(app, project_id, user.id)
        if latest is None:
            raise Conflict("the chat has no answer to regenerate", code="not_latest_answer")
        again = RegenerateRequest()
        submit = lambda: app.runner.regenerate(user.id, project_id, latest.id, again)  # noqa: E731
    elif last.role == "assistant":
        tools = tool_turn(body, await _latest_answer(app, project_id, user.id))
        check_sizes(tools, app.settings.max_message_chars)
        submit = lambda: app.runner.submit(user.id, project_id, tools)  # noqa: E731
    else:
        raise InvalidInput(
            "the last message must be the user's or the assistant's", code="chat_message_role"
        )
    return await _answer(app, request, user.id, project_id, submit)


async def reconnect(request: Request) -> Response:
    """``reconnectToStream``: the chat's running answer as its whole UI message, from its start
    (earlier steps of it included); 204 when nothing runs (an unknown chat too)."""
    app = services(request)
    user = await app.auth.authenticate(request)
    project_id, _ = chat_project_id(chat_id_from_path(request.path_params["chat_id"]), user.id)
    slot = app.worker.streams.take(user.id)
    try:
        found = await app.store.history(project_id, user.id, limit=RECENT, before=None, after=None)
        messages = found[0] if found else []
        if not messages or messages[-1].role != "assistant" or messages[-1].is_terminal:
            slot.release()
            return Response(status_code=204)
        answer = messages[-1]
        stored = await app.store.stream_target(project_id, answer.id, user.id)
        if stored is None:  # its project was deleted meanwhile
            slot.release()
            return Response(status_code=204)
        steps = chain(messages[:-1], answer)
        first = replay_frames(ui_message_id(steps, answer), steps)
        return _stream(app, request, stored, UiMessageStream(None), first, slot)
    except BaseException:
        slot.release()
        raise


async def stop(request: Request) -> Response:
    """Cancel the chat's running answers (queued ones too), keeping what they wrote: what
    ``stop()`` in the AI SDK cannot do (it only aborts the client's fetch)."""
    app = services(request)
    user = await app.auth.authenticate(request)
    project_id, _ = chat_project_id(chat_id_from_path(request.path_params["chat_id"]), user.id)
    if await app.store.get_project(project_id, user.id) is None:
        raise NotFound(f"no chat with id '{request.path_params['chat_id']}'")
    closed = await app.store.interrupt(project_id, MAX_SEQUENCE + 1, user.id)
    app.runner.cancelled([stored.message.id for stored in closed])
    return JSONResponse({"cancelled": [str(stored.message.id) for stored in closed]})


async def _latest_answer(app: Services, project_id: UUID, owner_id: UUID) -> Message | None:
    found = await app.store.history(project_id, owner_id, limit=1, before=None, after=None)
    if found is None or not found[0] or found[0][-1].role != "assistant":
        return None
    return found[0][-1]


async def _answer(
    app: Services,
    request: Request,
    user_id: UUID,
    project_id: UUID,
    submit: Callable[[], Awaitable[Submission]],
) -> Response:
    """Reserve (or find, for a repeated request) the answer, and stream it whole as a UI
    message: one that continues a chain of tool calls carries the chain's first answer's id."""
    slot = app.worker.streams.take(user_id)
    try:
        submission = await submit()
        pair = submission.pair
        answer = pair.assistant.message
        steps: list[Step] = []
        if pair.user.message.role == "tool":
            found = await app.store.history(
                project_id, user_id, limit=RECENT, before=answer.sequence, after=None
            )
            steps = chain(found[0] if found else [], answer)
        ui = UiMessageStream(ui_message_id(steps, answer))
        return _stream(app, request, pair.assistant, ui, [], slot)
    except BaseException:
        slot.release()
        raise


def _stream(
    app: Services,
    request: Request,
    stored: StoredMessage,
    ui: UiMessageStream,
    first: list[bytes],
    slot: StreamSlot,
) -> EventStream:
    """The answer's log from its first event, as a UI message stream after ``first``."""
    batches = ui_batches(followed(app, stored, 0), ui, first)
    return event_stream(app, request, batches, slot, HEADERS)


routes = [
    Route("/api/chat", LastingEndpoint(send), methods=["POST"]),
    Route("/api/chat/{chat_id}/stream", LastingEndpoint(reconnect), methods=["GET"]),
    Route("/api/chat/{chat_id}/stop", stop, methods=["POST"]),
]
