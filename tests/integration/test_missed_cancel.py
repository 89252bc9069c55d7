"""A cancel whose NOTIFY was missed while the LISTEN connection was down still stops its writer.

Another worker (or the reaper) ends an answer that this worker writes, and says so with NOTIFY
orderly_cancel; a worker whose LISTEN connection is down at that moment never hears it. A writer
with news finds out at its next flush (the fence refuses it), but one waiting for its next token
(a slow model: up to a minute) kept going for as long as it waited. Regression (Reliability II,
item 9): after the LISTEN connection reconnects, the worker now re-checks which of its running
answers were ended by someone else, and stops those.
"""

from __future__ import annotations

import uuid

from server.db import connect
from server.store import Store
from tests.integration.test_lost_reply import ANSWERED_WITHIN, listening
from tests.integration.test_survival import eventually, start_json
from tests.support import GatedGenerator, create_project, create_user, running_server, settings_for


async def test_a_cancel_sent_while_the_listener_was_down_stops_the_writer(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    generator = GatedGenerator()  # writes "first ", then waits for the test
    settings = settings_for(database_url, queue_poll_seconds=600)
    async with (
        running_server(settings, generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        worker = srv.services.worker
        runner = srv.services.runner
        await listening(worker)
        accepted = await start_json(client, project, "hello")
        message_id = uuid.UUID(accepted["assistant_message"]["id"])

        async def first_token_written() -> bool:
            log = runner.local_log(message_id)
            return log is not None and log.visible >= 2

        await eventually(first_token_written, ANSWERED_WITHIN, "the first token to be written")
        assert message_id in runner.tasks
        async with connect(database_url) as elsewhere:
            owner = await elsewhere.fetchval_sql(
                "SELECT owner_id FROM projects WHERE id = $1", uuid.UUID(project)
            )
            async with elsewhere.transaction():
                # Another worker cancels it; its NOTIFY goes out at COMMIT, and by then every
                # connection of this worker is cut, its LISTEN connection included (the server
                # waits for each to end: it hears nothing of this NOTIFY).
                closed = await elsewhere.fetch(
                    "close_message",
                    owner,
                    uuid.UUID(project),
                    message_id,
                    "cancelled",
                    None,
                    None,
                    owner,
                )
                assert len(closed) == 1
                await elsewhere.execute_sql(
                    "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )

        async def writer_stopped() -> bool:
            return message_id not in runner.tasks and runner.local_log(message_id) is None

        await eventually(writer_stopped, ANSWERED_WITHIN, "the cancelled writer to stop")
        assert worker.listener.connected
        generator.gate.set()
    async with Store.single(database_url) as store:
        found = await store.message_by_id(owner, uuid.UUID(project), message_id)
    assert found is not None
    assert (found.message.status, found.message.content) == ("cancelled", "first ")
