"""The JSON shapes of the API (pydantic): requests, resources and event payloads."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, get_args
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

Status = Literal["pending", "streaming", "success", "error", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"success", "error", "cancelled"})

# The largest sequence a history query may name (before, after): far past any project's.
MAX_SEQUENCE = 2**62
RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
# What a generation request does when its project already has a running answer (docs/api.md).
OnRunning = Literal["concurrent", "reject", "enqueue", "interrupt"]
ON_RUNNING_POLICIES: tuple[str, ...] = get_args(OnRunning)


def _storable(value: str) -> str:
    """PostgreSQL text cannot hold NUL, and UTF-8 cannot encode a lone surrogate."""
    if "\x00" in value:
        raise ValueError("must not contain the NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be only whitespace")
    return value


# RFC 3986's characters, and % only as an escape: what /openapi.json's "format": "uri" means.
_URI_TEXT = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")


def _http_url(value: str) -> str:
    from urllib.parse import urlsplit

    if not _URI_TEXT.fullmatch(value):
        raise ValueError("must be a URI: ASCII, with anything else %-escaped")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http or https URL")
    return value


def _string_or_null(value: object) -> object:
    """A Literal field refuses a number as ``literal_error``, which reads as a wrong value (422);
    a value that is not even a string is the wrong JSON type (400 ``wrong_type``, API.md)."""
    if value is not None and not isinstance(value, str):
        raise PydanticCustomError("string_type", "Input should be a valid string")
    return value


def _text_pattern() -> str:
    """What ``_storable`` and ``_not_blank`` ask of a text, as a JSON Schema pattern, so that the
    document (server/openapi.py) says it: no NUL, and one character that Python's ``str.strip``
    keeps. (A lone surrogate cannot be written in a pattern; UTF-8 JSON cannot carry one.)"""
    blank = "".join(f"\\u{ord(c):04x}" for c in map(chr, range(0x10000)) if c.isspace())
    return f"^[^\\u0000]*[^\\u0000{blank}][^\\u0000]*$"


TEXT_PATTERN = _text_pattern()
StorableText = Annotated[str, AfterValidator(_storable)]
ImageUrl = Annotated[
    str,
    StringConstraints(max_length=2048),
    AfterValidator(_storable),
    AfterValidator(_http_url),
    Field(json_schema_extra={"format": "uri", "pattern": "^https?://[^/?#]+"}),
]


class Input(BaseModel):
    """Request bodies: strict types (no coercion), unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", strict=True)


class CreateProject(Input):
    title: Annotated[
        StorableText,
        StringConstraints(min_length=1, max_length=200),
        AfterValidator(_not_blank),
        Field(json_schema_extra={"pattern": TEXT_PATTERN}),
    ]


class RenameProject(CreateProject):
    """A project's new title: the same rules as at creation."""


class SessionRequest(Input):
    token: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    replace: Annotated[
        bool,
        Field(
            description="Sign in even when this browser is signed in to another account "
            "(without it, that is 409 another_account_signed_in, naming both accounts)"
        ),
    ] = False


class SessionInfo(BaseModel):
    """Who the request is signed in as."""

    username: str


