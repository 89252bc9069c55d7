"""Schemathesis, as a tool no one here wrote sees the API: ``st run`` on ``/openapi.json`` with a
bearer token and every check (``--checks all``), in every phase: examples, coverage, fuzzing and
the stateful phase, which chains operations through the links it infers (a project created, then
its generations, messages, events, cancel). No 5xx, every response and every SSE event as the
document says, invalid requests refused, valid ones accepted.

``positive_data_acceptance`` runs as ``fuzz_hooks.positive_data_acceptance_but_unstatable``:
the same check with the few refusals a JSON Schema cannot state named there, one by one.

Bounded: a fixed number of examples per operation and a fixed seed, one worker (the machine is
shared); the whole run takes about a minute.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from server.app import create_app
from server.db import connect
from tests.integration import fuzz_hooks
from tests.support import create_user, settings_for

EXAMPLES_PER_OPERATION = 40
SEED = 20261202
PHASES = "examples,coverage,fuzzing,stateful"
RUN_TIMEOUT_SECONDS = 900  # a guard against a hang, not an expectation of speed


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


def test_schemathesis_finds_nothing_with_every_check_in_every_phase(
    fuzz_target: tuple[str, str, str], repo_root: Path, tmp_path: Path
) -> None:
    base_url, token, _url = fuzz_target
    report = tmp_path / "schemathesis.json"
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/openapi.json"),
        *("--header", f"Authorization: Bearer {token}"),
        # Named as well as "all": the command refuses an unknown check, so a hooks module that
        # did not load fails the run instead of leaving valid data unchecked.
        *("--checks", f"all,{fuzz_hooks.POSITIVE_CHECK}"),
        *("--exclude-checks", "positive_data_acceptance"),
        *("--phases", PHASES),
        *("--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", str(SEED)),
        *("--workers", "1", "--no-color", "--warnings", "off"),
        *("--report", "json", "--report-json-path", str(report)),
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.integration.fuzz_hooks",
        "PYTHONPATH": str(repo_root),
    }
    run = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    output = run.stdout[-20000:] + run.stderr[-5000:]
    assert run.returncode == 0, output
    found = json.loads(report.read_text())
    assert found["failures"] == [] and found["errors"] == [], output
    assert found["operations"]["tested"] == found["operations"]["total"] >= 13, output
    # Every phase ran (examples is skipped: the document gives none), the stateful one included,
    # and it followed links between operations, not just single calls.
    phases = {name: phase["status"] for name, phase in found["phases"].items()}
    assert phases == {
        "examples": "skip",
        "coverage": "success",
        "fuzzing": "success",
        "stateful": "success",
    }, phases
    links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", run.stdout)
    assert links is not None and int(links[1]) > 0, output
