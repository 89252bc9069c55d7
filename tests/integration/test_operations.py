"""Operations: /metrics moves, logs carry request ids and no secrets, every statement on a
per-project table filters by project_id."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.citus import call_text
from server.db import load_queries
from server.logs import JsonFormatter, RequestIdFilter
from tests.support import create_project, create_user, generate, running_server, settings_for


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        before = _samples((await client.get("/metrics")).text)
        project = await create_project(client)
        for i in range(3):
            events = await generate(client, project, f"m{i}")
        await client.get(f"/api/projects/{project}/messages")
        # The events route is a bare ASGI endpoint (server/routes/respond.LastingEndpoint).
        assistant = events[0].data["assistant_message"]["id"]
        await client.get(f"/api/projects/{project}/messages/{assistant}/events")
        response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = _samples(response.text)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("orderly_generations_started_total") == 3
    assert moved("orderly_generations_finished_total", status="success") == 3
    assert moved("orderly_events_flushed_total") >= 3 * 7
    assert moved("orderly_flush_seconds_count") >= 1
    assert moved("orderly_time_to_first_event_seconds_count") == 3 + 1  # and the one replay
    assert moved("orderly_generation_duration_seconds_count") == 3
    # The demo generator's usage: one word per message, five pieces per answer.
    assert moved("orderly_tokens_total", kind="prompt") == 3
    assert moved("orderly_tokens_total", kind="completion") == 3 * 5
    route = "/api/projects/{project_id}/generations"
    assert moved("orderly_http_requests_total", route=route, status="200") == 3
    assert (
        moved(
            "orderly_http_requests_total", route="/api/projects/{project_id}/messages", status="200"
        )
        == 1
    )
    events_route = "/api/projects/{project_id}/messages/{message_id}/events"
    assert moved("orderly_http_requests_total", route=events_route, status="200") == 1
    # No label carries a raw path or an id.
    assert not re.search(r'route="[^"]*[0-9a-f]{8}-[0-9a-f]{4}', response.text)


async def test_request_id_is_echoed_or_made(database_url: str) -> None:
    async with running_server(settings_for(database_url)) as srv, srv.client() as client:
        given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        made = await client.get("/healthz")
        hostile = await client.get("/healthz", headers={"X-Request-ID": "a b/" * 100})
    assert given.headers["x-request-id"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])


async def test_logs_never_carry_tokens_content_or_query_strings(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = await create_user(database_url, "alice")
    secret = "very secret message content"
    caplog.set_level(logging.INFO)
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        await generate(client, project, secret, client_request_id="k1")
        url = f"/api/generate-stream?projectId={project}&message={secret}&clientRequestId=k2"
        async with client.stream("GET", url) as response:
            await response.aread()
        await client.post("/api/session", json={"token": token})
    formatter = JsonFormatter()
    id_filter = RequestIdFilter()
    lines = []
    for record in caplog.records:
        if not record.name.startswith(("server", "uvicorn")):
            continue  # the test's own HTTP client logs its URLs
        id_filter.filter(record)
        lines.append(formatter.format(record))
    text = "\n".join(lines)
    assert "server.access" in text
    assert token not in text
    assert secret not in text
    assert "very+secret" not in text and "very%20secret" not in text
    access = [json.loads(line) for line in lines if '"server.access"' in line]
    assert access, "one access line per request"
    assert all("route" in line and "status" in line for line in access)


# Statements that span owners by design (each runs on every shard of a Citus cluster), with why.
# Nothing that serves a request is here.
SPANS_OWNERS = {
    "orphans": "the reaper sweeps every expired heartbeat's answers (periodic)",
    "leading_workers": "the reaper's look for heartbeats that lead nothing (periodic)",
    "prune_events": "the retention sweep over every owner (periodic)",
    "queued_projects": "the queue's slow poll over every project (periodic); the claims that "
    "follow are per shard",
    "leased_to": "a worker's own unstarted answers, by worker (the slow poll, periodic)",
    "shards_of": "asks Citus where owners live, once per owner (no table is read)",
}


def test_every_statement_on_per_user_tables_filters_by_its_owner() -> None:
    """What lets the schema be distributed by owner (docs/scaling.md): every statement on
    projects, messages, event_chunks and user_running names the owner (one, or the owners of a
    batch of one shard), but the few that span owners by design."""
    for name, sql in load_queries().items():
        text = re.sub(r"--[^\n]*", "", sql).lower()
        touches = re.search(
            r"\b(messages|message_view|event_chunks|projects|user_running"
            r"|orderly_close|orderly_regenerate|orderly_choose_variant)\b",
            text,
        )
        if not touches or name in SPANS_OWNERS:
            continue
        by_owner = (
            re.search(r"\b(created_by|owner_id|user_id) = (\$\d+|any\(\$\d+::uuid\[\]\))", text)
            # functions whose first argument is the owner (their statements filter by it)
            or re.search(r"orderly_(close|regenerate|choose_variant)\(\$1", text)
            or re.search(r"insert into projects \(owner_id, [a-z, ]+\) values \(\$1", text)
        )
        assert by_owner, f"{name} does not filter by owner"


# Statements that serve requests, each explained on the database the suite runs on: on Citus,
# each must run on one node; those that Citus runs as several steps (their CTEs insert: see
# docs/scaling.md) still run every step there. Everything else either spans owners by design
# (SPANS_OWNERS) or touches reference tables only.
REQUEST_STATEMENTS = {
    "list_projects": "router",
    "get_project": "router",
    "rename_project": "router",
    "insert_project": "router",
    "insert_chat_project": "router",
    "pair_by_request_id": "router",
    "get_message": "router",
    "get_pair_of_assistant": "router",
    "history_latest": "router",
    "history_before": "router",
    "history_after": "router",
    "message_by_id": "router",
    "chunks_after": "router",
    "recent_history": "router",
    "running_before": "router",
    "held_among": "router",
    "claim_queued": "router",
    "release_claims": "router",
    "start_pair": "router",
    "stream_target": "router",
    "log_tail": "router",
    "lock_project_for_delete": "router",
    "project_running": "router",
    "delete_project_events": "router",
    "delete_project_messages": "router",
    "delete_project": "router",
    "variants": "router",
    # On Citus, called as their distributed functions (server/citus.py): the call is one task.
    "reserve_pair": "delegated",
    "flush": "delegated",
}
_DUMMY = {
    "uuid": "'00000000-0000-0000-0000-000000000001'",
    "uuid[]": "'{00000000-0000-0000-0000-000000000001}'",
    "text": "'x'",
    "text[]": "'{x}'",
    "int4": "1",
    "int8": "1",
    "int4[]": "'{1}'",
    "bool": "false",
    "float8": "1",
    "jsonb": "'[]'",
}


async def test_every_request_statement_runs_on_one_node(database_url: str) -> None:
    """Each statement that serves a request, PREPAREd and EXPLAIN EXECUTEd (PostgreSQL 15 has no
    EXPLAIN (GENERIC_PLAN)) with one owner: on Citus its plan names one node, and a router
    statement is one task. On one PostgreSQL the same statements must prepare and explain."""
    queries = load_queries()
    conn = await asyncpg.connect(database_url)
    try:
        distributed = await conn.fetchval(queries["is_distributed"])
        coordinator = distributed and await conn.fetchval(
            "SELECT nodeport FROM pg_dist_node WHERE groupid = 0"
        )
        for name, kind in REQUEST_STATEMENTS.items():
            sql = queries[name]
            types = [t.name for t in (await conn.prepare(sql)).get_parameters()]
            if kind == "delegated" and distributed:
                sql, types = call_text(name, len(types)), [*types, "uuid"]
            values = ", ".join(_DUMMY[t] for t in types)
            await conn.execute(f"PREPARE probe ({', '.join(types)}) AS {sql}")
            try:
                # (Citus may run steps while explaining: roll back whatever that did. A delegated
                # call is explained outside a transaction block, where Citus delegates it.)
                if kind == "delegated":
                    explained = await conn.fetch(f"EXPLAIN EXECUTE probe ({values})")
                else:
                    async with conn.transaction():
                        explained = await conn.fetch(f"EXPLAIN EXECUTE probe ({values})")
                        await conn.execute("ROLLBACK AND CHAIN")
            except asyncpg.PostgresError as exc:
                raise AssertionError(f"{name} cannot be explained: {exc}") from exc
            finally:
                await conn.execute("DEALLOCATE probe")
            plan = "\n".join(r[0] for r in explained)
            if not distributed:
                assert plan, name
                continue
            # One task, on one worker node, with no step before it.
            nodes = set(re.findall(r"Node: host=\S+ port=(\d+)", plan)) - {str(coordinator)}
            assert len(nodes) == 1, f"{name} runs on {len(nodes)} nodes:\n{plan}"
            assert re.findall(r"Task Count: (\d+)", plan) == ["1"], f"{name}:\n{plan}"
            assert "Subplan" not in plan, f"{name} runs in steps:\n{plan}"
    finally:
        await conn.close()


async def test_pruned_log_is_answered_with_its_terminal_event(database_url: str) -> None:
    from tests.support import events_only, read_stream

    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        events = await generate(client, project, "to be pruned")
        message = events[0].data["assistant_message"]["id"]
        url = f"/api/projects/{project}/messages/{message}/events"
        _, before = await read_stream(client, "GET", url)
        assert [e.id for e in events_only(before)] == [e.id for e in events]
        _, deleted = await srv.services.store.prune_events(0.0, 1000)
        assert deleted == len(events) - 2  # start and the terminal event are not stored
        _, after = await read_stream(client, "GET", url)
        history = (await client.get(f"/api/projects/{project}/messages")).json()["messages"]
    pruned = events_only(after)
    assert [(e.id, e.event) for e in pruned] == [(events[-1].id, "done")]
    assert pruned[0].data_lines == events[-1].data_lines
    assert history[1]["content"] == events[-1].data["message"]["content"]


async def test_a_partially_pruned_log_never_skips_an_event(database_url: str) -> None:
    """Retention deletes chunks a batch at a time, so a finished log can be half gone. A resume
    gets either every missing event in order, or (once a gap lies ahead) the terminal event
    alone: never a stream with a hole in it."""
    from tests.support import events_only, read_stream

    token = await create_user(database_url, "alice")
    # Slow enough for several flushes (a chunk each), however long a flush takes: on Citus, on
    # a loaded machine, a flush took 0.6 s, and a 0.3 s answer was written in two chunks.
    settings = settings_for(database_url, demo_deltas=30, demo_delta_ms=100, flush_delay_ms=30)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        events = await generate(client, project, "to be pruned in part")
        message = events[0].data["assistant_message"]["id"]
        url = f"/api/projects/{project}/messages/{message}/events"
        conn = await asyncpg.connect(database_url)
        try:
            chunks = await conn.fetch(
                "SELECT first_event_id, length(kinds) AS n FROM event_chunks "
                "WHERE message_id = $1 AND kinds <> 't' ORDER BY first_event_id",
                uuid.UUID(message),
            )
            assert len(chunks) >= 3, "the answer was written in several chunks"
            gap = chunks[len(chunks) // 2]
            await conn.execute(
                "DELETE FROM event_chunks WHERE message_id = $1 AND first_event_id = $2",
                uuid.UUID(message),
                gap["first_event_id"],
            )
        finally:
            await conn.close()
        gap_first, gap_last = gap["first_event_id"], gap["first_event_id"] + gap["n"] - 1
        terminal = events[-1]
        for cursor in range(0, terminal.id):
            _, frames = await read_stream(
                client, "GET", url, headers={"Last-Event-ID": str(cursor)}
            )
            got = events_only(frames)
            if cursor >= gap_last:  # past the hole: everything after the cursor is still there
                assert [e.id for e in got] == [e.id for e in events[cursor:]], cursor
            else:  # the hole lies ahead: the terminal event alone
                assert [(e.id, e.event) for e in got] == [(terminal.id, terminal.event)], cursor
            assert got[-1].data_lines == terminal.data_lines
        assert gap_first > 1


async def test_heartbeat_renewals_are_in_the_metrics(database_url: str) -> None:
    """Renewal latency and failures are measured (issue: renewals could be delayed unseen)."""

    def samples(text: str) -> dict[str, float]:
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    # A renewal every 0.5 s, each given 0.5 s. Regression (on Citus, on a busy machine): with a
    # lease of 0.3 s each renewal was given 0.1 s, and one that took longer (a write of a
    # reference table, which goes to every node) counted as a failure.
    settings = settings_for(database_url, lease_seconds=1.5)
    async with running_server(settings) as srv, srv.client() as client:
        before = samples((await client.get("/metrics")).text)
        await asyncio.sleep(2.0)
        after = samples((await client.get("/metrics")).text)
    assert after["orderly_heartbeat_seconds_count"] - before["orderly_heartbeat_seconds_count"] >= 3
    for name in ("orderly_heartbeat_failures_total", "orderly_heartbeat_expired_total"):
        assert after[name] == before[name], name
    assert srv.services.worker.heartbeat.registered


@pytest.mark.parametrize("path", ["/metrics", "/openapi.json"])
async def test_ops_token_restricts_metrics_and_openapi(database_url: str, path: str) -> None:
    """Both answered anyone; with OPS_TOKEN set, only a request bearing it (a user's token is
    not it). Health and readiness stay open for load balancers."""
    user_token = await create_user(database_url, "alice")
    settings = settings_for(database_url, ops_token="ops-secret")
    async with running_server(settings) as srv, srv.client() as client:
        anonymous = await client.get(path)
        assert anonymous.status_code == 401, anonymous.text
        assert anonymous.json()["code"] == "not_authenticated"
        for wrong in (user_token, "ops-secreT", "ops-secret-and-more"):
            refused = await client.get(path, headers={"Authorization": f"Bearer {wrong}"})
            assert refused.status_code == 401, refused.text
            assert refused.json()["code"] == "invalid_token"
        allowed = await client.get(path, headers={"Authorization": "Bearer ops-secret"})
        assert allowed.status_code == 200, allowed.text
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
    async with running_server(settings_for(database_url)) as srv, srv.client() as client:
        assert (await client.get(path)).status_code == 200, "unset, it answers anyone"
