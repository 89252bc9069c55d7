"""The OpenAPI 3.2 document, built from the pydantic models of ``server/models.py``.

3.2, not 3.1: only 3.2 can describe an event stream (``itemSchema``: each event's ``event``,
``id`` and JSON ``data``, per event name), so that a tool or a client can check every event."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from server.chat import CHAT_ID_PATTERN, ChatRequest
from server.models import (
    MAX_SEQUENCE,
    ON_RUNNING_POLICIES,
    TEXT_PATTERN,
    Accepted,
    CreateProject,
    DeltaData,
    ErrorData,
    GenerateRequest,
    Message,
    MessageEnvelope,
    MessagePage,
    ProgressData,
    Project,
    ProjectList,
    ReasoningData,
    RegenerateRequest,
    RenameProject,
    SessionInfo,
    SessionRequest,
    StartData,
    ToolCallData,
    Variants,
)

REF = "#/components/schemas/{model}"
PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "stable snake_case error code"},
        "errors": {"type": "array", "items": {"type": "object"}},
        "running_message_id": {
            "type": "string",
            "format": "uuid",
            "description": "answer_running: the newest running assistant message of the project",
        },
        "running_sequence": {"type": "integer", "description": "answer_running: its sequence"},
        "signed_in_username": {
            "type": "string",
            "description": "another_account_signed_in: the account this browser is signed in to",
        },
        "token_username": {
            "type": "string",
            "description": "another_account_signed_in: the account of the token sent",
        },
    },
}
SSE_DESCRIPTION = (
    "Server-Sent Events: a `retry:` line, then events `start`, `progress`, `reasoning`, `delta`, "
    "`tool_call` and one "
    "terminal event (`done`, `error` or `cancelled`), each with `id:`, `event:` and one line of "
    "compact JSON `data:`; `: ping` comments while no event is due."
)
_ERROR_STATUSES = {
    "400": "Malformed request",
    "401": "Not authenticated",
    "404": "Not found (or not yours)",
    "409": "Conflict: `answer_running` (on_running reject, an answer of the project runs), "
    "`idempotency_key_reused`, `already_finished`, `another_account_signed_in` (sign-in over "
    "another account's session without `replace`), `conflict` (a project's delete that could "
    "not cancel its answers), `tool_calls_not_pending` (tool_results while the project's latest "
    "answer has no calls waiting for results), `not_latest_answer` (regenerate, or choose a "
    "variant of, an answer that is not the project's latest)",
    "413": "Body too large",
    "414": "URL too long (MAX_URL_BYTES)",
    "415": "Wrong content type",
    "422": "Invalid values: `invalid_input`, `message_too_long`, `tools_too_large`, "
    "`tool_results_mismatch` (tool_results that do not answer every call exactly once), ...",
    "429": "Rate or concurrency limit",
    "431": "Header section too large (MAX_HEADER_BYTES)",
    "503": "Database unavailable or server draining",
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": REF.format(model=model.__name__)}


def _errors(*statuses: str) -> dict[str, Any]:
    """These problems, and the two any request can meet (server/middleware.RequestLimits)."""
    problem = {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}}
    every = sorted({*statuses, "414", "431"})
    return {s: {"description": _ERROR_STATUSES[s], "content": problem} for s in every}


def _path_param(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }


def _query(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


# Empty is the same as none (from the start); leading zeros are allowed (0001 is 1).
_CURSOR = {"type": "string", "pattern": "^[0-9]*$"}
_LAST_EVENT_ID = [
    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": _CURSOR},
    _query("lastEventId", _CURSOR),
]
# Each event's `data:` line, by event name (docs/api.md, "The SSE stream").
EVENT_DATA: dict[str, type[BaseModel]] = {
    "start": StartData,
    "progress": ProgressData,
    "reasoning": ReasoningData,
    "delta": DeltaData,
    "tool_call": ToolCallData,
    "done": MessageEnvelope,
    "error": ErrorData,
    "cancelled": MessageEnvelope,
}


def _event(name: str, data: type[BaseModel]) -> dict[str, Any]:
    """One event as OpenAPI 3.2 reads a stream: fields as strings, ``data`` as JSON text."""
    return {
        "type": "object",
        "required": ["event", "id", "data"],
        "properties": {
            "event": {"const": name},
            "id": {"type": "string", "pattern": "^[1-9][0-9]*$"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": _ref(data),
            },
            "retry": {"type": "integer", "minimum": 0},
        },
    }


_SSE = {
    "200": {
        "description": SSE_DESCRIPTION,
        "content": {
            "text/event-stream": {
                "itemSchema": {"oneOf": [_event(n, d) for n, d in EVENT_DATA.items()]},
            }
        },
    },
    "204": {"description": "nothing left: the message is finished and the client has every event"},
}
_AUTH = ["401", "429", "503"]
# The AI SDK's UI message stream (docs/api.md, "The AI SDK"): chunks of the `ai` package's schema.
_UI_STREAM = {
    "200": {
        "description": "Server-Sent Events with `x-vercel-ai-ui-message-stream: v1`: a `retry:` "
        "line, then one chunk of the `ai` package's UI message stream per `data:` line (JSON "
        "with a `type`), each frame with the `id:` of the event it comes from, and "
        "`data: [DONE]` after the last; `: ping` comments while no event is due.",
        "content": {
            "text/event-stream": {
                "itemSchema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "id": {"type": "string", "pattern": "^[1-9][0-9]*$"},
                        "data": {"type": "string"},
                        "retry": {"type": "integer", "minimum": 0},
                    },
                }
            }
        },
    }
}
_STOPPED = {
    "type": "object",
    "required": ["cancelled"],
    "properties": {
        "cancelled": {"type": "array", "items": {"type": "string", "format": "uuid"}},
    },
}


def _operations(max_message_chars: int | None) -> dict[str, dict[str, Any]]:
    message_text: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": TEXT_PATTERN}
    if max_message_chars is not None:
        message_text["maxLength"] = max_message_chars
    project = [_path_param("project_id")]
    message = [*project, _path_param("message_id")]
    chat = {
        "name": "chat_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": CHAT_ID_PATTERN},
    }
    generation_body = {"required": True, "content": _json(_ref(GenerateRequest))}
    accepted = {
        "description": "accepted (Accept: application/json)",
        "content": _json(_ref(Accepted)),
    }
    return {
        "/api/session": {
            "post": {
                "summary": "Sign in a browser: trade a token for an HttpOnly cookie",
                "requestBody": {"required": True, "content": _json(_ref(SessionRequest))},
                "responses": {
                    "204": {"description": "signed in"},
                    **_errors("400", "401", "409", "413", "415", "422", "429", "503"),
                },
            },
            "get": {
                "summary": "Who this browser (or bearer token) is signed in as",
                "responses": {
                    "200": {"description": "signed in", "content": _json(_ref(SessionInfo))},
                    **_errors(*_AUTH),
                },
            },
            "delete": {
                "summary": "Sign out",
                "security": [],
                "responses": {"204": {"description": "signed out"}, **_errors()},
            },
        },
        "/api/projects": {
            "post": {
                "summary": "Create a project",
                "requestBody": {"required": True, "content": _json(_ref(CreateProject))},
                "responses": {
                    "201": {"description": "created", "content": _json(_ref(Project))},
                    **_errors("400", "413", "415", "422", *_AUTH),
                },
            },
            "get": {
                "summary": "The caller's projects, newest first",
                "parameters": [_query("limit", {"type": "integer", "minimum": 1, "maximum": 1000})],
                "responses": {
                    "200": {"description": "projects", "content": _json(_ref(ProjectList))},
                    **_errors("400", "422", *_AUTH),
                },
            },
        },
        "/api/projects/{project_id}": {
            "get": {
                "summary": "One project",
                "parameters": project,
                "responses": {
                    "200": {"description": "the project", "content": _json(_ref(Project))},
                    **_errors("404", *_AUTH),
                },
            },
            "patch": {
                "summary": "Rename a project (the same rules as at creation)",
                "parameters": project,
                "requestBody": {"required": True, "content": _json(_ref(RenameProject))},
                "responses": {
                    "200": {"description": "the renamed project", "content": _json(_ref(Project))},
                    **_errors("400", "404", "413", "415", "422", *_AUTH),
                },
            },
            "delete": {
                "summary": "Delete a project: its running answers end cancelled, then its "
                "messages and their events are deleted",
                "parameters": project,
                "responses": {
                    "204": {"description": "deleted"},
                    **_errors("404", "409", *_AUTH),
                },
            },
        },
        "/api/projects/{project_id}/generations": {
            "post": {
                "summary": "Start a generation (SSE stream, or 202 with Accept: application/json)",
                "parameters": [*project, _LAST_EVENT_ID[0]],
                "requestBody": generation_body,
                "responses": {
                    **_SSE,
                    "202": accepted,
                    **_errors("400", "404", "409", "413", "415", "422", *_AUTH),
                },
            }
        },
        "/api/generate-stream": {
            "get": {
                "summary": "Start or resume a generation, for EventSource",
                "parameters": [
                    _query("projectId", {"type": "string", "format": "uuid"}, True),
                    _query("message", message_text, True),
                    _query(
                        "clientRequestId",
                        {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                        True,
                    ),
                    _query("onRunning", {"type": "string", "enum": list(ON_RUNNING_POLICIES)}),
                    *_LAST_EVENT_ID,
                ],
                "responses": {**_SSE, **_errors("400", "404", "409", "422", *_AUTH)},
            }
        },
        "/api/projects/{project_id}/messages": {
            "get": {
                "summary": "History, ascending by sequence",
                "parameters": [
                    *project,
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}),
                    _query("before", {"type": "integer", "minimum": 1, "maximum": MAX_SEQUENCE}),
                    _query("after", {"type": "integer", "minimum": 0, "maximum": MAX_SEQUENCE}),
                ],
                "responses": {
                    "200": {"description": "a page", "content": _json(_ref(MessagePage))},
                    **_errors("400", "404", "422", *_AUTH),
                },
            }
        },
        "/api/projects/{project_id}/messages/{message_id}": {
            "get": {
                "summary": "One message",
                "parameters": message,
                "responses": {
                    "200": {"description": "the message", "content": _json(_ref(Message))},
                    **_errors("404", *_AUTH),
                },
            }
        },
        "/api/projects/{project_id}/messages/{message_id}/events": {
            "get": {
                "summary": "Attach to, or resume, an assistant message's stream",
                "parameters": [*message, *_LAST_EVENT_ID],
                "responses": {**_SSE, **_errors("400", "404", "422", *_AUTH)},
            }
        },
        "/api/projects/{project_id}/messages/{message_id}/cancel": {
            "post": {
                "summary": "Cancel a running answer",
                "parameters": message,
                "responses": {
                    "202": {"description": "cancelled", "content": _json(_ref(MessageEnvelope))},
                    **_errors("404", "409", *_AUTH),
                },
            }
        },
        "/api/projects/{project_id}/messages/{message_id}/regenerate": {
            "post": {
                "summary": "A new answer (variant) for the question of the project's latest "
                "answer, as a generation answers (SSE stream, or 202 with Accept: "
                "application/json); the body may be empty",
                "parameters": [*message, _LAST_EVENT_ID[0]],
                "requestBody": {"required": False, "content": _json(_ref(RegenerateRequest))},
                "responses": {
                    **_SSE,
                    "202": accepted,
                    **_errors("400", "404", "409", "413", "415", "422", *_AUTH),
                },
            }
        },
        "/api/projects/{project_id}/messages/{message_id}/variants": {
            "get": {
                "summary": "The answers (variants) of this message's sequence, and the current one",
                "parameters": message,
                "responses": {
                    "200": {"description": "the variants", "content": _json(_ref(Variants))},
                    **_errors("404", *_AUTH),
                },
            }
        },
        "/api/projects/{project_id}/messages/{message_id}/current": {
            "post": {
                "summary": "Make this variant of the project's latest answer the one history "
                "shows and later turns send upstream",
                "parameters": message,
                "responses": {
                    "200": {"description": "the variants", "content": _json(_ref(Variants))},
                    **_errors("404", "409", *_AUTH),
                },
            }
        },
        "/api/chat": {
            "post": {
                "summary": "The AI SDK's DefaultChatTransport: send a message, tool outputs or a "
                "regenerate (only the last message is read); the answer as a UI message stream",
                "requestBody": {"required": True, "content": _json(_ref(ChatRequest))},
                "responses": {
                    **_UI_STREAM,
                    **_errors("400", "404", "409", "413", "415", "422", *_AUTH),
                },
            }
        },
        "/api/chat/{chat_id}/stream": {
            "get": {
                "summary": "The transport's reconnectToStream: the chat's running answer as a "
                "whole UI message, or 204 when nothing runs",
                "parameters": [chat],
                "responses": {
                    **_UI_STREAM,
                    "204": {"description": "nothing runs in the chat (or no such chat)"},
                    **_errors("404", *_AUTH),
                },
            }
        },
        "/api/chat/{chat_id}/stop": {
            "post": {
                "summary": "End the chat's running and queued answers, keeping what they wrote",
                "parameters": [chat],
                "responses": {
                    "200": {"description": "what was ended", "content": _json(_STOPPED)},
                    **_errors("404", *_AUTH),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "security": [],
                "responses": {"200": {"description": "the process runs"}, **_errors()},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness",
                "description": (
                    "Whether this server takes new answers: the database answers, it is not "
                    "draining, and its heartbeat is renewed."
                ),
                "security": [],
                "responses": {
                    "200": {"description": "ready"},
                    "503": {
                        "description": (
                            "not ready: status draining, database unavailable, or heartbeat "
                            "not renewed"
                        )
                    },
                    **_errors(),
                },
            }
        },
    }


def openapi_document(*, max_message_chars: int | None = None) -> dict[str, Any]:
    """The document; ``max_message_chars`` (MAX_MESSAGE_CHARS, a setting the handler checks)
    becomes the ``maxLength`` of a generation's ``message``, so that clients (the demo page's
    counter) can read the limit this server keeps."""
    models: list[type[BaseModel]] = [
        Accepted,
        ChatRequest,
        CreateProject,
        DeltaData,
        ErrorData,
        GenerateRequest,
        Message,
        MessageEnvelope,
        MessagePage,
        ProgressData,
        Project,
        ProjectList,
        ReasoningData,
        RegenerateRequest,
        RenameProject,
        SessionInfo,
        SessionRequest,
        StartData,
        ToolCallData,
        Variants,
    ]
    _, schemas = models_json_schema(
        [
            (
                m,
                "validation"
                if m
                in (
                    ChatRequest,
                    CreateProject,
                    GenerateRequest,
                    RegenerateRequest,
                    RenameProject,
                    SessionRequest,
                )
                else "serialization",
            )
            for m in models
        ],
        ref_template=REF,
    )
    components = dict(schemas.get("$defs", {}))
    components["Problem"] = PROBLEM
    if max_message_chars is not None:
        components["GenerateRequest"]["properties"]["message"]["maxLength"] = max_message_chars
    return {
        "openapi": "3.2.0",
        "info": {
            "title": "Orderly",
            "version": "1.0.0",
            "description": "Sequenced, resumable generation streams. See API.md.",
        },
        "paths": _operations(max_message_chars),
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "orderly_session"},
            },
        },
        "security": [{"bearer": []}, {"cookie": []}],
    }
