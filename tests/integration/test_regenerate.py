"""Regenerate: a new answer for the question of a project's latest answer, as a new variant of
its sequence (docs/api.md, "Regenerate"). History shows each sequence's current variant, the
context of later turns uses current variants only, and the earlier variants are kept.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from server.generators.base import Delta, GenerationContext, Item
from tests.integration.test_survival import db_rows
from tests.support import (
    GatedGenerator,
    create_project,
    create_user,
    events_only,
    read_stream,
    running_server,
    settings_for,
)

JSON = {"Accept": "application/json"}


class Numbered:
    """Answers "answer <n> to <prompt>" (n counts every generation), and records the context
    (role, content) each prompt was given, in order."""

    def __init__(self) -> None:
        self.counter = itertools.count(1)
        self.contexts: list[tuple[str, list[tuple[str, str]]]] = []

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        n = next(self.counter)
        history = await context.load_history()
        self.contexts.append((context.prompt, [(m.role, m.content) for m in history]))
        yield Delta(f"answer {n} ")
        yield Delta(f"to {context.prompt}")


def regen_url(project: str, message: str) -> str:
    return f"/api/projects/{project}/messages/{message}/regenerate"


async def ask(client: httpx.AsyncClient, project: str, message: str, **body: Any) -> dict[str, Any]:
    """A generation, read to its end; its assistant message as the done event shows it."""
    response, frames = await read_stream(
        client, "POST", f"/api/projects/{project}/generations", json={"message": message, **body}
    )
    assert response.status_code == 200, response.text
    done = events_only(frames)[-1]
    assert done.event == "done", done
    answer: dict[str, Any] = done.data["message"]
    return answer


async def regenerate(
    client: httpx.AsyncClient, project: str, message: str, **body: Any
) -> dict[str, Any]:
    """A regenerate, streamed to its end; its assistant message as the done event shows it."""
    response, frames = await read_stream(client, "POST", regen_url(project, message), json=body)
    assert response.status_code == 200, response.text
    events = events_only(frames)
    assert events[0].event == "start"
    assert events[-1].event == "done", events[-1]
    answer: dict[str, Any] = events[-1].data["message"]
    return answer


async def history(client: httpx.AsyncClient, project: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/projects/{project}/messages")
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


async def variants(client: httpx.AsyncClient, project: str, message: str) -> dict[str, Any]:
    response = await client.get(f"/api/projects/{project}/messages/{message}/variants")
    assert response.status_code == 200, response.text
    listed: dict[str, Any] = response.json()
    return listed


async def test_a_regenerated_answer_is_a_new_current_variant_and_the_old_one_is_kept(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    script = Numbered()
    async with (
        running_server(settings_for(database_url), generator=script) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        await ask(client, project, "first")
        old = await ask(client, project, "second")
        assert (old["variant"], old["variants"]) == (1, 1)

        new = await regenerate(client, project, old["id"])
        assert new["id"] != old["id"]
        assert (new["sequence"], new["variant"], new["variants"]) == (4, 2, 2)
        assert new["content"] == "answer 3 to second"
        # Its context: the turns before its question, as for the first answer.
        assert script.contexts[-1] == (
            "second",
            [("user", "first"), ("assistant", "answer 1 to first")],
        )

        shown = await history(client, project)
        assert [m["sequence"] for m in shown] == [1, 2, 3, 4]
        assert [m["id"] for m in shown][3] == new["id"]
        assert [(m["variant"], m["variants"]) for m in shown] == [(1, 1), (1, 1), (1, 1), (2, 2)]

        listed = await variants(client, project, old["id"])
        assert listed["current"] == 2
        assert [v["id"] for v in listed["variants"]] == [old["id"], new["id"]]
        assert [v["content"] for v in listed["variants"]] == [
            "answer 2 to second",
            "answer 3 to second",
        ]
        assert all(v["status"] == "success" for v in listed["variants"])

        # The first variant chosen again: history shows it, and the next turn's context has it.
        chosen = await client.post(f"/api/projects/{project}/messages/{old['id']}/current")
        assert chosen.status_code == 200, chosen.text
        assert chosen.json()["current"] == 1
        assert (await history(client, project))[3]["id"] == old["id"]
        await ask(client, project, "third")
        assert script.contexts[-1] == (
            "third",
            [
                ("user", "first"),
                ("assistant", "answer 1 to first"),
                ("user", "second"),
                ("assistant", "answer 2 to second"),
            ],
        )
        # The stored rows: one current row per sequence, the pair invariant with variants.
        rows = await db_rows(
            database_url,
            "SELECT sequence, variant, role, is_current FROM messages ORDER BY sequence, variant",
        )
        assert [(r["sequence"], r["variant"], r["role"], r["is_current"]) for r in rows] == [
            (1, 1, "user", True),
            (2, 1, "assistant", True),
            (3, 1, "user", True),
            (4, 1, "assistant", True),
            (4, 2, "assistant", False),
            (5, 1, "user", True),
            (6, 1, "assistant", True),
        ]


async def test_only_the_latest_answer_is_regenerated_or_switched(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        first = await ask(client, project, "first")
        latest = await ask(client, project, "second")
        before = await db_rows(database_url, "SELECT id FROM messages ORDER BY id")

        response = await client.post(regen_url(project, first["id"]), json={}, headers=JSON)
        assert response.status_code == 409, response.text
        assert response.json()["code"] == "not_latest_answer"
        response = await client.post(f"/api/projects/{project}/messages/{first['id']}/current")
        assert response.status_code == 409
        assert response.json()["code"] == "not_latest_answer"

        question = (await history(client, project))[2]
        for message in (question["id"], "01a238c4-e42c-77b6-8a83-8b889f2937eb"):
            response = await client.post(regen_url(project, message), json={}, headers=JSON)
            assert response.status_code == 404, response.text
            response = await client.get(f"/api/projects/{project}/messages/{message}/variants")
            assert response.status_code == 404
        other = await create_project(client, "another")
        response = await client.post(regen_url(other, latest["id"]), json={}, headers=JSON)
        assert response.status_code == 404
        response = await client.post(
            regen_url(project, latest["id"]), json={"on_running": "sometimes"}, headers=JSON
        )
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_on_running"
        assert await db_rows(database_url, "SELECT id FROM messages ORDER BY id") == before

        # Someone else's project: 404, as every route of a project that is not yours.
        bob = await create_user(database_url, "bob")
        async with srv.client(bob) as theirs:
            response = await theirs.post(regen_url(project, latest["id"]), headers=JSON)
            assert response.status_code == 404
        # An empty body is a regenerate with the defaults.
        response = await client.post(regen_url(project, latest["id"]), headers=JSON)
        assert response.status_code == 202, response.text
        assert response.json()["assistant_message"]["variant"] == 2


async def test_a_repeated_regenerate_finds_its_variant(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        answer = await ask(client, project, "first", client_request_id="ask-1")
        body = {"client_request_id": "again-1"}
        made = await client.post(regen_url(project, answer["id"]), json=body, headers=JSON)
        assert made.status_code == 202, made.text
        again = await client.post(regen_url(project, answer["id"]), json=body, headers=JSON)
        assert again.status_code == 202, again.text
        assert again.json()["assistant_message"]["id"] == made.json()["assistant_message"]["id"]
        assert again.json()["user_message"]["id"] == made.json()["user_message"]["id"]
        # Through the variant's own id too (any variant of the latest answer names it).
        variant = made.json()["assistant_message"]["id"]
        third = await client.post(regen_url(project, variant), json=body, headers=JSON)
        assert third.json()["assistant_message"]["id"] == variant
        # A key a generation used is not a regenerate's.
        reused = await client.post(
            regen_url(project, answer["id"]), json={"client_request_id": "ask-1"}, headers=JSON
        )
        assert reused.status_code == 409, reused.text
        assert reused.json()["code"] == "idempotency_key_reused"
        rows = await db_rows(database_url, "SELECT variant FROM messages WHERE sequence = 2")
        assert sorted(r["variant"] for r in rows) == [1, 2]


async def test_regenerating_a_running_answer_follows_on_running(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    gated = GatedGenerator()
    async with (
        running_server(settings_for(database_url), generator=gated) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        started = await client.post(
            f"/api/projects/{project}/generations", json={"message": "first"}, headers=JSON
        )
        running = started.json()["assistant_message"]
        # Its first delta is stored before anything cancels it: a cancel ends an answer with
        # the content of its stored deltas (regression: the test raced the first flush).
        for _ in range(100):
            shown = await client.get(f"/api/projects/{project}/messages/{running['id']}")
            if shown.json()["content"] == "first ":
                break
            await asyncio.sleep(0.05)
        refused = await client.post(
            regen_url(project, running["id"]), json={"on_running": "reject"}, headers=JSON
        )
        assert refused.status_code == 409
        assert refused.json()["code"] == "answer_running"
        assert refused.json()["running_message_id"] == running["id"]

        queued = await client.post(
            regen_url(project, running["id"]), json={"on_running": "enqueue"}, headers=JSON
        )
        assert queued.status_code == 202, queued.text
        waiting = queued.json()["assistant_message"]
        assert waiting["variant"] == 2 and waiting["status"] == "pending"

        cutting = await client.post(
            regen_url(project, running["id"]), json={"on_running": "interrupt"}, headers=JSON
        )
        assert cutting.status_code == 202, cutting.text
        newest = cutting.json()["assistant_message"]
        assert newest["variant"] == 3
        gated.gate.set()
        listed: dict[str, Any] = {}
        for _ in range(100):
            listed = await variants(client, project, running["id"])
            if all(v["status"] not in ("pending", "streaming") for v in listed["variants"]):
                break
            await asyncio.sleep(0.05)
        # The interrupt cancelled both earlier variants of its sequence (the queued one too).
        assert [v["status"] for v in listed["variants"]] == ["cancelled", "cancelled", "success"]
        assert listed["variants"][0]["content"] == "first "
        assert listed["current"] == 3


@pytest.mark.parametrize("attempts", [12])
async def test_concurrent_regenerates_make_distinct_variants_and_one_current(
    database_url: str, attempts: int
) -> None:
    """Many regenerates of one answer at once, beside a chooser: every variant gets its own
    number, exactly one row of the sequence is current, and no sequence moves."""
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        answer = await ask(client, project, "first")

        async def one(n: int) -> httpx.Response:
            if n % 4 == 3:
                return await client.post(f"/api/projects/{project}/messages/{answer['id']}/current")
            return await client.post(regen_url(project, answer["id"]), json={}, headers=JSON)

        responses = await asyncio.gather(*(one(n) for n in range(attempts)))
        assert all(r.status_code in (200, 202) for r in responses), [r.text for r in responses]
        made = [r.json()["assistant_message"]["variant"] for r in responses if r.status_code == 202]
        rows = await db_rows(
            database_url, "SELECT sequence, variant, is_current FROM messages ORDER BY 1, 2"
        )
        assert sorted(made) == list(range(2, len(made) + 2))
        assert [r["sequence"] for r in rows] == [1] + [2] * (len(made) + 1)
        assert sum(r["is_current"] for r in rows if r["sequence"] == 2) == 1
        listed = await variants(client, project, answer["id"])
        assert [v["variant"] for v in listed["variants"]] == list(range(1, len(made) + 2))
