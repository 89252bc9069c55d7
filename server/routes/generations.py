"""Starting a generation: POST (SSE or JSON answer) and GET for EventSource."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.errors import Draining, InvalidInput, MalformedRequest
from server.models import MAX_TOOLS_CHARS, Accepted, GenerateRequest
from server.parsing import parse_uuid, path_uuid, query_param, read_json, validate
from server.routes.respond import (
    events_url,
    json_response,
    reconnect_elsewhere,
    stream_message,
)
from server.runner import Submission
from server.services import Services, services
from server.sse import check_cursor, last_event_id


async def post_generation(request: Request) -> Response:
    app = services(request)
    user = await app.auth.authenticate(request)
    project_id = path_uuid(request, "project_id", "project")
    body = await read_json(request, GenerateRequest, max_bytes=app.settings.max_body_bytes)
    cursor = last_event_id(request)
    return await _generate(app, request, user.id, project_id, body, cursor)


# The query parameter of each field of GenerateRequest, named in the problems of a bad one.
QUERY_NAMES = {"client_request_id": "clientRequestId", "on_running": "onRunning"}


async def get_generate_stream(request: Request) -> Response:
    """``new EventSource(url)``: a reconnect re-sends the same URL with ``Last-Event-ID``, so the
    idempotency key is required, and the repeat resumes the same generation. It changes state
    under a GET, so a cookie must come with proof of our own origin."""
    app = services(request)
    user = await app.auth.authenticate(request, changes_state=True)
    params = {
        name: query_param(request, name)
        for name in ("projectId", "message", "clientRequestId", "onRunning")
    }
    for name in ("projectId", "message", "clientRequestId"):
        if not params[name]:
            raise MalformedRequest(
                f"the query parameter {name} is required", code="missing_parameter"
            )
    fields = {"message": params["message"], "client_request_id": params["clientRequestId"]}
    if params["onRunning"]:
        fields["on_running"] = params["onRunning"]
    project_id = parse_uuid(params["projectId"] or "", "project")
    body = validate(GenerateRequest, fields, QUERY_NAMES)
    try:
        return await _generate(app, request, user.id, project_id, body, last_event_id(request))
    except Draining:
        # EventSource takes a 503 as final and never tries again; a stream that ends at once is
        # an ordinary reconnect (after `retry:`), which the load balancer sends to a worker that
        # is not draining. The clientRequestId makes the repeat resume, never start twice.
        return reconnect_elsewhere(app.settings.retry_ms)


async def _generate(
    app: Services,
    request: Request,
    user_id: UUID,
    project_id: UUID,
    body: GenerateRequest,
    cursor: int,
) -> Response:
    """Start (or find) the generation; answer 202 JSON when asked for, else its stream."""
    check_sizes(body, app.settings.max_message_chars)
    return await answer_submission(
        app, request, user_id, cursor, lambda: app.runner.submit(user_id, project_id, body)
    )


async def answer_submission(
    app: Services,
    request: Request,
    user_id: UUID,
    cursor: int,
    submit: Callable[[], Awaitable[Submission]],
) -> Response:
    """Reserve (or find) an answer with ``submit``: 202 JSON when asked for, else its stream
    (a generation, a regenerate)."""
    if wants_json(request):
        pair = (await submit()).pair
        accepted = Accepted(
            user_message=pair.user.message,
            assistant_message=pair.assistant.message,
            events_url=events_url(pair.assistant),
        )
        return json_response(accepted.model_dump_json(), 202)
    # The stream's slot is taken before anything is reserved, so that a generation that starts
    # always gets its stream; every way out before the stream takes it over gives it back.
    slot = app.worker.streams.take(user_id)
    try:
        submission = await submit()
        assistant = submission.pair.assistant
        if submission.created:
            cursor = 0  # a new generation's stream starts at its first event whatever was sent
        check_cursor(cursor, assistant.last_event_id)
        return stream_message(app, request, assistant, cursor, slot)
    except BaseException:
        slot.release()
        raise


def check_sizes(body: GenerateRequest, max_chars: int) -> None:
    """The limits that are settings or counted over several fields (docs/api.md, "Limits")."""
    results = sum(len(result.content) for result in body.tool_results or ())
    if len(body.message) > max_chars or results > max_chars:
        what = "tool_results' contents together" if results else "message"
        raise InvalidInput(
            f"{what} must be at most {max_chars} characters", code="message_too_long"
        )
    tools = body.tools_json()
    if tools is not None and len(tools) > MAX_TOOLS_CHARS:
        raise InvalidInput(
            f"tools must be at most {MAX_TOOLS_CHARS} characters as compact JSON",
            code="tools_too_large",
        )


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/event-stream" not in accept


def get_without_head(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
    """A GET route that answers HEAD with 405 (``Allow: GET``). Starlette answers HEAD on every
    GET route by running the GET handler; for a GET that starts a generation, a prefetching
    proxy or a link checker would start answers. A HEAD that answered 200 without running the
    handler would claim what it never checked (authentication, the project, the limits)."""
    route = Route(path, endpoint, methods=["GET"])
    assert route.methods is not None
    route.methods.discard("HEAD")
    return route


routes = [
    Route("/api/projects/{project_id}/generations", post_generation, methods=["POST"]),
    get_without_head("/api/generate-stream", get_generate_stream),
]
