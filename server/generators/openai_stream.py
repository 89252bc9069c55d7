"""Reading a streamed chat completion: SSE lines in, the answer's text pieces out.

OpenAI-compatible servers send one ``data: {json}`` event per chunk and end the answer with
``data: [DONE]``. Whatever else the SSE format allows (comments, ``event:`` and ``id:`` fields)
is ignored, as the format asks of a client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from server.generators.base import GeneratorError
from server.generators.openai_failures import excerpt

DONE = "[DONE]"


def protocol_error(what: str) -> GeneratorError:
    return GeneratorError("upstream_protocol", f"the model server sent {what}")


class ChatStream:
    """The chunks of one streamed chat completion, read from the lines of its body."""

    def __init__(self, lines: AsyncIterator[str], secret: str | None) -> None:
        self._lines = lines
        self._secret = secret
        self._data: list[str] = []

    async def next_text(self) -> str | None:
        """The next chunk's content ("" for a chunk that has none), or None after ``[DONE]``."""
        data = await self._next_event()
        if data is None:
            raise protocol_error("no [DONE]: the answer ended early")
        if data.strip() == DONE:
            return None
        return chunk_text(data, self._secret)

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


def chunk_text(data: str, secret: str | None) -> str:
    """The ``choices[0].delta.content`` of one chunk; "" for a chunk without content."""
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
    if not choices:  # a prompt-filter or usage chunk: nothing to add
        return ""
    delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
    if not isinstance(delta, dict):
        raise protocol_error("a chunk without choices[0].delta")
    content = delta.get("content")
    if content is None:  # the role-only first chunk, or the last one with finish_reason
        return ""
    if not isinstance(content, str):
        raise protocol_error("a chunk whose content is not a string")
    return content
