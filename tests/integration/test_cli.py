"""The command line, run as a real process against the test database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import create_project, running_server, settings_for


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