# Tool calls (docs/api.md, "Tool calls"): OpenAI's function tools, sent upstream as given.
MAX_TOOLS = 64
MAX_TOOLS_CHARS = 65_536  # the tools of one request, as compact JSON
ToolName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class Part(BaseModel):
    """A part of a request body: as strict as ``Input``; its problems are named by the field of
    the body that holds it (server/parsing.py)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class FunctionDefinition(Part):
    name: ToolName
    description: Annotated[StorableText, Field(json_schema_extra={"pattern": _NO_NUL})] | None = (
        None
    )
    parameters: Annotated[
        dict[str, Any] | None, Field(description="a JSON Schema object: the arguments")
    ] = None
    strict: bool | None = None


class Tool(Part):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(Part):
    name: ToolName


class NamedToolChoice(Part):
    type: Literal["function"]
    function: FunctionName


def _tool_choice(value: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(value, str) and value in ("none", "auto", "required"):
        return value
    if isinstance(value, dict):
        try:
            return NamedToolChoice.model_validate(value).model_dump()
        except ValueError:
            pass
    raise ValueError(
        'must be none, auto, required or {"type": "function", "function": {"name": str}}'
    )


_NO_NUL = "^[^\\u0000]*$"
_TOOL_CHOICE_SCHEMA = {
    "anyOf": [
        {"enum": ["none", "auto", "required"]},
        {
            "type": "object",
            "properties": {
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}},
                    "required": ["name"],
                    "additionalProperties": False,
                },
            },
            "required": ["type", "function"],
            "additionalProperties": False,
        },
        {"type": "null"},
    ]
}
ToolChoice = Annotated[str | dict[str, Any], AfterValidator(_tool_choice)]


class ToolResult(Part):
    tool_call_id: Annotated[
        StorableText,
        StringConstraints(min_length=1, max_length=256),
        Field(json_schema_extra={"pattern": _NO_NUL}),
    ]
    content: Annotated[StorableText, Field(json_schema_extra={"pattern": _NO_NUL})]


class ToolCall(BaseModel):
    """A call an answer made: ``arguments`` is the whole JSON text the model wrote."""

    id: str
    name: str
    arguments: str


ToolChoiceInput = Annotated[
    ToolChoice | None,
    WithJsonSchema(_TOOL_CHOICE_SCHEMA),
    Field(description="sent upstream with the tools, unchanged"),
]


class GenerateRequest(Input):
    """A generation: exactly one of ``message`` and ``tool_results`` (docs/api.md)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "oneOf": [
                {"required": ["message"], "properties": {"tool_results": {"type": "null"}}},
                {
                    "required": ["tool_results"],
                    "not": {"required": ["message"]},
                    "properties": {
                        "tool_results": {"type": "array"},
                        "image_urls": {"maxItems": 0},
                    },
                },
            ]
        },
    )

    # The maximum length is a setting, checked by the handler (see routes/generations.py).
    message: Annotated[
        StorableText,
        StringConstraints(min_length=1),
        AfterValidator(_not_blank),
        Field(json_schema_extra={"pattern": TEXT_PATTERN}),
    ] = ""
    tool_results: Annotated[
        list[ToolResult] | None,
        Field(
            min_length=1,
            max_length=MAX_TOOLS,
            description="instead of message: the results of every call of the project's latest "
            "answer (it ended with tool calls)",
        ),
    ] = None
    tools: Annotated[list[Tool] | None, Field(max_length=MAX_TOOLS)] = None
    tool_choice: ToolChoiceInput = None
    client_request_id: RequestId | None = None
    image_urls: Annotated[list[ImageUrl], Field(max_length=8)] = []
    on_running: Annotated[
        OnRunning | None,
        BeforeValidator(_string_or_null),
        Field(
            description="What to do when an answer of the project is running: start at once "
            "(concurrent), 409 answer_running (reject), wait for every earlier answer to end "
            "(enqueue), or cancel the running answers (interrupt). Default: the server's "
            "ON_RUNNING (concurrent unless configured)."
        ),
    ] = None

    # The problem code of a request whose only invalid field is one of these.
    error_codes: ClassVar[dict[str, str]] = {"on_running": "invalid_on_running"}

    @model_validator(mode="wrap")
    @classmethod
    def _message_required(
        cls, data: Any, handler: ModelWrapValidatorHandler[GenerateRequest]
    ) -> GenerateRequest:
        """Without tool_results, message is required: said as for any missing field, beside
        the other fields' problems."""
        if not isinstance(data, dict) or "message" in data or data.get("tool_results") is not None:
            return handler(data)
        missing = InitErrorDetails(type="missing", loc=("message",), input=data)
        try:
            handler(data)
        except ValidationError as exc:
            found = [_details(error) for error in exc.errors()]
            raise ValidationError.from_exception_data(exc.title, [missing, *found]) from None
        raise ValidationError.from_exception_data(cls.__name__, [missing])

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.tool_results is None) == (self.message == ""):
            raise ValueError("exactly one of message and tool_results is required")
        if self.tool_results is not None and self.image_urls:
            raise ValueError("image_urls go with a message, not with tool_results")
        return self

    def tools_json(self) -> str | None:
        """The tools as sent (the fields the client gave), compact."""
        if self.tools is None:
            return None
        return json.dumps(
            [tool.model_dump(exclude_unset=True) for tool in self.tools], separators=(",", ":")
        )

    def tool_choice_json(self) -> str | None:
        return None if self.tool_choice is None else json.dumps(self.tool_choice)

    def tool_results_json(self) -> str | None:
        if self.tool_results is None:
            return None
        return json.dumps([r.model_dump() for r in self.tool_results], ensure_ascii=False)


def _details(error: ErrorDetails) -> InitErrorDetails:
    """One of pydantic's reported errors, as it can be raised again."""
    details = InitErrorDetails(type=error["type"], loc=error["loc"], input=error["input"])
    if "ctx" in error:
        details["ctx"] = error["ctx"]
    return details


class Project(BaseModel):
    id: UUID
    title: str
    message_count: int
    created_at: datetime


