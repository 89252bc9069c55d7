"""The AI SDK as a client: the real `ai` package (pinned in tests/node/package-lock.json,
installed by `make test` with `npm ci`) talks to /api/chat from Node (tests/node/chat.mjs), and
what it saw is checked against what the server stored.

Node and npm are needed: without them these tests fail under CI=true, and are skipped elsewhere
(saying so)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.chat import chat_project_id
from server.generators.base import Delta, GenerationContext, GeneratorError, Item
from server.generators.demo import CALL_TOOL, DEMO_TOOL, demo_answer, demo_reasoning
from tests.support import GatedGenerator, create_user, running_server, settings_for

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
RUN_WITHIN = 60.0


def node_ready() -> None:
    missing = shutil.which("node") is None or not (NODE_DIR / "node_modules" / "ai").is_dir()
    if missing:
        why = "node, or tests/node/node_modules (make test runs npm ci there), is missing"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


async def sdk(scenario: str, base: str, token: str, chat_id: str, **env: str) -> dict[str, Any]:
    """Run a scenario of tests/node/chat.mjs; what it saw."""
    node_ready()
    process = await asyncio.create_subprocess_exec(
        "node",
        "chat.mjs",
        scenario,
        base,
        token,
        chat_id,
        cwd=NODE_DIR,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), RUN_WITHIN)
    assert process.returncode == 0, (out.decode(), err.decode())
    result: dict[str, Any] = json.loads(out)
    return result


async def the_project(client: httpx.AsyncClient) -> dict[str, Any]:
    """The one project of the caller: the one its chat made."""
    projects: list[dict[str, Any]] = (await client.get("/api/projects")).json()["projects"]
    assert len(projects) == 1, projects
    return projects[0]


async def stored(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    project = (await the_project(client))["id"]
    response = await client.get(f"/api/projects/{project}/messages")
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


def text_of(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == "text")


async def test_a_message_sent_with_the_transport_is_answered_and_stored(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        seen = await sdk("send", srv.base_url, token, "Ab3dE6gH9jK2mN5p")
        messages = await stored(client)
        project = await the_project(client)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == "Hello from the AI SDK"
    assert seen["text"] == messages[1]["content"] == demo_answer("Hello from the AI SDK")
    assert seen["message"]["id"] == messages[1]["id"]  # the UI message is the stored answer
    assert seen["message"]["metadata"]["usage"] == messages[1]["usage"]
    assert project["title"] == "Hello from the AI SDK"


async def test_an_aborted_answer_is_read_to_its_end_on_reconnect_and_then_nothing_runs(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=40, demo_delta_ms=25)
    async with running_server(settings) as srv, srv.client(token) as client:
        seen = await sdk("resume", srv.base_url, token, "resumeChat000001")
        messages = await stored(client)
    answer = messages[1]
    assert answer["status"] == "success"
    assert seen["before"] and answer["content"].startswith(seen["before"])
    assert seen["reconnected"] is not None, "the answer ended before the reconnect"
    assert seen["reconnected"]["id"] == answer["id"] == seen["messageId"]
    assert seen["text"] == answer["content"] == demo_answer("A long one, please")
    assert seen["after"] is None  # the answer ended: reconnectToStream gives null (204)


async def test_the_chunks_follow_the_sdk_schema_in_order(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        seen = await sdk("chunks", srv.base_url, token, "chunksChat000001", PROMPT="/think twice")
        messages = await stored(client)
    types = [c["type"] for c in seen["chunks"]]
    assert types[:2] == ["start", "start-step"]
    assert seen["chunks"][0]["messageId"] == messages[1]["id"]
    assert types[-2:] == ["finish-step", "finish"]
    assert seen["chunks"][-1]["finishReason"] == "stop"
    reasoning = [c["delta"] for c in seen["chunks"] if c["type"] == "reasoning-delta"]
    text = [c["delta"] for c in seen["chunks"] if c["type"] == "text-delta"]
    assert "".join(reasoning) == messages[1]["reasoning"] == demo_reasoning("/think twice")
    assert "".join(text) == messages[1]["content"]
    progress = [c for c in seen["chunks"] if c["type"] == "data-progress"]
    assert progress and all(c["transient"] for c in progress)
    # Parts open before their deltas and close before the next part.
    assert types.index("reasoning-start") < types.index("reasoning-delta")
    assert types.index("reasoning-end") < types.index("text-start") < types.index("text-end")


async def test_regenerate_from_the_sdk_makes_a_second_variant(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        seen = await sdk("regenerate", srv.base_url, token, "regenChat0000001")
        messages = await stored(client)
        project = (await the_project(client))["id"]
        variants = (
            await client.get(f"/api/projects/{project}/messages/{messages[1]['id']}/variants")
        ).json()
    assert seen["error"] is None
    assert seen["roles"] == ["user", "assistant"]
    assert seen["second"]["id"] == messages[1]["id"] != seen["first"]["id"]
    assert [v["id"] for v in variants["variants"]] == [seen["first"]["id"], seen["second"]["id"]]
    assert seen["second"]["text"] == messages[1]["content"] == demo_answer("Say it twice")


async def test_a_reasoning_answer_shows_its_reasoning_as_a_part(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        seen = await sdk("reasoning", srv.base_url, token, "thinkChat0000001")
        messages = await stored(client)
    assert seen["error"] is None
    kinds = [p["type"] for p in seen["parts"]]
    assert "reasoning" in kinds and "text" in kinds
    reasoning = next(p for p in seen["parts"] if p["type"] == "reasoning")
    assert reasoning["text"] == messages[1]["reasoning"]
    assert text_of({"parts": seen["parts"]}) == messages[1]["content"]


async def test_a_tool_call_answered_on_the_client_continues_the_same_ui_message(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        seen = await sdk("tool", srv.base_url, token, "toolChat00000001")
        messages = await stored(client)
    assert seen["error"] is None
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    call = messages[1]["tool_calls"][0]
    assert [c["toolName"] for c in seen["calls"]] == [DEMO_TOOL]
    assert seen["calls"][0]["toolCallId"] == call["id"]
    assert seen["calls"][0]["input"] == json.loads(call["arguments"])
    assert messages[2]["tool_results"] == [
        {"tool_call_id": call["id"], "content": "12:34 in the test"}
    ]
    # One UI message for the whole chain: the call, its output, then the text of the answer
    # that continued it.
    assert [m["role"] for m in seen["messages"]] == ["user", "assistant"]
    ui = seen["messages"][1]
    assert ui["id"] == messages[1]["id"]
    tool_part = next(p for p in ui["parts"] if p["type"] == f"tool-{DEMO_TOOL}")
    assert tool_part["state"] == "output-available"
    assert tool_part["output"] == "12:34 in the test"
    assert text_of(ui) == messages[3]["content"]
    assert messages[0]["content"].startswith(CALL_TOOL)


async def test_the_chat_stop_route_ends_the_running_answer(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    gated = GatedGenerator()
    async with (
        running_server(settings_for(database_url), generator=gated) as srv,
        srv.client(token) as client,
    ):
        seen = await sdk("stop", srv.base_url, token, "stopChat00000001")
        messages = await stored(client)
    assert seen["status"] == 200
    assert seen["stopped"]["cancelled"] == [messages[1]["id"]]
    assert messages[1]["status"] == "cancelled"
    assert messages[1]["content"] == "first "
    assert seen["after"] is None


async def test_a_chat_id_that_is_another_users_project_is_not_found(database_url: str) -> None:
    alice, bob = await create_user(database_url, "alice"), await create_user(database_url, "bob")
    async with (
        running_server(settings_for(database_url)) as srv,
        srv.client(alice) as on_alice,
        srv.client(bob) as on_bob,
    ):
        project = (await on_alice.post("/api/projects", json={"title": "mine"})).json()["id"]
        body = {
            "id": project,
            "trigger": "submit-message",
            "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
        }
        response = await on_bob.post("/api/chat", json=body)
        assert response.status_code == 404, response.text
        assert (await on_bob.post(f"/api/chat/{project}/stop")).status_code == 404
        assert (await on_bob.get(f"/api/chat/{project}/stream")).status_code == 204
        # A chat id that is not a UUID is the caller's own: bob's chat of the same id is his.
        named = {**body, "id": "sharedName000001"}
        for client in (on_alice, on_bob):
            async with client.stream("POST", "/api/chat", json=named) as response:
                assert response.status_code == 200
                await response.aread()
        bobs = (await on_bob.get("/api/projects")).json()["projects"]
        assert [p["title"] for p in bobs] == ["hi"]
        # The owner's chat under the project's id is the project itself.
        async with on_alice.stream("POST", "/api/chat", json=body) as own:
            assert own.status_code == 200
            assert own.headers["x-vercel-ai-ui-message-stream"] == "v1"
            await own.aread()
        history = (await on_alice.get(f"/api/projects/{project}/messages")).json()["messages"]
    assert [m["content"] for m in history][:1] == ["hi"]
    assert chat_project_id(project, uuid.uuid4()) == (uuid.UUID(project), False)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"messageId": "u1", "parts": [{"type": "text", "text": "edited"}]},
            409,
            "chat_edit_not_supported",
        ),
        (
            {
                "parts": [
                    {"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,"}
                ]
            },
            422,
            "chat_file_not_supported",
        ),
        ({"parts": [{"type": "text", "text": "   "}]}, 422, "chat_message_empty"),
    ],
)
async def test_what_the_chat_route_refuses(
    database_url: str, body: dict[str, Any], status: int, code: str
) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        message = {"id": "u1", "role": "user", "parts": body["parts"]}
        request = {"id": "refusedChat00001", "trigger": "submit-message", "messages": [message]}
        if "messageId" in body:
            request["messageId"] = body["messageId"]
        response = await client.post("/api/chat", json=request)
        assert response.status_code == status, response.text
        assert response.json()["code"] == code
        # Nothing was written, not even the chat's project.
        assert (await client.get("/api/projects")).json()["projects"] == []


async def test_an_image_file_part_at_an_http_url_is_one_of_the_image_urls(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    image = {"type": "file", "mediaType": "image/png", "url": "https://example.com/cat.png"}
    message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "a cat?"}, image]}
    body = {"id": "imageChat0000001", "trigger": "submit-message", "messages": [message]}
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        async with client.stream("POST", "/api/chat", json=body) as response:
            assert response.status_code == 200
            await response.aread()
        messages = await stored(client)
    assert messages[0]["content"] == "a cat?"
    assert messages[0]["image_urls"] == ["https://example.com/cat.png"]


async def test_the_page_session_cookie_works_and_a_cross_origin_post_does_not(
    database_url: str,
) -> None:
    """The transport with ``credentials: "include"`` on the page's origin: the session cookie
    authenticates every chat route; a cookie POST from another origin is refused."""
    token = await create_user(database_url, "alice")
    body = {
        "id": "cookieChat000001",
        "trigger": "submit-message",
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
    }
    async with running_server(settings_for(database_url)) as srv:
        async with srv.client(headers={"Origin": srv.base_url}) as browser:
            assert (await browser.post("/api/session", json={"token": token})).status_code == 204
            async with browser.stream("POST", "/api/chat", json=body) as response:
                assert response.status_code == 200, await response.aread()
                text = (await response.aread()).decode()
            assert text.rstrip().endswith("data: [DONE]")
            assert (await browser.get("/api/chat/cookieChat000001/stream")).status_code == 204
            stopped = await browser.post("/api/chat/cookieChat000001/stop")
            assert stopped.status_code == 200 and stopped.json() == {"cancelled": []}
            cookies = browser.cookies
        async with srv.client(headers={"Origin": "https://elsewhere.example"}) as other:
            other.cookies = cookies
            refused = await other.post("/api/chat", json=body)
            assert refused.status_code == 401
            assert refused.json()["code"] == "cross_origin_request"


async def failing(context: GenerationContext) -> AsyncIterator[Item]:
    yield Delta("half an answer")
    raise GeneratorError("upstream_error", "the model server went away")


async def test_a_failed_answer_ends_with_an_error_chunk(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with (
        running_server(settings_for(database_url), generator=failing) as srv,
        srv.client(token) as client,
    ):
        seen = await sdk("chunks", srv.base_url, token, "failChat00000001", PROMPT="fail")
        messages = await stored(client)
    assert messages[1]["status"] == "error"
    types = [c["type"] for c in seen["chunks"]]
    assert types[-2:] == ["text-end", "error"]
    assert seen["chunks"][-1]["errorText"] == "the model server went away"
    assert "finish" not in types
