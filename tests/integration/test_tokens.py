"""Token lookups: what a worker remembers about tokens, and what a flood of bad ones costs."""

from __future__ import annotations

import asyncio
import secrets

from server.auth import hash_token, new_token
from server.store import Store
from tests.support import create_project, create_user, running_server, settings_for

# uvicorn trusts X-Forwarded-For from loopback (FORWARDED_ALLOW_IPS), so a test can speak for
# several client addresses.
ATTACKER = {"X-Forwarded-For": "203.0.113.7"}
BYSTANDER = {"X-Forwarded-For": "198.51.100.20"}


def _bearer(token: str, headers: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


async def _revoke(database_url: str, token: str) -> None:
    async with Store.single(database_url) as store:
        assert await store.revoke_token(hash_token(token)) == 1


async def test_failed_token_lookups_are_limited_per_client_address(database_url: str) -> None:
    """Regression: every distinct bad token cost a database query, without any limit (the rate
    limit applied only after a successful lookup)."""
    alice = await create_user(database_url, "alice")
    settings = settings_for(database_url, auth_failures_per_minute=6, auth_failures_burst=5)
    async with running_server(settings) as srv, srv.client() as client:
        known = await client.get("/api/projects", headers=_bearer(alice, ATTACKER))
        assert known.status_code == 200
        answers = [
            await client.get("/api/projects", headers=_bearer(new_token(), ATTACKER))
            for _ in range(12)
        ]
        assert [r.status_code for r in answers] == [401] * 5 + [429] * 7
        for refused in answers[5:]:
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["code"] == "too_many_auth_failures"
            assert int(refused.headers["retry-after"]) >= 1
        # The unauthenticated sign-in is held to the same limit.
        session = await client.post("/api/session", json={"token": new_token()}, headers=ATTACKER)
        assert session.status_code == 429
        # Another address is not affected, nor is a token this worker already knows to be
        # valid, even from the refused address; a token never seen from there waits.
        other = await client.get("/api/projects", headers=_bearer(new_token(), BYSTANDER))
        assert other.status_code == 401
        again = await client.get("/api/projects", headers=_bearer(alice, ATTACKER))
        assert again.status_code == 200
        bob = await create_user(database_url, "bob")
        new = await client.get("/api/projects", headers=_bearer(bob, ATTACKER))
        assert new.status_code == 429
        assert (
            await client.get("/api/projects", headers=_bearer(bob, BYSTANDER))
        ).status_code == 200


async def test_failed_token_lookups_are_limited_per_worker(database_url: str) -> None:
    """A flood from many addresses is held to the worker's own bound."""
    settings = settings_for(
        database_url,
        auth_failures_per_minute=1000,
        auth_failures_burst=1000,
        auth_failures_worker_per_minute=8,
    )
    async with running_server(settings) as srv, srv.client() as client:
        statuses = []
        for n in range(12):
            headers = _bearer(new_token(), {"X-Forwarded-For": f"192.0.2.{n + 1}"})
            statuses.append((await client.get("/api/projects", headers=headers)).status_code)
    assert statuses == [401] * 8 + [429] * 4


async def test_valid_tokens_are_never_held_to_the_failure_limit(database_url: str) -> None:
    """Only failures count: many users behind one address (a NAT, a proxy), all unknown to a
    fresh worker and all arriving at once, are all let in."""
    tokens = [await create_user(database_url, f"user{n}") for n in range(30)]
    settings = settings_for(
        database_url,
        auth_failures_per_minute=6,
        auth_failures_burst=2,
        auth_failures_worker_per_minute=2,
    )
    async with running_server(settings) as srv, srv.client() as client:
        answers = await asyncio.gather(
            *(client.get("/api/projects", headers=_bearer(t, ATTACKER)) for t in tokens)
        )
    assert [r.status_code for r in answers] == [200] * 30


async def test_random_tokens_do_not_evict_real_users_from_the_token_cache(
    database_url: str,
) -> None:
    """Regression: the token cache was dropped whole at 10,000 entries, so a flood of random
    tokens evicted every real user's entry (each then cost a query again)."""
    alice = await create_user(database_url, "alice")
    settings = settings_for(
        database_url,
        token_cache_seconds=120,
        auth_failures_per_minute=1_000_000,
        auth_failures_burst=1_000_000,
        auth_failures_worker_per_minute=1_000_000,
    )
    async with running_server(settings) as srv, srv.client(alice) as client:
        assert (await client.get("/api/projects")).status_code == 200
        # Revoked now, but cached for TOKEN_CACHE_SECONDS: whether alice still gets in shows
        # whether her entry is still in the cache.
        await _revoke(database_url, alice)
        assert (await client.get("/api/projects")).status_code == 200
        auth = srv.services.auth
        semaphore = asyncio.Semaphore(8)

        async def random_token(n: int) -> None:
            async with semaphore:
                token = "ord_" + secrets.token_urlsafe(32)
                assert await auth.user_for_token(token, f"10.0.{n // 250}.{n % 250}") is None

        await asyncio.gather(*(random_token(n) for n in range(10_050)))
        assert (await client.get("/api/projects")).status_code == 200


async def test_a_revoked_token_stops_working_once_the_cache_expires(database_url: str) -> None:
    alice = await create_user(database_url, "alice")
    settings = settings_for(database_url, token_cache_seconds=0.5)
    async with running_server(settings) as srv, srv.client(alice) as client:
        project = await create_project(client)
        await _revoke(database_url, alice)
        await asyncio.sleep(0.6)
        for path in ("/api/projects", f"/api/projects/{project}"):
            response = await client.get(path)
            assert response.status_code == 401, path
            assert response.json()["code"] == "invalid_token"
