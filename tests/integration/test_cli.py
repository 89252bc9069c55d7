"""The command line, run as a real process against the test database."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.processes import ServerProcess
from tests.support import (
    GatedGenerator,
    create_project,
    create_user,
    generate,
    running_server,
    settings_for,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from server.embedded import free_port

SIGN_IN_URL = re.compile(r"^    (http://\S+)/#token=(\S+)$", re.MULTILINE)
SIGN_IN_URL_ANY = re.compile(r"^    (https?://\S+)/#token=(\S+)$", re.MULTILINE)


def _cli(
    repo_root: Path, database_url: str, *args: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, **settings}
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_token_create_prints_a_working_token_last(repo_root: Path, database_url: str) -> None:
    result = _cli(repo_root, database_url, "token", "create", "carol")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        await create_project(client)
        revoked = _cli(repo_root, database_url, "token", "revoke", token)
        assert revoked.returncode == 0, revoked.stderr
        assert (await client.get("/api/projects")).status_code == 401
    again = _cli(repo_root, database_url, "token", "revoke", token)
    assert again.returncode == 1, "revoking twice finds nothing to revoke"


@pytest.mark.parametrize(
    ("settings", "base"),
    [
        ({"HOST": "127.0.0.1", "PORT": "8123"}, "http://127.0.0.1:8123"),
        ({"HOST": "0.0.0.0", "PORT": "8000"}, "http://127.0.0.1:8000"),
        ({"PUBLIC_URL": "https://chat.example.com/"}, "https://chat.example.com"),
    ],
)
async def test_token_create_prints_the_sign_in_url(
    repo_root: Path, database_url: str, settings: dict[str, str], base: str
) -> None:
    """Regression: it printed a bare token, and a later `make run` prints no link, so a person
    signed out had no way back in but to build the URL by hand. The token stays the last line
    (the README's `| tail -1`)."""
    result = _cli(repo_root, database_url, "token", "create", "carol", **settings)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("ord_")
    urls = SIGN_IN_URL_ANY.findall(result.stdout)
    assert urls == [(base, token)], result.stdout
    async with running_server(settings_for(database_url)) as srv, srv.client() as client:
        assert (await client.post("/api/session", json={"token": token})).status_code == 204


async def test_token_list_shows_ids_users_and_states_never_tokens(
    repo_root: Path, database_url: str
) -> None:
    tokens = []
    for user in ("carol", "carol", "dave"):
        created = _cli(repo_root, database_url, "token", "create", user)
        assert created.returncode == 0, created.stderr
        tokens.append(created.stdout.strip().splitlines()[-1])
    assert _cli(repo_root, database_url, "token", "revoke", tokens[0]).returncode == 0
    listed = _cli(repo_root, database_url, "token", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == 3, listed.stdout
    assert not any(t in listed.stdout for t in tokens), "a token is printed once, at creation"
    assert sorted(line.split()[1] for line in lines) == ["carol", "carol", "dave"]
    assert sum("revoked" in line for line in lines) == 1
    assert sum(line.endswith("active") for line in lines) == 2
    carol = _cli(repo_root, database_url, "token", "list", "carol").stdout.strip().splitlines()
    assert [line.split()[1] for line in carol] == ["carol", "carol"]
    # An active token's id, from the list, revokes that token and no other.
    dave_id = next(line.split()[0] for line in lines if line.split()[1] == "dave")
    revoked = _cli(repo_root, database_url, "token", "revoke", "--id", dave_id)
    assert revoked.returncode == 0, revoked.stderr
    async with running_server(settings_for(database_url)) as srv:
        async with srv.client(tokens[2]) as dave:
            assert (await dave.get("/api/projects")).status_code == 401
        async with srv.client(tokens[1]) as carol_client:
            assert (await carol_client.get("/api/projects")).status_code == 200
    again = _cli(repo_root, database_url, "token", "revoke", "--id", dave_id)
    assert again.returncode == 1


async def _count(database_url: str, sql: str, *args: object) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(sql, *args)
        return count
    finally:
        await conn.close()


async def test_user_remove_deletes_the_user_and_everything_they_wrote(
    repo_root: Path, database_url: str
) -> None:
    """Refused while an answer of theirs runs (its worker would go on writing it); then the
    user, their tokens, projects, messages and stored events go, and nobody else's."""
    carol_token = await create_user(database_url, "carol")
    dave_token = await create_user(database_url, "dave")
    gated = GatedGenerator()
    # A long token cache: the removed user's token is still known to the worker afterwards.
    settings = settings_for(database_url, token_cache_seconds=3600.0)
    async with (
        running_server(settings, generator=gated) as srv,
        srv.client(carol_token) as carol,
        srv.client(dave_token) as dave,
    ):
        project = await create_project(carol)
        dave_project = await create_project(dave)
        started = await carol.post(
            f"/api/projects/{project}/generations",
            json={"message": "hello"},
            headers={"Accept": "application/json"},
        )
        assert started.status_code == 202, started.text
        refused = _cli(repo_root, database_url, "user", "remove", "carol")
        assert refused.returncode == 1 and "running" in refused.stderr, refused.stderr
        assert await _count(database_url, "SELECT count(*) FROM users") == 2
        gated.gate.set()
        await wait_until_finished(carol, project, started.json()["assistant_message"]["id"])
        await generate(dave, dave_project, "dave's")
        removed = _cli(repo_root, database_url, "user", "remove", "carol")
        assert removed.returncode == 0, removed.stderr
        assert "1 token(s), 1 project(s), 2 message(s)" in removed.stdout
        # The worker still has carol's token cached: her requests are refused, not a 500.
        gone = await carol.post("/api/projects", json={"title": "again"})
        assert gone.status_code == 401, gone.text
        assert gone.json()["code"] == "invalid_token"
        assert (await carol.get(f"/api/projects/{project}")).status_code == 404
        assert (await dave.get(f"/api/projects/{dave_project}/messages")).status_code == 200
    owned = "SELECT count(*) FROM messages WHERE project_id = $1"
    assert await _count(database_url, owned, uuid.UUID(project)) == 0
    assert await _count(database_url, owned, uuid.UUID(dave_project)) > 0
    # Chunks are keyed by owner and message: none is left without its message, dave's remain.
    orphans = (
        "SELECT count(*) FROM event_chunks AS c WHERE NOT EXISTS ("
        " SELECT 1 FROM messages AS m WHERE m.created_by = c.owner_id AND m.id = c.message_id)"
    )
    assert await _count(database_url, orphans) == 0
    daves = (
        "SELECT count(*) FROM event_chunks AS c JOIN messages AS m"
        " ON m.created_by = c.owner_id AND m.id = c.message_id WHERE m.project_id = $1"
    )
    assert await _count(database_url, daves, uuid.UUID(dave_project)) > 0
    assert await _count(database_url, "SELECT count(*) FROM users") == 1
    assert await _count(database_url, "SELECT count(*) FROM api_tokens") == 1
    unknown = _cli(repo_root, database_url, "user", "remove", "carol")
    assert unknown.returncode == 1, unknown.stdout


GENERATIONS_PER_PROJECT = 60


async def test_user_remove_under_concurrent_generations_leaves_nothing_half_removed(
    repo_root: Path, database_url: str
) -> None:
    """Generations of the user keep arriving (from a worker that has their token cached) while
    `user remove` runs, again and again until no answer of theirs is running: each request is
    answered (202, or 404 once the project is gone), never a 500, and nothing of the user is
    left, with nobody else's touched."""
    carol_token = await create_user(database_url, "carol")
    dave_token = await create_user(database_url, "dave")
    settings = settings_for(database_url, token_cache_seconds=3600.0, demo_deltas=3)
    statuses: list[int] = []
    async with (
        running_server(settings) as srv,
        srv.client(carol_token) as carol,
        srv.client(dave_token) as dave,
    ):
        projects = [await create_project(carol) for _ in range(3)]
        dave_project = await create_project(dave)
        removed = asyncio.Event()

        async def keep_generating(project: str) -> None:
            # A bounded number of requests while the removal is tried: an unbounded stream of
            # answers could keep the user busy at every attempt (seen once in a fresh clone),
            # and then the removal, which refuses while an answer runs, never gets its turn.
            for _ in range(GENERATIONS_PER_PROJECT):
                if removed.is_set():
                    break
                response = await carol.post(
                    f"/api/projects/{project}/generations",
                    json={"message": "hi"},
                    headers={"Accept": "application/json"},
                )
                statuses.append(response.status_code)
                if response.status_code == 404:
                    return
            await removed.wait()
            gone = await carol.post(
                f"/api/projects/{project}/generations",
                json={"message": "hi"},
                headers={"Accept": "application/json"},
            )
            statuses.append(gone.status_code)

        async def remove_until_done() -> None:
            env = {**os.environ, "DATABASE_URL": database_url}
            for _ in range(400):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "server",
                    "user",
                    "remove",
                    "carol",
                    cwd=repo_root,
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                _, err = await proc.communicate()
                if proc.returncode == 0:
                    removed.set()
                    return
                assert b"running" in err, err.decode()
            raise AssertionError("user remove never found the user idle")

        await asyncio.gather(remove_until_done(), *(keep_generating(p) for p in projects))
        await generate(dave, dave_project, "still here")
    # (Runs here see dozens of refusals and thousands of generations before the removal.)
    assert statuses and set(statuses) <= {202, 404}, sorted(set(statuses))
    assert statuses.count(404) == len(projects), "each project is answered 404 once removed"
    carol_rows = (
        "SELECT (SELECT count(*) FROM users WHERE username = 'carol')"
        " + (SELECT count(*) FROM projects WHERE id = ANY($1::uuid[]))"
        " + (SELECT count(*) FROM messages WHERE project_id = ANY($1::uuid[]))"
        " + (SELECT count(*) FROM event_chunks AS c WHERE NOT EXISTS ("
        "     SELECT 1 FROM messages AS m WHERE m.created_by = c.owner_id AND m.id = c.message_id))"
    )
    assert await _count(database_url, carol_rows, [uuid.UUID(p) for p in projects]) == 0
    dave_rows = "SELECT count(*) FROM messages WHERE project_id = $1"
    assert await _count(database_url, dave_rows, uuid.UUID(dave_project)) == 2


async def wait_until_finished(client: httpx.AsyncClient, project: str, message: str) -> None:
    url = f"/api/projects/{project}/messages/{message}"
    for _ in range(1000):
        if (await client.get(url)).json()["status"] not in ("pending", "streaming"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the answer did not finish")


async def test_migrate_command_is_idempotent(repo_root: Path, empty_database_url: str) -> None:
    first = _cli(repo_root, empty_database_url, "migrate", "--to", "2")
    assert first.returncode == 0, first.stderr
    assert "0002_sequence" in first.stderr and "0003" not in first.stderr
    second = _cli(repo_root, empty_database_url, "migrate")
    assert "0003" in second.stderr
    third = _cli(repo_root, empty_database_url, "migrate")
    assert "up to date" in third.stderr


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_sign_in_url_is_printed_once_the_server_answers(
    database_url: str, tmp_path: Path, workers: int
) -> None:
    """Opened the moment it appears, the URL works; with several workers it appears once."""
    env = {"WORKERS": str(workers), "DATA_DIR": str(tmp_path / "data")}
    proc = ServerProcess("serve", database_url, free_port(), tmp_path / "serve.log", env)
    proc.start()
    try:
        found = await _wait_for_output(proc, SIGN_IN_URL, timeout=60)
        base, token = found.group(1), found.group(2)
        assert base == proc.base_url
        # At once, with no retry: the server must already accept the connection.
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            signed_in = await client.post("/api/session", json={"token": token})
            assert signed_in.status_code == 204, signed_in.text
            page = await client.get("/")
            assert page.status_code == 200
        await asyncio.sleep(1.0)  # time for a second worker to print one too, if it did
    finally:
        proc.stop()
    assert len(SIGN_IN_URL.findall(proc.log_tail(100_000))) == 1, proc.log_tail()


async def _wait_for_output(
    proc: ServerProcess, pattern: re.Pattern[str], timeout: float
) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pattern.search(proc.log_path.read_text(errors="replace"))
        if found:
            return found
        assert proc.running, f"the server exited:\n{proc.log_tail()}"
        await asyncio.sleep(0.005)
    raise AssertionError(f"no sign-in URL after {timeout} s:\n{proc.log_tail()}")


@pytest.mark.slow
async def test_no_sign_in_url_when_another_server_holds_the_port(
    database_url: str, tmp_path: Path
) -> None:
    """Another process answering on the port is not us: this server cannot bind and exits, and
    it must not have sent the user to the other one."""
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        port = squatter.getsockname()[1]
        proc = ServerProcess("serve", database_url, port, tmp_path / "serve.log")
        proc.start()
        try:
            exit_code = await proc.wait_exit(60)
        finally:
            proc.stop()
    assert exit_code not in (None, 0), proc.log_tail()
    assert not SIGN_IN_URL.search(proc.log_tail(100_000)), proc.log_tail()
