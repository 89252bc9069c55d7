"""A reservation whose reply was lost still gets its answer.

`reserve_pair` can commit and its reply never arrive (the connection breaks in between): the
request fails (503), but the pair is written, `pending`, leased to this worker, and nothing runs
it. Regression: it stayed `pending` for as long as the worker lived (invariant 4 broken). The
worker's sweep of what is leased to it (`Queue`, every QUEUE_POLL_SECONDS) now starts it; a
reply that arrives after all finds it running and starts nothing twice.
"""

from __future__ import annotations

import asyncio
import uuid

from server.auth import hash_token
from server.generators.demo import demo_answer
from tests.support import create_project, create_user, running_server, settings_for


async def test_a_reservation_whose_reply_was_lost_is_answered(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, queue_poll_seconds=0.2, demo_deltas=20, demo_delta_ms=50)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        user = await srv.services.store.user_for_token_hash(hash_token(token))
        assert user is not None
        runner = srv.services.runner
        # The reservation as the request made it, committed; its reply "lost": nothing started.
        reservation = await runner.store.reserve_pair(
            project_id=uuid.UUID(project),
            owner_id=user.id,
            content="Lost in the reply",
            image_urls=[],
            client_request_id=None,
            lease_owner=runner.worker(),
            running_cap=100,
            on_running="concurrent",
        )
        assert reservation is not None and not reservation.queued
        pair = reservation.pair
        message = pair.assistant.message
        assert message.id not in runner.flusher.logs

        async def answered() -> dict[str, object]:
            for _ in range(100):
                found = (await client.get(f"/api/projects/{project}/messages/{message.id}")).json()
                if found["status"] not in ("pending", "streaming"):
                    return dict(found)
                await asyncio.sleep(0.1)
            raise AssertionError("the lost reservation was never answered")

        for _ in range(100):
            if message.id in runner.tasks:
                break
            await asyncio.sleep(0.05)
        task = runner.tasks[message.id]
        # Its reply arrives after all, while the answer runs: nothing starts twice.
        runner.start(pair)
        assert runner.tasks[message.id] is task
        found = await answered()
        assert found["status"] == "success"
        assert found["content"] == demo_answer("Lost in the reply")
