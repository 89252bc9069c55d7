"""MAX_STREAMS_PER_USER: the open streams one user may hold on a worker.

Every listener of an answer is its owner's (projects are not shared), and each listener on
another worker than the writer's reads the table at every write of the answer: without a cap
one user could open thousands of streams on one answer. Beyond the cap a stream is refused with
429 ``too_many_streams_per_user`` and ``Retry-After``, before anything is reserved or read.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.support import (
    GatedGenerator,
    RunningServer,
    assistant_count,
    create_project,
    create_user,
    running_server,
    settings_for,
)

CAP = 3


async def _slots_back(srv: RunningServer, expected: int) -> None:
    """Wait (bounded) for the server to have closed the streams the test's client hung up."""
    for _ in range(250):
        if srv.services.worker.streams.open == expected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{srv.services.worker.streams.open} stream slots held, not {expected}")


def _assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "too_many_streams_per_user"
    assert response.headers["retry-after"] == "5"


async def test_streams_per_user_cap_holds_exactly_under_a_burst(database_url: str) -> None:
    alice = await create_user(database_url, "alice")
    bob = await create_user(database_url, "bob")
    generator = GatedGenerator()
    settings = settings_for(database_url, max_streams_per_user=CAP, max_streams_per_worker=100)
    async with (
        running_server(settings, generator=generator) as srv,
        srv.client(alice) as client,
        srv.client(bob) as bobs,
    ):
        project = await create_project(client)
        started = await client.post(
            f"/api/projects/{project}/generations",
            json={"message": "a long answer"},
            headers={"Accept": "application/json"},
        )
        assert started.status_code == 202
        events_url = started.json()["events_url"]
        held: list[httpx.Response] = []
        refused: list[httpx.Response] = []
        all_answered, hang_up = asyncio.Event(), asyncio.Event()
        attempts = 12

        async def attach() -> None:
            async with client.stream("GET", events_url) as response:
                if response.status_code == 200:
                    held.append(response)
                else:
                    await response.aread()
                    refused.append(response)
                if len(held) + len(refused) == attempts:
                    all_answered.set()
                await hang_up.wait()  # a stream that opened stays open until then

        tasks = [asyncio.create_task(attach()) for _ in range(attempts)]
        try:
            await asyncio.wait_for(all_answered.wait(), 30)
            assert (len(held), len(refused)) == (CAP, attempts - CAP)
            for response in refused:
                _assert_refused(response)
            # While alice holds hers, a new generation's stream is refused before anything is
            # reserved; bob, another user, still gets his.
            gen = await client.post(f"/api/projects/{project}/generations", json={"message": "b"})
            _assert_refused(gen)
            assert await assistant_count(database_url) == 1
            bobs_project = await create_project(bobs)
            async with bobs.stream(
                "POST", f"/api/projects/{bobs_project}/generations", json={"message": "hi"}
            ) as his:
                assert his.status_code == 200
        finally:
            all_answered.set()
            hang_up.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        # Hung up: the slots come back, and alice may attach again.
        await _slots_back(srv, 0)
        async with client.stream("GET", events_url) as again:
            assert again.status_code == 200
        generator.gate.set()


async def test_a_stream_refused_for_another_reason_keeps_no_slot(database_url: str) -> None:
    """The slot is taken before the message is looked up: every refusal gives it back."""
    alice = await create_user(database_url, "alice")
    settings = settings_for(database_url, max_streams_per_user=1, demo_deltas=2)
    async with running_server(settings) as srv, srv.client(alice) as client:
        project = await create_project(client)
        unknown = f"/api/projects/{project}/messages/{uuid.uuid4()}/events"
        for _ in range(3):
            assert (await client.get(unknown)).status_code == 404
        done = await client.post(
            f"/api/projects/{project}/generations", json={"message": "to the end"}
        )
        assert done.status_code == 200
        user_message = done.text.split('"user_message":{"id":"', 1)[1].split('"', 1)[0]
        not_an_answer = f"/api/projects/{project}/messages/{user_message}/events"
        assert (await client.get(not_an_answer)).status_code == 404
        await _slots_back(srv, 0)
        assert srv.services.worker.streams.open == 0
