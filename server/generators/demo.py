"""The demo generator: offline and deterministic, with knobs for pace and length.

The answer is derived from the prompt alone, so tests can predict it, and is cut into exactly
``deltas`` pieces (fewer only when the answer is shorter than that), due ``delta_ms`` apart on a
fixed schedule from the first, the way a model server's tokens arrive: a generator woken late (a
busy event loop) catches up at once instead of pushing every later piece back.

Like a model server, it reports usage (prompt tokens: the words of the message; completion
tokens: the pieces sent) and why the answer ended: ``stop``; or ``length`` for a message whose
first word is ``/cut``, whose answer stops after half its pieces, as a model's that reached its
token limit (so that an answer cut short can be seen without a model).

A message whose first word is ``/think`` is answered as a reasoning model answers: first its
reasoning (``demo_reasoning``, which reads the message back: about as long as the answer; in
``deltas`` pieces at the same pace), then the answer; its
usage counts the reasoning pieces among the completion tokens, and as ``reasoning_tokens``.

A message whose first word is ``/tool`` is answered with a call of the demo tool
``browser_time`` (the time in the client's browser: the page answers it itself), ending with
``finish_reason`` ``tool_calls``; the tool-result turn that follows is answered by quoting the
results.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from server.generators.base import (
    Delta,
    Finish,
    GenerationContext,
    Item,
    Progress,
    Reasoning,
    ToolCallDelta,
)
from server.models import CompletionTokensDetails, Usage

# The first word of a message whose demo answer is cut short (finish_reason "length").
CUT_SHORT = "/cut"
# The first word of a message whose demo answer reasons first.
THINK = "/think"
# The first word of a message whose demo answer calls the demo tool, and that tool.
CALL_TOOL = "/tool"
DEMO_TOOL = "browser_time"
DEMO_TOOL_ARGUMENTS = '{"format": "locale", "why": "the demo generator asked"}'


def demo_answer(prompt: str) -> str:
    """The prompt quoted, in a little Markdown (a code span, a list) for the page to render."""
    words = len(prompt.split())
    return (
        f"You wrote {words} word{'s' if words != 1 else ''} and {len(prompt)} characters: "
        f"\u201c{prompt}\u201d\n\n"
        "This answer comes from the demo generator (`GENERATOR=demo`), which streams it in "
        "pieces so that you can watch:\n\n"
        "- the order of the messages,\n"
        "- the progress of the answer,\n"
        "- the resume after a reload or an outage."
    )


def demo_reasoning(prompt: str) -> str:
    """What the demo "thinks" before it answers ``prompt``: the message read back, so that the
    reasoning grows with it, about as long as the answer (as a model's often is)."""
    words = len(prompt.split())
    return (
        f"The message starts with {THINK}, so I reason before I answer. It has {words} "
        f"word{'s' if words != 1 else ''}. I read it again: \u201c{prompt}\u201d\n\n"
        "I will quote it back, and list what the demo shows. This reasoning is stored and "
        "resumed like the answer, but kept apart from it."
    )


def first_word(prompt: str) -> str | None:
    words = prompt.split(maxsplit=1)
    return words[0] if words else None


def split_evenly(text: str, pieces: int) -> list[str]:
    """Cut ``text`` into ``pieces`` consecutive non-empty parts whose lengths differ by <= 1."""
    pieces = max(1, min(pieces, len(text)))
    size, extra = divmod(len(text), pieces)
    parts, start = [], 0
    for i in range(pieces):
        end = start + size + (1 if i < extra else 0)
        parts.append(text[start:end])
        start = end
    return parts


def demo_pieces(prompt: str, deltas: int) -> tuple[list[str], str]:
    """The pieces of the answer to ``prompt`` and why it ends: all ``deltas`` pieces of
    ``demo_answer(prompt)`` and ``stop``; or, when the prompt's first word is ``/cut``, the first
    half of them and ``length``."""
    parts = split_evenly(demo_answer(prompt), deltas)
    if first_word(prompt) != CUT_SHORT:
        return parts, "stop"
    return parts[: max(1, len(parts) // 2)], "length"


class DemoGenerator:
    def __init__(self, *, deltas: int = 20, delta_ms: int = 50) -> None:
        self.deltas = deltas
        self.delay = delta_ms / 1000

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        yield Progress("thinking", "Reading the conversation", 0.0)
        if first_word(context.prompt) == CALL_TOOL:
            async for item in self._call_tool():
                yield item
            return
        prompt = _prompt(context)
        parts, finish_reason = demo_pieces(prompt, self.deltas)
        thoughts: list[str] = []
        if first_word(prompt) == THINK:
            thoughts = split_evenly(demo_reasoning(prompt), self.deltas)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, thought in enumerate(thoughts, 1):
            await self._until(start + i * self.delay)
            yield Reasoning(thought)
        yield Progress("writing", "Writing the answer", 10.0)
        start = loop.time()
        for i, part in enumerate(parts, 1):
            await self._until(start + i * self.delay)
            yield Delta(part)
        usage = Usage(
            prompt_tokens=len(prompt.split()),
            completion_tokens=len(thoughts) + len(parts),
            completion_tokens_details=(
                CompletionTokensDetails(reasoning_tokens=len(thoughts)) if thoughts else None
            ),
        )
        yield Finish(usage, finish_reason)

    async def _until(self, due: float) -> None:
        """Wait for the piece due at ``due`` (at once, if it is late: the pace catches up)."""
        loop = asyncio.get_running_loop()
        if self.delay and due > loop.time():
            await asyncio.sleep(due - loop.time())

    async def _call_tool(self) -> AsyncIterator[Item]:
        """One call of the demo tool, its arguments in a few pieces, as a model streams one."""
        yield Progress("calling a tool", f"Asking the browser for {DEMO_TOOL}", 50.0)
        pieces = split_evenly(DEMO_TOOL_ARGUMENTS, min(self.deltas, 4))
        for i, piece in enumerate(pieces):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield ToolCallDelta(0, None, DEMO_TOOL if i == 0 else None, piece)
        yield Finish(Usage(prompt_tokens=1, completion_tokens=len(pieces)), "tool_calls")


def _prompt(context: GenerationContext) -> str:
    """What the answer quotes: the message, or a tool message's results."""
    results = context.user_message.tool_results
    if results is None:
        return context.prompt
    return "; ".join(f"{r.tool_call_id} answered {r.content}" for r in results)
