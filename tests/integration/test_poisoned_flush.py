"""One message whose write the database refuses does not hold the others hostage.

The database is made to refuse one answer's events (a CHECK constraint added for the test, so the
failure is the database's own, not a mock), while other answers are written in the same batches.
Regression: a batch that failed for a reason other than an outage was retried whole, forever, so
every answer of the worker stopped with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg

from server.generators.base import Delta, GenerationContext, Item
from tests.support import create_project, create_user, generate, running_server, settings_for

POISON = "POISON"


class PoisonableGenerator:
    """Writes a few pieces; the prompt "poison" makes the third one a piece the database refuses."""

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        for i in range(6):
            yield Delta(POISON if context.prompt == "poison" and i == 2 else f"piece {i}. ")
            await asyncio.sleep(0.02)


async def test_a_message_the_database_refuses_ends_alone(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "ALTER TABLE event_chunks ADD CONSTRAINT test_poison "
            f"CHECK (position('{POISON}' IN data) = 0)"
        )
    finally:
        await conn.close()
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, flush_interval_ms=50, flush_delay_ms=200)
    async with (
        running_server(settings, generator=PoisonableGenerator()) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        prompts = ["fine 1", "poison", "fine 2", "fine 3"]
        results = await asyncio.gather(*(generate(client, project, p) for p in prompts))
        history = (await client.get(f"/api/projects/{project}/messages")).json()["messages"]
    by_prompt = dict(zip(prompts, results, strict=True))
    expected = "".join(f"piece {i}. " for i in range(6))
    for prompt in ("fine 1", "fine 2", "fine 3"):
        assert by_prompt[prompt][-1].event == "done", prompt
        assert by_prompt[prompt][-1].data["message"]["content"] == expected
    poisoned = by_prompt["poison"]
    terminal = poisoned[-1]
    assert terminal.event == "error"
    assert terminal.data["error"]["code"] == "storage_error"
    # It ends with the content of its written deltas, as cancel and the reaper do.
    written = "".join(e.data["text"] for e in poisoned if e.event == "delta")
    assert terminal.data["message"]["content"] == written
    assert POISON not in written
    assert [e.id for e in poisoned] == list(range(1, len(poisoned) + 1))
    statuses = [m["status"] for m in history if m["role"] == "assistant"]
    assert sorted(statuses) == ["error", "success", "success", "success"]
