"""A sign-in never replaces another account's session silently (issue Reliability II, item 7):
a link carrying someone else's token must not sign a person into that account unasked."""

from __future__ import annotations

import logging

import pytest

from tests.support import create_project, create_user, running_server, settings_for


async def test_a_token_of_another_account_does_not_replace_the_session_unasked(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alice = await create_user(database_url, "alice")
    alice_again = await create_user(database_url, "alice")
    mallory = await create_user(database_url, "mallory")
    async with running_server(settings_for(database_url)) as srv:
        async with srv.client(headers={"Origin": srv.base_url}) as browser:
            signed_in = await browser.post("/api/session", json={"token": alice})
            assert signed_in.status_code == 204, signed_in.text
            mine = await create_project(browser, "alice's")

            # The attacker's link: refused, both accounts named, nothing changed.
            switched = await browser.post("/api/session", json={"token": mallory})
            assert switched.status_code == 409, switched.text
            problem = switched.json()
            assert problem["code"] == "another_account_signed_in"
            assert problem["signed_in_username"] == "alice"
            assert problem["token_username"] == "mallory"
            assert "set-cookie" not in switched.headers
            assert (await browser.get("/api/session")).json() == {"username": "alice"}
            assert (await browser.get(f"/api/projects/{mine}")).status_code == 200
            # replace false is the same as not saying.
            again = await browser.post("/api/session", json={"token": mallory, "replace": False})
            assert again.status_code == 409, again.text

            # Another token of the same account is no switch.
            same = await browser.post("/api/session", json={"token": alice_again})
            assert same.status_code == 204, same.text
            assert (await browser.get("/api/session")).json() == {"username": "alice"}

            # Once the person said so.
            confirmed = await browser.post("/api/session", json={"token": mallory, "replace": True})
            assert confirmed.status_code == 204, confirmed.text
            assert (await browser.get("/api/session")).json() == {"username": "mallory"}
            assert (await browser.get(f"/api/projects/{mine}")).status_code == 404

        # Signed out (no cookie), or with a cookie that no longer signs anyone in: no question.
        async with srv.client(headers={"Origin": srv.base_url}) as fresh:
            assert (await fresh.get("/api/session")).status_code == 401
            assert (await fresh.post("/api/session", json={"token": mallory})).status_code == 204
        async with srv.client(headers={"Origin": srv.base_url}) as stale:
            stale.cookies.set("orderly_session", "ord_revoked_or_made_up")
            assert (await stale.post("/api/session", json={"token": alice})).status_code == 204
            assert (await stale.get("/api/session")).json() == {"username": "alice"}
    # The server's own lines (the test's HTTP client logs the cookies it receives, at DEBUG).
    logged = "\n".join(
        f"{record.getMessage()} {record.__dict__}"
        for record in caplog.records
        if record.name.startswith(("server", "uvicorn"))
    )
    assert "/api/session" in logged  # the access log was captured
    for token in (alice, alice_again, mallory):
        assert token not in logged
