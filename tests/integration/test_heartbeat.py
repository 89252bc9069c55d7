"""A worker whose heartbeat expired (a pause, an outage longer than the lease) gives its answers
up to the reapers and goes on under a new identity.

Regression: while the new identity was being registered, the flusher took "no identity yet" for a
message that cannot be stored and ended a healthy answer as `storage_error` (seen in the fault
suite, seed 3015).
"""

from __future__ import annotations

import asyncio

import asyncpg

from tests.support import create_project, create_user, generate, running_server, settings_for


async def test_an_expired_heartbeat_gives_its_answers_up_and_the_worker_goes_on(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, lease_seconds=0.6, demo_deltas=40, demo_delta_ms=50)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        accepted = [
            (
                await client.post(
                    f"/api/projects/{project}/generations",
                    json={"message": f"Slow answer {i}"},
                    headers={"Accept": "application/json"},
                )
            ).json()
            for i in range(3)
        ]
        await asyncio.sleep(0.3)
        heartbeat = srv.services.worker.heartbeat
        expired = heartbeat.id
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE workers SET expires_at = now() - interval '1 second' WHERE id = $1",
                expired,
            )
        finally:
            await conn.close()

        async def ended() -> list[dict[str, object]]:
            for _ in range(100):
                found = [
                    (
                        await client.get(
                            f"/api/projects/{project}/messages/{a['assistant_message']['id']}"
                        )
                    ).json()
                    for a in accepted
                ]
                if all(m["status"] not in ("pending", "streaming") for m in found):
                    return found
                await asyncio.sleep(0.1)
            raise AssertionError("the answers of the expired heartbeat did not end")

        for message in await ended():
            assert message["status"] == "error", message
            assert message["error"]["code"] == "interrupted", message["error"]
        assert heartbeat.registered and heartbeat.id != expired
        # The worker goes on under its new identity.
        events = await generate(client, project, "After the pause")
        assert events[-1].event == "done"