class ProjectList(BaseModel):
    projects: list[Project]


class ErrorInfo(BaseModel):
    code: str
    message: str


# The range of the database's integer columns: a model server's count outside it is not stored.
TokenCount = Annotated[int, Field(ge=0, le=2**31 - 1)]
# The longest finish_reason stored; model servers send a short word (stop, length, ...).
MAX_FINISH_REASON_CHARS = 64


class CompletionTokensDetails(BaseModel):
    """What the model server said of the completion's tokens: those it spent reasoning."""

    reasoning_tokens: TokenCount


class Usage(BaseModel):
    """Tokens of one answer, as its generator counted them."""

    prompt_tokens: TokenCount
    completion_tokens: TokenCount
    # Left out of the JSON when the model server did not report it.
    completion_tokens_details: Annotated[
        CompletionTokensDetails | None,
        Field(
            exclude_if=lambda details: details is None,
            description="present when the model server reports it: `reasoning_tokens`, the "
            "completion tokens it spent reasoning",
        ),
    ] = None


class Message(BaseModel):
    id: UUID
    project_id: UUID
    sequence: int
    role: Literal["user", "tool", "assistant"]
    kind: Literal["message"]
    content: str
    status: Status
    image_urls: list[str]
    client_request_id: str | None
    created_by: UUID
    created_at: datetime
    updated_at: datetime
    error: ErrorInfo | None
    # What the generator reported of a successful answer: null otherwise, and while it runs.
    usage: Annotated[
        Usage | None,
        Field(description="the answer's tokens as its generator counted them, or null"),
    ]
    finish_reason: Annotated[
        Annotated[str, StringConstraints(max_length=MAX_FINISH_REASON_CHARS)] | None,
        Field(
            description="why the answer ended, as the model server said: stop, length (cut "
            "short, still a success), content_filter, ...; or null"
        ),
    ]
    reasoning: Annotated[
        str | None,
        Field(
            description="the model's reasoning, apart from the content (a running answer: what "
            "it has streamed so far), or null when the model gave none"
        ),
    ]
    reasoning_ms: Annotated[
        int | None,
        Field(
            description="how long the model reasoned, in milliseconds (from its first reasoning "
            "event to its first text or tool call, or its end), as the worker that ran it timed "
            "it; null "
            "while it runs, without reasoning, and for an answer ended by a cancel or the reaper"
        ),
    ]

    tool_calls: Annotated[
        list[ToolCall] | None,
        Field(description="the calls a successful answer made (finish_reason tool_calls), or null"),
    ] = None
    tool_results: Annotated[
        list[ToolResult] | None,
        Field(description="a tool message's results, in the order sent; null on other messages"),
    ] = None
    variant: Annotated[
        int,
        Field(
            ge=1,
            description="which answer of its sequence this is, from 1 in the order they were "
            "made (regenerate makes another); 1 on user and tool messages",
        ),
    ] = 1
    variants: Annotated[
        int,
        Field(
            ge=1,
            description="how many answers its sequence had when this was read (at least "
            "variant); 1 on user and tool messages",
        ),
    ] = 1

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class MessagePage(BaseModel):
    messages: list[Message]
    has_more: bool


class RegenerateRequest(Input):
    """A new answer for the question of the project's latest answer (docs/api.md, "Regenerate").
    The body may be empty."""

    client_request_id: RequestId | None = None
    on_running: Annotated[
        OnRunning | None,
        BeforeValidator(_string_or_null),
        Field(
            description="as for a generation: what to do when an answer of the project is "
            "running (the one regenerated too, when it still runs)"
        ),
    ] = None

    error_codes: ClassVar[dict[str, str]] = {"on_running": "invalid_on_running"}


class Variants(BaseModel):
    """The answers of one sequence, in the order they were made, and which one is current."""

    variants: list[Message]
    current: Annotated[int, Field(ge=1, description="the variant that history shows")]


class MessageEnvelope(BaseModel):
    message: Message


class Accepted(BaseModel):
    user_message: Message
    assistant_message: Message
    events_url: str


# Event payloads (the `data:` line of each SSE event).


class StartData(BaseModel):
    user_message: Message
    assistant_message: Message


class ProgressData(BaseModel):
    stage: str
    message: str
    percent: float | None


class DeltaData(BaseModel):
    text: str


class ReasoningData(BaseModel):
    text: str


class ToolCallData(BaseModel):
    """A piece of a tool call: the first of a call carries its id and name."""

    index: int
    id: str | None
    name: str | None
    arguments: str


class ErrorData(BaseModel):
    error: ErrorInfo
    message: Message
