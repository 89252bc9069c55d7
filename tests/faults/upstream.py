"""The model server of the runs with ``GENERATOR=openai``: the fake of tests/fake_openai.py,
answering every request with the demo generator's answer to its last message, in
``DEMO_DELTAS`` pieces ``DEMO_DELTA_MS`` apart, so that every check of the suite (the contents,
the fresh answers) holds as it does with the demo generator.

What the openai generator adds under faults is its history load: each answer's request carries
the project's finished conversation, read from PostgreSQL at the answer's start, while the
database misbehaves. A strict chat template (vLLM's for Gemma or Mistral) refuses anything but
an optional system message and then user and assistant in turn, ending with a user message; the
fake checks every request for that and remembers the ones that break it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from server.generators.demo import demo_pieces
from tests.fake_openai import Exchange, Reply


def well_formed(messages: list[Any]) -> str | None:
    """What is wrong with a request's messages, or None."""
    roles = [m.get("role") for m in messages]
    if roles[:1] == ["system"]:
        roles = roles[1:]
    expected = ["user", "assistant"] * (len(roles) // 2) + ["user"]
    if len(roles) % 2 != 1 or roles != expected:
        return f"roles {roles}"
    if any(not isinstance(m.get("content"), str) or not m["content"] for m in messages[1:-1]):
        return "a history message without text"
    return None


def demo_like(deltas: int, pause: float, problems: list[str]) -> Reply:
    """The reply script: the demo answer to the last message, piece by piece."""

    async def reply(x: Exchange) -> None:
        messages = x.request.body["messages"]
        if (wrong := well_formed(messages)) is not None:
            problems.append(f"a request to the model with a malformed history: {wrong}")
        content = messages[-1]["content"]
        prompt = content if isinstance(content, str) else content[0]["text"]
        pieces, finish = demo_pieces(prompt, deltas)
        await x.head()
        await x.delta(role="assistant", content="")
        for piece in pieces:
            await asyncio.sleep(pause)
            await x.delta(piece)
        await x.delta(finish_reason=finish)
        await x.done()

    return reply
