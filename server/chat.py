"""The AI SDK's chat protocol: what a ``DefaultChatTransport`` request asks of Orderly, and an
assistant message's event log as a UI message stream (the ``ai`` package's chunk schema).

A chat is a project. Its id is the project's id, or any other id a client made: such an id names
a project of the caller's (``chat_project_id``), created by the first message sent under it. The
conversation lives in the database, so of the messages the transport sends only the last one is
read. A UI message is one assistant message, or a chain of them: an answer that called tools, the
tool-result turn, and the answer that continues it are one UI message with several steps, whose
id is the first answer's.

The stream is translated from the log as it is followed (``UiMessageStream``): one event may
become several chunks (an event's frames all carry its id), and nothing here is stored.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from server.errors import Conflict, InvalidInput, NotFound
from server.events import Batch, compact_json
from server.models import MAX_TOOLS, GenerateRequest, Message, Tool, ToolChoiceInput
from server.parsing import validate

# The namespace of the projects that chats made by clients name (RFC 4122, name-based).
CHAT_NAMESPACE = uuid.UUID("6f9a1b52-3c0e-4d7a-9a57-0b5e3c1d8e21")
CHAT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"x-vercel-ai-ui-message-stream", b"v1"),
]
DONE = b"data: [DONE]\n\n"
# The finish reasons of the chunk schema, from the model server's (anything else: other).
FINISH_REASONS = {
    None: "stop",
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "content_filter": "content-filter",
}
TITLE_CHARS = 80
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ChatMessage(BaseModel):
    """A UI message as the transport sends it; only the last one of a request is read."""

    model_config = ConfigDict(extra="ignore")

    id: str
    role: Literal["system", "user", "assistant"]
    parts: list[dict[str, Any]]


class ChatRequest(BaseModel):
    """``DefaultChatTransport``'s body. Fields the app adds (the transport's ``body``) are
    ignored, except ``tools`` and ``tool_choice``, which go upstream as in a generation."""

    model_config = ConfigDict(extra="ignore")

    id: Annotated[str, StringConstraints(pattern=CHAT_ID_PATTERN)]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    trigger: Literal["submit-message", "regenerate-message"]
    messageId: str | None = None
    tools: Annotated[list[Tool] | None, Field(max_length=MAX_TOOLS)] = None
    tool_choice: ToolChoiceInput = None


def chat_id_from_path(raw: str) -> str:
    """A chat id in a path, checked: one that no chat can have is 404, as a project id that is
    not a UUID is."""
    if not re.fullmatch(CHAT_ID_PATTERN[1:-1], raw):
        raise NotFound(f"no chat with id '{raw[:128]}'")
    return raw


def chat_project_id(chat_id: str, owner_id: uuid.UUID) -> tuple[uuid.UUID, bool]:
    """The project a chat id names, and whether a first message may make it: a UUID is a
    project's own id (one of the caller's, made with POST /api/projects); any other id is the
    client's, and names the caller's project ``uuid5(CHAT_NAMESPACE, "owner/id")``: two users'
    chats never meet, whatever ids their clients make."""
    try:
        return uuid.UUID(chat_id), False
    except ValueError:
        return uuid.uuid5(CHAT_NAMESPACE, f"{owner_id}/{chat_id}"), True


def title_of(text: str) -> str:
    """A new chat's project title: the first line of its first message, shortened."""
    line = text.strip().splitlines()[0].strip() if text.strip() else "New chat"
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def user_turn(body: ChatRequest) -> GenerateRequest:
    """A ``submit-message`` whose last message is the user's: its text parts are the message.
    The UI message's id (made by the client, the same when the request is repeated) is the
    idempotency key when it fits one."""
    last = body.messages[-1]
    if body.messageId is not None:
        raise Conflict(
            "editing an earlier message is not supported: the conversation is append-only "
            "(send a new message, or regenerate the latest answer)",
            code="chat_edit_not_supported",
        )
    texts: list[str] = []
    images: list[str] = []
    for part in last.parts:
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "file":
            images.append(_image_url(part))
    text = "\n".join(texts)
    if not text.strip():
        raise InvalidInput("the last message has no text", code="chat_message_empty")
    key = last.id if _REQUEST_ID.match(last.id) else None
    fields: dict[str, Any] = {"message": text, "client_request_id": key}
    if images:
        fields["image_urls"] = images
    return _generation(body, fields)


