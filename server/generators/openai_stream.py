"""Reading a streamed chat completion: SSE lines in, the answer's text, reasoning and tool-call
pieces out, and how it ended (the last ``finish_reason``, and the ``usage`` of the final chunk).

A model's reasoning comes in ``delta.reasoning_content`` (vLLM, llama.cpp, DeepSeek) or
``delta.reasoning`` (OpenRouter, Ollama); a server that sends both in one chunk sends the same
text twice, so one is taken (``reasoning_content`` first). ``usage`` may carry
``completion_tokens_details.reasoning_tokens``. Tool calls come in ``delta.tool_calls``: each
piece names its call's ``index``; the first carries its ``id`` and ``function.name``, each a piece
of ``function.arguments``. One chunk may carry any of the three: all are read from it.

OpenAI-compatible servers send one ``data: {json}`` event per chunk and end the answer with
``data: [DONE]``; asked for usage (``stream_options.include_usage``), they send it in a last chunk
whose ``choices`` is empty. Whatever else the SSE format allows (comments, ``event:`` and ``id:``
fields) is ignored, as the format asks of a client. So is a ``usage`` or ``finish_reason`` of an
unexpected shape: the answer's text is what matters, and it is still good.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from server.generators.base import GeneratorError, ToolCallDelta
from server.generators.openai_failures import excerpt
from server.models import CompletionTokensDetails, Usage

DONE = "[DONE]"


def protocol_error(what: str) -> GeneratorError:
    return GeneratorError("upstream_protocol", f"the model server sent {what}")


class ChatStream:
    """The chunks of one streamed chat completion, read from the lines of its body."""

    def __init__(self, lines: AsyncIterator[str], secret: str | None) -> None:
        self._lines = lines
        self._secret = secret
        self._data: list[str] = []
        self.finish_reason: str | None = None  # the last one sent so far
        self.usage: Usage | None = None

    async def next_chunk(self) -> ChatChunk | None:
        """The next chunk (its text and reasoning "" and its tool calls () when it has none), or
        None after ``[DONE]``."""
        data = await self._next_event()
        if data is None:
            raise protocol_error("no [DONE]: the answer ended early")
        if data.strip() == DONE:
            return None
        chunk = parse_chunk(data, self._secret)
        self.finish_reason = chunk.finish_reason or self.finish_reason
        self.usage = chunk.usage or self.usage
        return chunk

    async def _next_event(self) -> str | None:
        """The next event's data, or None when the body ends."""
        async for line in self._lines:
            if line == "":  # a blank line ends an event
                if self._data:
                    return self._pop()
                continue
            name, _, value = line.partition(":")
            if name == "data":
                self._data.append(value.removeprefix(" "))
        # Lenient: a last event that lacks its blank line still counts (some servers do this).
        return self._pop() if self._data else None

    def _pop(self) -> str:
        data = "\n".join(self._data)
        self._data.clear()
        return data


@dataclass(frozen=True, slots=True)
class ChatChunk:
    text: str  # "" for a chunk without content
    finish_reason: str | None = None
    usage: Usage | None = None
    reasoning: str = ""  # "" for a chunk without reasoning
    tool_calls: tuple[ToolCallDelta, ...] = ()


def parse_chunk(data: str, secret: str | None) -> ChatChunk:
    """One chunk: its ``choices[0].delta.content``, reasoning and tool calls,
    ``choices[0].finish_reason`` and ``usage``."""
    try:
        chunk: Any = json.loads(data)
    except (ValueError, RecursionError):  # (RecursionError: nested too deeply to decode)
        raise protocol_error("a chunk that is not JSON") from None
    if not isinstance(chunk, dict):
        raise protocol_error("a chunk that is not a JSON object")
    if "error" in chunk:  # vLLM and Ollama report a failure mid-stream this way
        reason = excerpt(data, secret)
        raise GeneratorError("upstream_error", f"the model server reported an error: {reason}")
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise protocol_error("a chunk without choices")
    usage = _usage(chunk.get("usage"))
    if not choices:  # a prompt-filter or usage chunk: no text
        return ChatChunk("", None, usage)
    delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
    if not isinstance(delta, dict):
        raise protocol_error("a chunk without choices[0].delta")
    given = choices[0].get("finish_reason")  # null until the last choice chunk
    finish_reason = given if isinstance(given, str) and given else None
    reasoning = _reasoning(delta)
    calls = _tool_calls(delta.get("tool_calls"))
    content = delta.get("content")
    if content is None:  # the role-only first chunk, a reasoning one, a call, the last one
        return ChatChunk("", finish_reason, usage, reasoning, calls)
    if not isinstance(content, str):
        raise protocol_error("a chunk whose content is not a string")
    return ChatChunk(content, finish_reason, usage, reasoning, calls)


def _reasoning(delta: dict[str, Any]) -> str:
    """The chunk's reasoning: ``reasoning_content``, else ``reasoning``; "" when neither is a
    string (absent, or null as many servers send it beside content)."""
    for name in ("reasoning_content", "reasoning"):
        value = delta.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def _tool_calls(value: Any) -> tuple[ToolCallDelta, ...]:
    """``delta.tool_calls``: a list of ``{"index", "id", "type", "function": {"name",
    "arguments"}}``, every member but ``index`` optional (the first piece of a call names it).
    A piece without an index is the only call (some servers leave it out)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise protocol_error("a chunk whose tool_calls is not a list")
    pieces = []
    for position, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(function or {}, dict):
            raise protocol_error("a tool call that is not an object")
        function = function or {}
        index, call_id = call.get("index", position), call.get("id")
        name, arguments = function.get("name"), function.get("arguments") or ""
        if (
            not isinstance(index, int)
            or not isinstance(call_id, str | None)
            or not isinstance(name, str | None)
            or not isinstance(arguments, str)
        ):
            raise protocol_error("a tool call of another shape than OpenAI's")
        pieces.append(ToolCallDelta(index, call_id or None, name or None, arguments))
    return tuple(pieces)


def _usage(value: Any) -> Usage | None:
    """``{"prompt_tokens": n, "completion_tokens": n, ...}`` as ``Usage``; None when absent (most
    chunks) or of another shape (counts that are not integers, or out of range). Its
    ``completion_tokens_details.reasoning_tokens`` is kept when it is a count; details of another
    shape (or without it) are left out, the counts kept."""
    if not isinstance(value, dict):
        return None
    counts = {k: v for k, v in value.items() if k != "completion_tokens_details"}
    try:
        usage = Usage.model_validate(counts, strict=True)
    except ValidationError:
        return None
    try:
        details = CompletionTokensDetails.model_validate(
            value.get("completion_tokens_details"), strict=True
        )
    except ValidationError:
        return usage
    return usage.model_copy(update={"completion_tokens_details": details})
