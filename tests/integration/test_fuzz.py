"""Schemathesis against the running app: no 5xx, and every response as the document says.

The one check left out, ``positive_data_acceptance``, asks that every schema-valid body be
accepted; our rules are stricter than JSON Schema can say portably (no NUL, not only whitespace,
real http URLs), and those refusals are 422s the document declares.

Bounded and deterministic: a fixed number of examples per operation, derandomized.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from server.app import create_app
from server.db import connect
from tests.support import create_user, settings_for

EXAMPLES_PER_OPERATION = 40


def _run(coro: Any) -> Any:
    """Run a coroutine to completion on a fresh loop in its own thread."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(coro)))
    thread.start()
    thread.join()
    return result[0]


class ThreadedServer:
    def __init__(self, database_url: str) -> None:
        app = create_app(settings_for(database_url, demo_deltas=3))
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()))

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            threading.Event().wait(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def fuzz_target(admin_url: str, template_name: str) -> Iterator[tuple[str, str, str]]:
    name = f"orderly_fuzz_{uuid.uuid4().hex[:12]}"
    base, _, _ = admin_url.rpartition("/")
    url = f"{base}/{name}"

    async def create() -> str:
        async with connect(admin_url) as session:
            await session.execute_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
        return await create_user(url, "fuzzer")

    async def drop() -> None:
        async with connect(admin_url) as session:
            await session.execute_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    token = _run(create())
    with ThreadedServer(url) as base_url:
        yield base_url, token, url
    _run(drop())


def test_api_conforms_and_never_fails(fuzz_target: tuple[str, str, str]) -> None:
    base_url, token, _url = fuzz_target
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: Any) -> None:
            case.call_and_validate(
                base_url=base_url, headers=headers, excluded_checks=[positive_data_acceptance]
            )

        check()
