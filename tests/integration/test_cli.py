"""The command line, run as a real process against the test database."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import pytest

from tests.processes import ServerProcess
from tests.support import create_project, running_server, settings_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from server.embedded import free_port

SIGN_IN_URL = re.compile(r"^    (http://\S+)/#token=(\S+)$", re.MULTILINE)


def _cli(repo_root: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
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
