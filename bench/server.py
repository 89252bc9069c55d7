"""``python -m server`` processes for the benchmark, on loopback ports, with their own settings.

Settings inherited from the caller's environment are dropped, so that a stray ``WORKERS`` or
``DEMO_DELTA_MS`` cannot change what a scenario measures. Every process is stopped by whoever
started it (``stop`` is safe in any state); output goes to a log file in the run's directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench.machine import children_of
from server.config import Settings
from server.embedded import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
_SETTING_NAMES = {f.name.upper() for f in dataclasses.fields(Settings)}

# Limits high enough that no benchmark request is refused by the per-user guards.
HIGH_LIMITS = {
    "MAX_RUNNING_PER_USER": "1000000",
    "RATE_PER_MINUTE": "100000000",
    "RATE_BURST": "1000000",
    "MAX_STREAMS_PER_WORKER": "100000",
    "MAX_STREAMS_PER_USER": "100000",
    "TOKEN_CACHE_SECONDS": "3600",
}


@dataclass
class ServerProcess:
    name: str
    database_url: str
    log_dir: Path
    settings: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    cwd: Path = REPO_ROOT  # where ``python -m server`` finds the server package
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SETTING_NAMES}
        env.update(
            {
                "DATABASE_URL": self.database_url,
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "WORKERS": "1",
                "GENERATOR": "demo",
                "LOG_LEVEL": "warning",
                "PYTHONUNBUFFERED": "1",
                **HIGH_LIMITS,
                **self.settings,
            }
        )
        return env

    @property
    def setting_env(self) -> dict[str, str]:
        """The server's settings as given in its environment (the database URL left out)."""
        return {k: v for k, v in self.env.items() if k in _SETTING_NAMES and k != "DATABASE_URL"}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the process itself with WORKERS=1, else the
        uvicorn worker processes under it (multiprocessing's helper excluded)."""
        tree = children_of(self.pid)
        workers = [pid for pid in tree if pid != self.pid and _is_python_server(pid)]
        return workers or [self.pid]

    def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None, "already started"
        log_path = self.log_dir / f"server-{self.name}.log"
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server"],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready(timeout, log_path)

    def _wait_ready(self, timeout: float, log_path: Path) -> None:
        deadline = time.monotonic() + timeout
        workers = int(self.settings.get("WORKERS", "1"))
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"server {self.name} exited:\n{_tail(log_path)}")
            if self._healthy() and (workers == 1 or len(self.worker_pids()) >= workers):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server {self.name} not ready after {timeout}s:\n{_tail(log_path)}")

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the server drains), then SIGKILL after ``timeout``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in reversed(children_of(self.proc.pid)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


def _is_python_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # uvicorn's workers are multiprocessing "spawn" children; the resource tracker is not one.
    return any(b"multiprocessing.spawn" in part or b"spawn_main" in part for part in cmdline) and (
        not any(b"resource_tracker" in part for part in cmdline)
    )


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