def _image_url(part: dict[str, Any]) -> str:
    """A file part that is an image at an http(s) URL: one of the message's ``image_urls``
    (checked as a generation's are). Anything else, a ``data:`` URL (what the SDK makes of a
    file the user picked) included, is refused: no file is stored."""
    media_type, url = part.get("mediaType"), part.get("url")
    if (
        isinstance(media_type, str)
        and media_type.startswith("image/")
        and isinstance(url, str)
        and url.lower().startswith(("http://", "https://"))
    ):
        return url
    raise InvalidInput(
        "a file part must be an image at an http(s) URL: files (data: URLs) are not stored; "
        "upload the image elsewhere and send its URL",
        code="chat_file_not_supported",
    )


def tool_turn(body: ChatRequest, latest: Message | None) -> GenerateRequest:
    """A ``submit-message`` whose last message is the assistant's, after ``addToolOutput``: the
    outputs of the latest answer's calls are a ``tool_results`` turn (whether they answer every
    call is checked where the pair is reserved). An output is sent upstream as JSON text, a
    string as it is; an ``output-error`` as its ``errorText``."""
    last = body.messages[-1]
    outputs: dict[str, str] = {}
    for part in last.parts:
        kind = str(part.get("type", ""))
        call_id = part.get("toolCallId")
        if not (kind.startswith("tool-") or kind == "dynamic-tool") or not isinstance(call_id, str):
            continue
        if part.get("state") == "output-available":
            output = part.get("output")
            outputs[call_id] = output if isinstance(output, str) else compact_json(output)
        elif part.get("state") == "output-error":
            outputs[call_id] = str(part.get("errorText", ""))
    calls = (latest.tool_calls if latest is not None else None) or []
    results = [{"tool_call_id": c.id, "content": outputs[c.id]} for c in calls if c.id in outputs]
    if not results:
        raise Conflict(
            "the last message answers no tool call of the chat's latest answer",
            code="tool_calls_not_pending",
        )
    key = hashlib.sha256(",".join(r["tool_call_id"] for r in results).encode()).hexdigest()
    return _generation(body, {"tool_results": results, "client_request_id": f"tools-{key[:48]}"})


def _generation(body: ChatRequest, fields: dict[str, Any]) -> GenerateRequest:
    """The generation a chat request asks for, checked as a generation's body is (the app's
    ``tools`` and ``tool_choice`` included)."""
    if body.tools is not None:
        fields["tools"] = [tool.model_dump(exclude_unset=True) for tool in body.tools]
    if body.tool_choice is not None:
        fields["tool_choice"] = body.tool_choice
    if fields.get("client_request_id") is None:
        fields.pop("client_request_id", None)
    return validate(GenerateRequest, fields)


@dataclass
class Step:
    """An earlier step of a UI message: an answer that called tools, and the turn with their
    results."""

    answer: Message
    results: Message


def chain(before: Sequence[Message], answer: Message) -> list[Step]:
    """The earlier steps of ``answer``'s UI message, oldest first: while the question of an
    answer is a tool-result turn, the answer before it belongs to the same UI message.
    ``before``: the current messages before ``answer``, in order."""
    by_sequence = {m.sequence: m for m in before}
    steps: list[Step] = []
    current = answer
    while True:
        question = by_sequence.get(current.sequence - 1)
        earlier = by_sequence.get(current.sequence - 2)
        if question is None or question.role != "tool" or earlier is None:
            break
        steps.append(Step(earlier, question))
        current = earlier
    steps.reverse()
    return steps


def ui_message_id(steps: Sequence[Step], answer: Message) -> str:
    """A UI message's id: its first answer's (``answer``'s, when it has no earlier steps)."""
    return str((steps[0].answer if steps else answer).id)


def finish_reason(reason: str | None) -> str:
    return FINISH_REASONS.get(reason, "other")


@dataclass
class _Call:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


