"""The running-count check can fail: an extra decrement, which the SQL's clamp at 0 hides once
nothing runs, shows while another answer of the same user still runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg

from tests.faults.watch import Watcher, check_counts, counts
from tests.support import (
    GatedGenerator,
    create_project,
    create_user,
    running_server,
    settings_for,
)

WAIT = 30.0  # bounds waiting only


async def _until(condition_met: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await condition_met():
        assert time.monotonic() < deadline, f"still waiting for {what} after {WAIT}s"
        await asyncio.sleep(0.05)


async def test_a_double_decrement_clamped_at_0_is_caught_while_another_answer_runs(
    database_url: str,
) -> None:
    token = await create_user(database_url, "watched")
    generator = GatedGenerator()
    watcher = Watcher(database_url, time.monotonic())
    watching = asyncio.create_task(watcher.run())
    server_running = running_server(settings_for(database_url), generator=generator)
    async with server_running as server, server.client(token) as client:
        project = await create_project(client)
        for i in range(2):
            response = await client.post(
                f"/api/projects/{project}/generations",
                json={"message": f"hold {i}"},
                headers={"Accept": "application/json"},
            )
            assert response.status_code == 202, response.text
        assert check_counts(await counts(database_url), "running", all_ended=False) == []

        # What a double decrement does: one more release, clamped at 0 as the SQL's are.
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            await conn.execute(
                "UPDATE user_running SET running_generations = greatest(0, running_generations - 1)"
                " WHERE user_id = (SELECT id FROM users WHERE username = 'watched')"
            )
        finally:
            await conn.close()
        found = check_counts(await counts(database_url), "meanwhile", all_ended=False)
        assert found == ["meanwhile: user watched: running_generations = 1, 2 running"]

        async def seen() -> bool:
            return bool(watcher.mismatches)

        await _until(seen, "the watcher to see it")
        generator.gate.set()

        async def ended() -> bool:
            return all(c.running == 0 for c in await counts(database_url))

        await _until(ended, "both answers to end")
    watcher.stop()
    await watching
    # Once nothing runs, the clamp has swallowed the extra decrement: the end state is clean,
    # which is why checking only the end could never fail.
    assert check_counts(await counts(database_url), "at the end", all_ended=True) == []
    assert [v.split(": ", 1)[1] for v in watcher.violations()] == [
        "user watched: running_generations = 1, 2 running"
    ]


async def test_a_queued_answer_whose_turn_came_and_that_nobody_takes_is_seen_waiting(
    database_url: str,
) -> None:
    token = await create_user(database_url, "queued")
    generator = GatedGenerator()  # never opened: the first answer runs until the shutdown
    settings = settings_for(database_url, shutdown_grace_seconds=0.2)
    server_running = running_server(settings, generator=generator)
    async with server_running as server, server.client(token) as client:
        project = await create_project(client)
        ids = []
        for policy in ("concurrent", "enqueue"):
            response = await client.post(
                f"/api/projects/{project}/generations",
                json={"message": f"{policy} answer", "on_running": policy},
                headers={"Accept": "application/json"},
            )
            assert response.status_code == 202, response.text
            ids.append(response.json()["assistant_message"]["id"])
        watcher = Watcher(database_url, time.monotonic())
        await watcher.sample_once()
        assert watcher.waiting == {}  # its turn has not come: the first answer runs
    # The only worker is gone: the first answer ended in its shutdown, the queued one stays
    # queued (its turn has come) and nobody takes it.
    watching = asyncio.create_task(watcher.run())

    async def waited() -> bool:
        first, last = watcher.waiting.get(ids[1], (0.0, 0.0))
        return last - first > 0.3

    await _until(waited, "the watcher to see the queued answer wait")
    watcher.stop()
    await watching
    assert [line.split(":")[0] for line in watcher.starved(0.3)] == [f"queued answer {ids[1]}"]
    assert watcher.starved(WAIT) == []
