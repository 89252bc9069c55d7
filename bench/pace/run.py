"""Running the model-pace client: building it (the C one with gcc, into the run's work directory,
else the Python one, said so), handing it its requests, measuring CPU while it runs, and reading
what it wrote (see ``bench/pace/spec.py`` and ``bench/pace/client.py`` for the formats)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.machine import CpuMeter
from bench.pace.spec import Spec, write_spec

logger = logging.getLogger("bench")
SOURCE = Path(__file__).resolve().parent / "client.c"
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
ERRORS = ("ok", "connect", "read", "eof", "http", "bad_response", "timeout", "write", "unused")


@dataclass(frozen=True, slots=True)
class Client:
    argv: tuple[str, ...]
    kind: str  # "c" or "python"
    note: str


def build(workdir: Path, prefer: str = "auto") -> Client:
    """The C client compiled now (never committed as a binary); the Python one when ``prefer``
    is ``python``, or (said so) when there is no compiler or it fails and ``prefer`` is
    ``auto``. ``c`` with no working compiler is an error."""
    python = (sys.executable, "-m", "bench.pace.client")
    if prefer == "python":
        return Client(python, "python", "Python client asked for (--pace-client python)")
    built, why = _compile(workdir)
    if built is not None:
        return built
    if prefer == "c":
        raise RuntimeError(f"--pace-client c: {why}")
    note = f"{why}: the Python client instead"
    logger.warning("model pace: %s", note)
    return Client(python, "python", note)


def _compile(workdir: Path) -> tuple[Client | None, str]:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return None, "no C compiler (gcc) on this machine"
    binary = workdir / "pace-client"
    command = [gcc, "-O2", "-Wall", "-o", str(binary), str(SOURCE)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return None, f"gcc failed ({done.stderr.strip()[-300:]})"
    version = subprocess.run([gcc, "--version"], capture_output=True, text=True).stdout
    first = version.splitlines()[0] if version else gcc
    return Client((str(binary),), "c", f"bench/pace/client.c built with `{first}` -O2"), ""


@dataclass(frozen=True, slots=True)
class Answer:
    """One stream as the client saw it; times in microseconds from the client's start."""

    status: int
    error: str
    terminal: str
    start: int
    sent: int
    first_event: int
    first_delta: int
    last_delta: int
    ended: int
    deltas: int
    events: int
    bytes: int
    contiguous: bool
    window_deltas: int  # its deltas that arrived in the window

    @property
    def started(self) -> bool:
        """A connection was tried: the server may hold the answer, the checks expect it."""
        return self.start >= 0

    @property
    def refused(self) -> bool:
        """The server answered with an error status: it accepted nothing (unless its row says
        otherwise: a reply lost after the commit)."""
        return self.error == "http"


@dataclass
class ClientRun:
    """What the client saw, and what was measured meanwhile. Times in microseconds from the
    client's start; *the window* is where the harness measures (see ``bench/pace/client.py``)."""

    answers: list[Answer] = field(default_factory=list)
    lags_by_phase: dict[int, dict[int, int]] = field(default_factory=dict)  # 0, 1 (window), 2
    lags_by_second: dict[int, dict[int, int]] = field(default_factory=dict)  # coarse buckets
    window_start_us: int = 0  # when the client crossed the window's edges
    window_end_us: int = 0
    window_events: int = 0
    window_deltas: int = 0
    window_cpu_us: int = 0  # the client's own CPU (user + system) over the window
    end_us: int = 0  # when every answer had ended
    cpu_us: int = 0  # ... over its whole life, reading its spec and writing its report included
    max_rss_kib: int = 0
    cores: dict[str, Any] = field(default_factory=dict)  # CpuMeter over the window
    workers: dict[str, float] = field(default_factory=dict)
    own_backends_cores: float | None = None
    other_active_backends: int | None = None

    @property
    def window_us(self) -> int:
        return self.window_end_us - self.window_start_us

    @property
    def events(self) -> int:
        return sum(a.events for a in self.answers)

    @property
    def lags_us(self) -> dict[int, int]:
        """Every lag, whenever it arrived (bucket lower edge -> count)."""
        merged: dict[int, int] = {}
        for buckets in self.lags_by_phase.values():
            for edge, count in buckets.items():
                merged[edge] = merged.get(edge, 0) + count
        return merged


