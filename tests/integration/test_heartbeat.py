"""A worker whose heartbeat expired (a pause, an outage longer than the lease) gives its answers
up to the reapers and goes on under a new identity; a worker that is alive never loses its
answers: it takes none under an identity that may have expired, and one stuck renewal does not
expire it.

Regression: while the new identity was being registered, the flusher took "no identity yet" for a
message that cannot be stored and ended a healthy answer as `storage_error` (seen in the fault
suite, seed 3015).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from uuid import uuid4

import asyncpg
import httpx
import pytest

from server.db import Database, TimedConnection
from server.errors import DatabaseUnavailable, WorkerUnavailable
from server.heartbeat import Heartbeat
from server.store import Store
from tests.faults.proxy import FaultProxy
from tests.support import create_project, create_user, generate, running_server, settings_for

# The fault suite's lease: a renewal every second.
LEASE_SECONDS = 3.0
# Bounds on waiting (never on speed): for answers to end, and for a refused request to be taken.
ENDED_WITHIN = 60.0
ACCEPTED_WITHIN = 30.0


async def start_answer(client: httpx.AsyncClient, project: str, message: str) -> httpx.Response:
    """Start an answer (a retry of the same message is the same request: same key)."""
    return await client.post(
        f"/api/projects/{project}/generations",
        json={"message": message, "client_request_id": message.replace(" ", "-")},
        headers={"Accept": "application/json"},
    )


async def wait_ended(
    client: httpx.AsyncClient, answers: list[tuple[str, str]]
) -> list[dict[str, object]]:
    """The assistant messages ``(project, id)`` once every one of them has ended."""
    deadline = time.monotonic() + ENDED_WITHIN
    while True:
        found = [
            (await client.get(f"/api/projects/{project}/messages/{message}")).json()
            for project, message in answers
        ]
        if all(m.get("status") in ("success", "error", "cancelled") for m in found):
            return found
        assert time.monotonic() < deadline, f"answers still running: {found}"
        await asyncio.sleep(0.2)


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
        # The worker learns of it at its next renewal (the reaper may have been quicker).
        for _ in range(100):
            if heartbeat.trusted and heartbeat.id != expired:
                break
            await asyncio.sleep(0.05)
        assert heartbeat.registered and heartbeat.id != expired
        # The worker goes on under its new identity.
        events = await generate(client, project, "After the pause")
        assert events[-1].event == "done"


async def test_answers_started_right_after_an_outage_longer_than_the_lease_are_not_interrupted(
    database_url: str, proxy: FaultProxy
) -> None:
    """Regression ("Reliability II", 1): PostgreSQL refused for the lease and 2 s more; the moment
    it healed, the worker reserved new answers under its expired identity, their first flush
    found nothing held, and the reaper ended them `interrupted` on a worker that was alive. Now
    every answer taken succeeds, and a request refused meanwhile (503 with Retry-After) is taken
    when it is sent again a few seconds later."""
    token = await create_user(database_url, "alice")
    settings = settings_for(
        proxy.url_for(database_url),
        lease_seconds=LEASE_SECONDS,
        demo_deltas=10,
        demo_delta_ms=50,
        token_cache_seconds=60.0,  # the requests' sign-in is not what this test is about
    )
    async with running_server(settings) as srv, srv.client(token) as client:
        projects = [await create_project(client, f"project {i}") for i in range(8)]
        assert (await generate(client, projects[0], "Before the outage"))[-1].event == "done"
        expired = srv.services.worker.heartbeat.id

        proxy.refusing = True
        assert proxy.cut(1.0) > 0
        await asyncio.sleep(LEASE_SECONDS + 2)
        proxy.heal()

        async def send_until_taken(project: str, message: str) -> tuple[str, str]:
            deadline = time.monotonic() + ACCEPTED_WITHIN
            while True:
                response = await start_answer(client, project, message)
                if response.status_code == 202:
                    return project, response.json()["assistant_message"]["id"]
                assert response.status_code == 503, response.text
                assert int(response.headers["Retry-After"]) >= 1, response.headers
                assert time.monotonic() < deadline, f"still refused: {response.text}"
                await asyncio.sleep(int(response.headers["Retry-After"]))

        answers = await asyncio.gather(
            *(send_until_taken(p, f"Right after the outage {i}") for i, p in enumerate(projects))
        )
        for message in await wait_ended(client, answers):
            assert message["status"] == "success", message
        assert srv.services.worker.heartbeat.id != expired


async def test_a_renewal_stuck_on_a_half_open_connection_does_not_expire_a_live_worker(
    database_url: str, proxy: FaultProxy
) -> None:
    """Regression ("Reliability II", 5): renewals ran one after another on the heartbeat's one
    connection under a 30 s client timeout, so one renewal stuck on a half-open connection held
    back every later one past the lease, and the reaper ended every answer of a live worker. Now
    the stuck renewal is abandoned with its connection, the next runs on a fresh one on time, and
    the answers that run meanwhile succeed."""
    token = await create_user(database_url, "alice")
    settings = settings_for(
        proxy.url_for(database_url),
        lease_seconds=LEASE_SECONDS,
        demo_deltas=60,
        demo_delta_ms=100,  # 6 s: the answers run for two leases after the renewal sticks
        token_cache_seconds=60.0,
    )
    async with running_server(settings) as srv, srv.client(token) as client:
        heartbeat = srv.services.worker.heartbeat
        identity = heartbeat.id
        projects = [await create_project(client, f"project {i}") for i in range(3)]
        answers = []
        for i, project in enumerate(projects):
            response = await start_answer(client, project, f"Long answer {i}")
            assert response.status_code == 202, response.text
            answers.append((project, response.json()["assistant_message"]["id"]))

        # The connection that renews the heartbeat (only it sends renew_worker) goes half-open:
        # the next renewal is sent and never answered, and nothing says the connection is gone.
        deadline = time.monotonic() + ACCEPTED_WITHIN
        while proxy.stall_sending("UPDATE workers SET expires_at = now() +") == 0:
            assert time.monotonic() < deadline, "no connection has renewed the heartbeat"
            await asyncio.sleep(0.05)

        for message in await wait_ended(client, answers):
            assert message["status"] == "success", message
        assert heartbeat.id == identity and heartbeat.registered


@pytest.mark.parametrize("heartbeat", ["expired", "never registered"])
async def test_a_reservation_under_a_heartbeat_that_is_not_alive_is_refused_and_writes_nothing(
    database_url: str, heartbeat: str
) -> None:
    """The reservation checks the heartbeat itself, in its statement, as the flush and the claim
    of a queued answer do (before, it took any identity, and the reaper ended the answer)."""
    async with Store.single(database_url) as store:
        user_id = await store.create_token("alice", uuid4().bytes)
        project = await store.create_project(user_id, "reserved")
        worker = uuid4()
        if heartbeat == "expired":
            await store.register_worker(worker, 30, "test", 0)
            await store.expire_worker(worker)
        with pytest.raises(WorkerUnavailable):
            await store.reserve_pair(
                project_id=project.id,
                owner_id=user_id,
                content="hello",
                image_urls=[],
                client_request_id=None,
                lease_owner=worker,
                running_cap=10,
            )
    conn = await asyncpg.connect(database_url)
    try:
        # Nothing reserved: no sequence taken, no message, no running answer counted.
        assert await conn.fetchval("SELECT last_sequence FROM projects") == 0
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
        assert (
            await conn.fetchval("SELECT coalesce(sum(running_generations), 0) FROM user_running")
            == 0
        )
    finally:
        await conn.close()


async def test_a_heartbeat_not_renewed_for_a_lease_takes_nothing_and_registers_again_at_once(
    database_url: str, proxy: FaultProxy
) -> None:
    """By its own clock, a worker stops handing out its identity once a lease has passed since
    its last renewal began (before, it handed out the expired identity until a renewal told it),
    and it registers again as soon as the database answers."""
    expired: list[object] = []
    heartbeat = Heartbeat(proxy.url_for(database_url), lease_seconds=1.5, on_expired=expired.append)
    await heartbeat.open()
    first = heartbeat.current()
    beating = asyncio.create_task(heartbeat.run())
    try:
        proxy.refusing = True
        proxy.cut(1.0)

        async def until_current(refused: bool) -> object:
            deadline = time.monotonic() + ACCEPTED_WITHIN
            while True:
                try:
                    identity = heartbeat.current()
                except WorkerUnavailable:
                    if refused:
                        return None
                else:
                    if not refused:
                        return identity
                assert time.monotonic() < deadline, f"current() never {refused=}"
                await asyncio.sleep(0.02)

        await until_current(refused=True)
        await asyncio.sleep(1.5)  # the database's expiry, which comes a little later, passes too
        proxy.heal()
        second = await until_current(refused=False)
        assert second != first and expired == [first]
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        await heartbeat.close()


async def test_a_timed_connection_abandons_a_stuck_statement_and_the_next_runs_on_a_fresh_one(
    database_url: str, proxy: FaultProxy
) -> None:
    """What the heartbeat renews on: a statement on a half-open connection ends within the
    timeout (not asyncpg's 30 s), the connection is dropped, and the next statement opens a new
    one instead of queueing behind the stuck one."""
    connection = TimedConnection(proxy.url_for(database_url), timeout=1.0)
    worker = uuid4()
    try:
        await connection.fetch("register_worker", worker, 30, "test", 0)
        assert proxy.stall_sending("INSERT INTO workers") == 1
        with pytest.raises(DatabaseUnavailable):
            await connection.fetch("renew_worker", worker, 30)
        # The stalled connection never answers again: this one can only be a fresh one.
        assert await connection.fetch("renew_worker", worker, 30)
    finally:
        await connection.close()


async def test_the_pool_and_the_heartbeat_connections_look_types_up_without_jit_or_shard_hiding(
    database_url: str,
) -> None:
    """Regression (seen on Citus in the fault seed): asyncpg's type lookup on each new connection
    (uuid[], int4[]) took seconds with JIT on, and 1 to 3 s on a Citus coordinator that hid its
    shards from the catalogs; a heartbeat on a fresh connection missed its interval, and a live
    worker lost its answers. Every connection of the service's sets both off first."""
    db = Database(database_url, min_size=1, max_size=1)
    await db.open()
    try:
        async with db.pool.acquire() as conn:
            assert await conn.fetchval("SHOW jit") == "off"
            assert await conn.fetchval("SHOW citus.override_table_visibility") == "off"
    finally:
        await db.close()
    timed = TimedConnection(database_url, timeout=5.0)
    try:
        conn = await timed._connection()
        assert await conn.fetchval("SHOW jit") == "off"
        assert await conn.fetchval("SHOW citus.override_table_visibility") == "off"
    finally:
        timed.abandon()


async def test_readiness_says_not_ready_while_the_heartbeat_cannot_be_renewed(
    database_url: str,
) -> None:
    """A worker that takes no answer (its heartbeat not renewed for a lease, while the database
    answers other statements) is not ready: a load balancer sends its requests elsewhere.
    Regression: /readyz answered 200 while every generation was refused 503."""
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, lease_seconds=1.5)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        assert (await client.get("/readyz")).json() == {"status": "ready"}
        blocker = await asyncpg.connect(database_url)
        try:
            # Every renewal waits for the rows' lock, past its budget: none succeeds.
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("SELECT id FROM workers FOR UPDATE")
            deadline = time.monotonic() + ACCEPTED_WITHIN
            while (ready := await client.get("/readyz")).status_code == 200:
                assert time.monotonic() < deadline, "ready while its heartbeat is not renewed"
                await asyncio.sleep(0.05)
            assert ready.status_code == 503 and int(ready.headers["retry-after"]) > 0
            assert ready.json() == {"status": "heartbeat not renewed"}
            refused = await start_answer(client, project, "while not ready")
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "worker_unavailable"
            await transaction.rollback()
        finally:
            await blocker.close()
        deadline = time.monotonic() + ACCEPTED_WITHIN
        while (await client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "never ready again"
            await asyncio.sleep(0.05)
        accepted = await start_answer(client, project, "ready again")
        assert accepted.status_code == 202, accepted.text
