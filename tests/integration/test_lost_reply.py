"""A reservation whose reply was lost still gets its answer, on a busy server too.

`reserve_pair` can commit and its reply never arrive (the connection breaks in between): the
request fails (503), but the pair is written, `pending`, leased to this worker, and nothing runs
it. Regression: it stayed `pending` for as long as the worker lived (invariant 4 broken). The
worker's sweep of what is leased to it (`Queue`, every QUEUE_POLL_SECONDS) now starts it; a
reply that arrives after all finds it running and starts nothing twice.

Regression (Reliability II, item 3): the sweep ran only when the queue's wait timed out, and
every poke or `orderly_queue` NOTIFY ends that wait; under steady traffic (the page sends
`enqueue`) it never timed out, so the lost reservation stayed `pending` for good. A sweep on an
idle server cannot see that: these tests keep the queue woken far more often than it polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx

from server.auth import hash_token
from server.db import connect
from server.events import Event
from server.generators.base import Delta, GenerationContext, Item
from server.generators.demo import demo_answer
from server.queue import Queue
from server.runner import Runner
from server.store import Pair, Store
from server.worker import Worker
from tests.support import create_project, create_user, running_server, settings_for

# The slow poll of these tests, and how often steady traffic wakes the queue meanwhile: every
# wait of the queue ends long before its poll is due.
POLL_SECONDS = 1.0
TRAFFIC_SECONDS = 0.05
# The bound on "it is answered": liveness, not speed (many polls fit in it).
ANSWERED_WITHIN = 20.0


@contextlib.asynccontextmanager
async def steady_queue_traffic(database_url: str, project: str) -> AsyncIterator[None]:
    """Wake every worker's queue every TRAFFIC_SECONDS, as steady `enqueue` traffic does: a
    NOTIFY orderly_queue naming ``project`` (another project than the test's), the statement
    that ends an answer with queued ones behind it sends the same."""
    async with connect(database_url) as session:

        async def notify() -> None:
            while True:
                await session.execute_sql("SELECT pg_notify('orderly_queue', $1)", project)
                await asyncio.sleep(TRAFFIC_SECONDS)

        task = asyncio.create_task(notify())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def listening(worker: Worker) -> None:
    """Wait for the worker's LISTEN connection: its (re)connect makes the queue look everywhere
    once, which must not be what starts a lost reservation here."""
    for _ in range(int(ANSWERED_WITHIN / 0.05)):
        if worker.listener.connected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the worker never listened")


async def settled(worker: Worker) -> None:
    """Wait for the worker's queue to end the round that its listener's (re)connect asked for:
    a reservation made during that round may be started by it, not by the sweep under test."""
    for _ in range(int(ANSWERED_WITHIN / 0.05)):
        if worker.queue.idle:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the worker's queue never settled")


async def lost_reservation(runner: Runner, owner_id: uuid.UUID, project: str, text: str) -> Pair:
    """The reservation as the request made it, committed; its reply "lost": nothing started."""
    reservation = await runner.store.reserve_pair(
        project_id=uuid.UUID(project),
        owner_id=owner_id,
        content=text,
        image_urls=[],
        client_request_id=None,
        lease_owner=runner.worker(),
        running_cap=100,
        on_running="concurrent",
    )
    assert reservation is not None and not reservation.queued
    assert reservation.pair.assistant.message.id not in runner.flusher.logs
    return reservation.pair


async def answered(client: httpx.AsyncClient, project: str, message: uuid.UUID) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ANSWERED_WITHIN
    while loop.time() < deadline:
        found = (await client.get(f"/api/projects/{project}/messages/{message}")).json()
        if found["status"] not in ("pending", "streaming"):
            return dict(found)
        await asyncio.sleep(0.1)
    raise AssertionError(f"the lost reservation was not answered within {ANSWERED_WITHIN}s")


async def test_a_reservation_whose_reply_was_lost_is_answered_under_steady_traffic(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(
        database_url, queue_poll_seconds=POLL_SECONDS, demo_deltas=20, demo_delta_ms=50
    )
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        busy = await create_project(client, "the busy one")
        user = await srv.services.store.user_for_token_hash(hash_token(token))
        assert user is not None
        runner = srv.services.runner
        await listening(srv.services.worker)
        async with steady_queue_traffic(database_url, busy):
            pair = await lost_reservation(runner, user.id, project, "Lost in the reply")
            message = pair.assistant.message
            for _ in range(int(ANSWERED_WITHIN / 0.05)):
                if message.id in runner.tasks:
                    break
                await asyncio.sleep(0.05)
            assert message.id in runner.tasks, "the slow poll never started the lost reservation"
            task = runner.tasks[message.id]
            # Its reply arrives after all, while the answer runs: nothing starts twice.
            runner.start(pair)
            assert runner.tasks[message.id] is task
            found = await answered(client, project, message.id)
        assert found["status"] == "success"
        assert found["content"] == demo_answer("Lost in the reply")


class Counted:
    """Answers at once, and counts how often each prompt was generated."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        self.calls[context.prompt] += 1
        yield Delta("answer")


class HeldStore(Store):
    """The real store, whose ``events_after`` (the last read before the queue starts an answer)
    waits, once it has its rows, until the test lets it go: the window in which a late reply
    may start the answer and see it finish."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.db)
        self.read = asyncio.Event()
        self.go_on = asyncio.Event()

    async def events_after(
        self, owner_id: uuid.UUID, message_id: uuid.UUID, after: int, limit: int
    ) -> tuple[list[Event], bool]:
        found = await super().events_after(owner_id, message_id, after, limit)
        self.read.set()
        await self.go_on.wait()
        return found


async def test_the_sweep_does_not_start_again_an_answer_that_its_late_reply_ran_meanwhile(
    database_url: str,
) -> None:
    """Regression (Reliability II, item 9): the sweep read the lost reservation as `pending`;
    before it started it, the late reply started it and it finished (its log left memory); then
    the sweep started it a second time (a second generation of an answered message)."""
    token = await create_user(database_url, "alice")
    generator = Counted()
    settings = settings_for(database_url, queue_poll_seconds=600)
    async with (
        running_server(settings, generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        user = await srv.services.store.user_for_token_hash(hash_token(token))
        assert user is not None
        runner = srv.services.runner
        await listening(srv.services.worker)
        await settled(srv.services.worker)  # its own sweep of our leases is done
        pair = await lost_reservation(runner, user.id, project, "Twice?")
        message = pair.assistant.message
        held = HeldStore(runner.store)
        sweep = asyncio.create_task(Queue(held, runner, poll_seconds=600).round())
        await asyncio.wait_for(held.read.wait(), ANSWERED_WITHIN)
        runner.start(pair)  # the reply arrives after all
        found = await answered(client, project, message.id)
        assert found["status"] == "success"
        for _ in range(int(ANSWERED_WITHIN / 0.05)):
            if message.id not in runner.flusher.logs:
                break
            await asyncio.sleep(0.05)
        assert message.id not in runner.flusher.logs
        held.go_on.set()
        await sweep
        assert message.id not in runner.tasks, "the sweep started the answered message again"
        assert generator.calls["Twice?"] == 1