def answer(parts: list[str]) -> Answer:
    """``j status error terminal start sent first_event first_delta last_delta ended deltas
    events bytes contiguous window_deltas``"""
    n = [int(p) for p in parts[4:]]
    return Answer(
        status=int(parts[1]),
        error=ERRORS[int(parts[2])],
        terminal=parts[3],
        start=n[0],
        sent=n[1],
        first_event=n[2],
        first_delta=n[3],
        last_delta=n[4],
        ended=n[5],
        deltas=n[6],
        events=n[7],
        bytes=n[8],
        contiguous=n[9] == 1,
        window_deltas=n[10],
    )


def parse(lines: list[str], run: ClientRun) -> None:
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind == "A":
            run.answers.append(answer(rest.split()))
            continue
        parts = [int(p) for p in rest.split()]
        if kind == "H":
            run.lags_by_phase.setdefault(parts[0], {})[parts[1]] = parts[2]
        elif kind == "S":
            run.lags_by_second.setdefault(parts[0], {})[parts[1]] = parts[2]
        elif kind == "W":
            run.window_events, run.window_deltas = parts[0], parts[1]
        elif kind == "R":
            run.cpu_us, run.max_rss_kib = parts[0], parts[1]
        elif kind == "window_start":
            run.window_start_us, run.window_cpu_us = parts[0], run.window_cpu_us - parts[1]
        elif kind == "window_end":
            run.window_end_us, run.window_cpu_us = parts[0], run.window_cpu_us + parts[1]
        elif kind == "measure_end":
            run.end_us = parts[0]


@dataclass
class Meters:
    """What to measure over the client's window: the server and PostgreSQL process trees, the
    server's workers apart, and this database's own backends (asked for at the window's end);
    ``edge`` is awaited at each edge of the window (``"start"``, ``"end"``), for the WAL."""

    roots: dict[str, int]
    workers: dict[str, int]
    backends: Callable[[], Awaitable[dict[str, Any]]]
    edge: Callable[[str], Awaitable[None]] | None = None


async def run_client(
    client: Client,
    spec: Spec,
    spec_path: Path,
    meters: Meters,
    *,
    timeout: float,
    on_start: Callable[[], None] | None = None,
) -> ClientRun:
    write_spec(spec_path, spec)
    log = spec_path.with_suffix(".log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *client.argv,
        str(spec_path),
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    run = ClientRun()
    meter = CpuMeter({**meters.roots, "client": proc.pid})
    workers = CpuMeter(dict(meters.workers))
    try:
        lines = await asyncio.wait_for(_read(proc, meter, workers, meters, run, on_start), timeout)
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise RuntimeError(f"the model-pace client did not finish in {timeout:.0f} s") from None
    finally:
        log.close()
    if proc.returncode != 0:
        raise RuntimeError(f"the model-pace client failed ({proc.returncode}); see {log.name}")
    parse(lines, run)
    return run


async def _read(
    proc: asyncio.subprocess.Process,
    meter: CpuMeter,
    workers: CpuMeter,
    meters: Meters,
    run: ClientRun,
    on_start: Callable[[], None] | None,
) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    async for raw in proc.stdout:
        line = raw.decode().strip()
        lines.append(line)
        if line.startswith("window_start"):
            meter.start()
            workers.start()
            if meters.edge is not None:
                await meters.edge("start")
            if on_start is not None:
                on_start()
        elif line.startswith("window_end"):
            if meters.edge is not None:
                await meters.edge("end")
            ours = await meters.backends()
            for pid in ours["pids"]:  # counted from zero if they appeared since the start
                meter.roots[f"backend {pid}"] = pid
            run.cores = meter.stop()
            run.workers = {k: v for k, v in workers.stop().items() if k in meters.workers}
            own = [run.cores.pop(f"backend {pid}") for pid in ours["pids"]]
            run.own_backends_cores = round(sum(own), 3) if own else None
            run.other_active_backends = ours["other_active"]
        elif line.startswith("measure_end"):
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")  # the client waits for this to write its report and go
            proc.stdin.close()
    return lines
