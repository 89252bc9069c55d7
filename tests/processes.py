"""Real server processes for the survival tests: ``python -m server`` on a loopback port.

Each process gets its own environment (DATABASE_URL, HOST, PORT and the test's short settings);
settings inherited from the test runner's environment are dropped so that a stray ``WORKERS`` or
``LEASE_SECONDS`` cannot change what a test means. Output goes to a log file, shown when a process
fails to start. Whoever starts a process must stop it: ``ServerProcess.stop`` (SIGTERM, then
SIGKILL) is safe to call in any state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from server.config import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
_SETTING_NAMES = {f.name.upper() for f in dataclasses.fields(Settings)}


@dataclass
class ServerProcess:
    """One ``python -m server`` process (WORKERS=1: uvicorn serves in the process itself)."""

    name: str
    database_url: str
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        timeout = kwargs.pop("timeout", httpx.Timeout(30.0))
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, **kwargs)

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {k: v for k, v in os.environ.items() if k not in _SETTING_NAMES}
        env.update(
            {
                "DATABASE_URL": self.database_url,
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "WORKERS": "1",
                "LOG_LEVEL": "warning",
                "TOKEN_CACHE_SECONDS": "0",
                "PYTHONUNBUFFERED": "1",
                **self.env,
            }
        )
        self._log = self.log_path.open("ab")
        self._log.write(f"\n===== start {self.name} at {time.time():.3f}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until ``/healthz`` answers; fail with the log if the process dies or hangs."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    raise AssertionError(f"{self.name} exited during start:\n{self.log_tail()}")
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """``kill -9``: no drain, no goodbye."""
        if self.running:
            self.send(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if the process still runs after ``timeout`` seconds."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.02)
        return self.proc.poll()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``: for teardown, in any state."""
        if self.running:
            self.send(signal.SIGTERM)
            try:
                assert self.proc is not None
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        """Teardown: kill if still running, close the log."""
        self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 4000) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


# ``spawn(name, database_url, **settings)``: the ``spawn`` fixture (tests/conftest.py)
Spawn = Callable[..., ServerProcess]