class UiMessageStream:
    """One assistant message's events as UI message chunks (SSE frames ``id: N`` / ``data:``).

    ``message_id``: the UI message's id, sent in ``start``; None when the answer continues a UI
    message whose ``start`` was sent already (its earlier steps, replayed)."""

    def __init__(self, message_id: str | None) -> None:
        self.message_id = message_id
        self.open: tuple[str, str] | None = None  # the text or reasoning part open: (kind, id)
        self.calls: dict[int, _Call] = {}

    def frames(self, event_id: int, name: str, data: dict[str, Any]) -> list[bytes]:
        chunks: list[dict[str, Any]] = []
        if name == "start":
            if self.message_id is not None:
                chunks.append({"type": "start", "messageId": self.message_id})
            chunks.append({"type": "start-step"})
        elif name == "progress":
            chunks.append({"type": "data-progress", "data": data, "transient": True})
        elif name in ("reasoning", "delta"):
            kind = "reasoning" if name == "reasoning" else "text"
            if self.open is None or self.open[0] != kind:
                chunks += self._close()
                self.open = (kind, f"{kind}-{event_id}")
                chunks.append({"type": f"{kind}-start", "id": self.open[1]})
            chunks.append({"type": f"{kind}-delta", "id": self.open[1], "delta": data["text"]})
        elif name == "tool_call":
            chunks += self._close()
            chunks += self._tool_call(data)
        else:  # the terminal event
            chunks += self._close()
            message = data["message"]
            if name == "done":
                chunks += self._inputs()
                chunks.append({"type": "finish-step"})
                chunks.append(
                    {
                        "type": "finish",
                        "finishReason": finish_reason(message.get("finish_reason")),
                        "messageMetadata": {"usage": message.get("usage")},
                    }
                )
            elif name == "error":
                chunks.append({"type": "error", "errorText": data["error"]["message"]})
            else:
                chunks.append({"type": "abort", "reason": "cancelled"})
        head = b"id: %d\n" % event_id
        out = [head + b"data: " + compact_json(c).encode() + b"\n\n" for c in chunks]
        if name in ("done", "error", "cancelled"):
            out.append(head + DONE)
        return out

    def _close(self) -> list[dict[str, Any]]:
        if self.open is None:
            return []
        kind, part_id = self.open
        self.open = None
        return [{"type": f"{kind}-end", "id": part_id}]

    def _tool_call(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        call = self.calls.get(data["index"])
        if call is None:  # the first piece of a call says its id and name
            call = self.calls[data["index"]] = _Call(data["id"] or "", data["name"] or "")
            chunks.append(
                {"type": "tool-input-start", "toolCallId": call.id, "toolName": call.name}
            )
        if data["arguments"]:
            call.arguments.append(data["arguments"])
            chunks.append(
                {
                    "type": "tool-input-delta",
                    "toolCallId": call.id,
                    "inputTextDelta": data["arguments"],
                }
            )
        return chunks

    def _inputs(self) -> list[dict[str, Any]]:
        """Each call's whole input, once the answer ended (its arguments are complete)."""
        return [
            tool_input(call.id, call.name, "".join(call.arguments))
            for _, call in sorted(self.calls.items())
        ]


def tool_input(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """``tool-input-available`` with the arguments parsed, or ``tool-input-error`` for
    arguments that are not JSON."""
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {
            "type": "tool-input-error",
            "toolCallId": call_id,
            "toolName": name,
            "input": arguments,
            "errorText": "the tool call's arguments are not JSON",
        }
    return {
        "type": "tool-input-available",
        "toolCallId": call_id,
        "toolName": name,
        "input": parsed,
    }


def replay_frames(message_id: str, steps: Sequence[Step]) -> list[bytes]:
    """A UI message's ``start`` and its earlier steps, from their stored rows (no event ids:
    they are not events of the answer being followed): each answer's reasoning, text and
    calls, then the results of its calls."""
    chunks: list[dict[str, Any]] = [{"type": "start", "messageId": message_id}]
    for step in steps:
        answer = step.answer
        chunks.append({"type": "start-step"})
        for kind, text in (("reasoning", answer.reasoning), ("text", answer.content)):
            if text:
                part_id = f"{kind}-{answer.id}"
                chunks.append({"type": f"{kind}-start", "id": part_id})
                chunks.append({"type": f"{kind}-delta", "id": part_id, "delta": text})
                chunks.append({"type": f"{kind}-end", "id": part_id})
        for call in answer.tool_calls or []:
            chunks.append(
                {"type": "tool-input-start", "toolCallId": call.id, "toolName": call.name}
            )
            chunks.append(tool_input(call.id, call.name, call.arguments))
        for result in step.results.tool_results or []:
            chunks.append(
                {
                    "type": "tool-output-available",
                    "toolCallId": result.tool_call_id,
                    "output": result.content,
                }
            )
        chunks.append({"type": "finish-step"})
    return [b"data: " + compact_json(c).encode() + b"\n\n" for c in chunks]


def _parse(frame: bytes) -> tuple[int, str, dict[str, Any]]:
    """One of our frames (``Event.frame``: ``id:``, ``event:``, ``data:`` lines)."""
    id_line, name_line, data_line = frame.split(b"\n", 3)[:3]
    return int(id_line[4:]), name_line[7:].decode(), json.loads(data_line[6:])


async def ui_batches(
    batches: AsyncIterator[Batch], ui: UiMessageStream, first: list[bytes]
) -> AsyncIterator[Batch]:
    """A followed log's batches as UI message chunks, after ``first`` (earlier steps). Pings
    stay pings."""
    try:
        if first:
            yield Batch(first)
        async for batch in batches:
            frames: list[bytes] = []
            for frame in batch.frames:
                frames += ui.frames(*_parse(frame))
            yield Batch(frames)
    finally:
        await batches.aclose()  # type: ignore[attr-defined]
