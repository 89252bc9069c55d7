"""What a generator is: an async iterator of ``Progress``, ``Reasoning``, ``Delta`` and
``ToolCallDelta`` items, and at most one ``Finish`` last, reporting the answer's usage and finish
reason.

Generators know nothing of SQL or HTTP. They get the new user message and, on demand, the
project's recent history in ``sequence`` order: whole turns (a user or tool message and its
successful answer), tool chains whole, ending on an answer; and the turn's ``tools`` and
``tool_choice`` (JSON text, as the client sent them), to send upstream unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from server.models import Message, Usage


# not frozen: built per item; 4x cheaper so
@dataclass(slots=True)
class Progress:
    stage: str
    message: str
    percent: float | None = None


# not frozen: built per item; 4x cheaper so
@dataclass(slots=True)
class Delta:
    text: str


# not frozen: built per item; 4x cheaper so
@dataclass(slots=True)
class Reasoning:
    """A piece of the model's reasoning: stored and streamed like a delta, kept apart from the
    answer's content (and never sent back upstream)."""

    text: str


# not frozen: built per item; 4x cheaper so
@dataclass(slots=True)
class ToolCallDelta:
    """A piece of the tool call at ``index``: its id and name when the model sent them (the first
    piece, normally), and a piece of its arguments' JSON text."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class Finish:
    """The generator's last item, when it knows how the answer ended: what it cost (``usage``)
    and why it stopped (``finish_reason``: ``stop``, ``length`` for an answer cut short, ...).
    The runner keeps them for the answer's final write; a successful answer without a ``Finish``
    stores null for both, and an answer that does not succeed never stores them."""

    usage: Usage | None = None
    finish_reason: str | None = None


Item = Progress | Reasoning | Delta | ToolCallDelta | Finish


async def _no_history() -> list[Message]:
    return []


@dataclass(frozen=True, slots=True)
class GenerationContext:
    user_message: Message
    assistant_message: Message
    # Loaded only by generators that need it, so the demo generator costs no extra query.
    load_history: Callable[[], Awaitable[list[Message]]] = field(default=_no_history)
    tools: str | None = None
    tool_choice: str | None = None

    @property
    def prompt(self) -> str:
        return self.user_message.content


class GeneratorError(Exception):
    """The generator failed in a way it can explain; ``message`` is safe to show to the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Generator(Protocol):
    def __call__(self, context: GenerationContext) -> AsyncIterator[Item]: ...
