"""``python -m bench.stream_memory``: where the memory of an open stream goes, measured in-process.

The app runs in this process under uvicorn (uvloop and httptools, as ``python -m server`` runs
it) on a throwaway embedded PostgreSQL; N listeners (``python -m bench.load``'s ``listeners``
mode, the benchmark's own client, in a child process) attach to the event streams of slow
generations and sit idle but for pings. Between a baseline (after a warm-up round of streams,
opened and closed) and the moment every stream is open and has had its first ping, it reports
per stream:

- RSS growth (everything: Python objects, uvloop's and httptools' C allocations, the
  allocators' overhead);
- with ``--trace``: ``tracemalloc``'s bytes by the line that allocated them, and by the first
  line outside asyncio and the standard library that led there (tracemalloc inflates RSS, so
  the RSS of a ``--trace`` run is not the figure to quote);
- the objects the garbage collector tracks, by type.

The streams are then closed and the harness checks that tasks and streams go back to where
they were. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import json
import linecache
import os
import re
import shutil
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import uvicorn

from bench.database import project_id, seed
from bench.load import generation_request
from bench.machine import rss_kib
from bench.server import REPO_ROOT
from bench.wire import Connection
from server.app import create_app
from server.config import Settings
from server.db import connect
from server.migrate import migrate

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the wheel warns about XDG_RUNTIME_DIR on import
    from server.embedded import EmbeddedPostgres, free_port

USER = 1
# Frames that only pass an allocation along: the "by cause" view looks past them.
_PLUMBING = ("/asyncio/", "/contextlib.py", "/typing.py", "/functools.py", "/weakref")


def settings(url: str, ping_seconds: float) -> Settings:
    """The benchmark's ``open_streams`` settings (bench/scenarios.py), limits out of the way."""
    return Settings(
        database_url=url,
        demo_deltas=8,
        demo_delta_ms=600_000,  # the first delta is due in 10 minutes: idle until then
        ping_seconds=ping_seconds,
        send_timeout_seconds=60,
        shutdown_grace_seconds=1,
        log_level="warning",
        max_running_per_user=1_000_000,
        rate_per_minute=100_000_000,
        rate_burst=1_000_000,
        max_streams_per_worker=100_000,
        max_streams_per_user=100_000,
        token_cache_seconds=3600,
    )


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    directory = Path(tempfile.mkdtemp(prefix="orderly-stream-memory-"))
    server = EmbeddedPostgres(directory / "data", free_port(), durable=False)
    await asyncio.to_thread(server.start)
    try:
        async with connect(server.url) as session:
            await session.execute_sql('CREATE DATABASE "streams"')
        url = server.url.rsplit("/", 1)[0] + "/streams"
        async with connect(url) as session:
            await migrate(session)
        yield url
    finally:
        await asyncio.to_thread(server.stop, "immediate")
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def serving(app: Any, http: str) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """The app under uvicorn in this event loop, configured as ``server.__main__.serve``."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http=http,
        lifespan="on",
        proxy_headers=True,
        timeout_graceful_shutdown=5,
        log_level="warning",
        access_log=False,
        log_config=None,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield server, server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)


async def start_generations(port: int, token: str, count: int) -> list[str]:
    paths = []
    for i in range(count):
        conn = await Connection.open(port)
        try:
            raw = generation_request(port, str(project_id(USER)), token, f"Slow answer {i}")
            raw = raw.replace(b"text/event-stream", b"application/json")
            ex = await asyncio.wait_for(conn.request(raw, keep_body=True), 30)
        finally:
            conn.close()
        if ex.status != 202:
            raise RuntimeError(f"starting a generation answered {ex.status}: {bytes(ex.body)!r}")
        paths.append(json.loads(bytes(ex.body))["events_url"])
    return paths


async def listen(
    port: int,
    token: str,
    paths: list[str],
    count: int,
    on_open: Callable[[], None],
    idle: float = 0.5,
) -> dict[str, Any]:
    """``count`` listeners spread over ``paths`` (bench/load.py), ``on_open`` called once all
    are attached and settled; returns the client's result once it has closed them."""
    spec = {
        "mode": "listeners",
        "port": port,
        "paths": [[paths[i % len(paths)], token] for i in range(count)],
        "batch": 250,
        "settle": 2.0,
        "idle": idle,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.load",
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    del spec  # not to be counted as the streams' memory
    result: dict[str, Any] = {}
    try:
        async with asyncio.timeout(300):
            async for line in proc.stdout:
                record = json.loads(line)
                if record["phase"] == "idle_start":
                    on_open()
                elif record["phase"] == "result":
                    result = record
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return result


class _MallInfo2(ctypes.Structure):
    _names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(name, ctypes.c_size_t) for name in _names.split(" ")]


def allocators() -> dict[str, int]:
    """Bytes held by the two allocators under RSS: CPython's pymalloc (objects of at most 512
    bytes, in 1 MiB arenas of 16 KiB pools) and glibc's malloc (everything else: larger
    objects, uvloop's and httptools' C structures)."""
    figures: dict[str, int] = {}
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()  # written by C to the stderr file descriptor
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode()
    for key, pattern in _PYMALLOC.items():
        found = re.search(pattern, text)
        figures[key] = int(found.group(1).replace(",", "")) if found else 0
    figures["pymalloc_arenas"] *= 1 << 20
    figures["pymalloc_unused_pools"] *= 16 * 1024
    with contextlib.suppress(AttributeError, OSError):  # not glibc, or glibc before 2.33
        mallinfo2 = ctypes.CDLL(None).mallinfo2
        mallinfo2.restype = _MallInfo2
        info = mallinfo2()
        figures["malloc_in_use"] = info.uordblks + info.hblkhd
        figures["malloc_free"] = info.fordblks
    return figures


_PYMALLOC = {
    "pymalloc_arenas": r"# arenas allocated current\s*=\s*([\d,]+)",
    "pymalloc_in_use": r"# bytes in allocated blocks\s*=\s*([\d,]+)",
    "pymalloc_free_in_pools": r"# bytes in available blocks\s*=\s*([\d,]+)",
    "pymalloc_unused_pools": r"(\d+) unused pools \*",
}


@dataclasses.dataclass
class Reading:
    rss_kib: int
    tasks: int
    types: Counter[str]
    allocators: dict[str, int]
    snapshot: tracemalloc.Snapshot | None

    @classmethod
    def take(cls) -> Reading:
        gc.collect()
        types = Counter(type(o).__qualname__ for o in gc.get_objects())
        snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
        return cls(
            rss_kib(os.getpid()) or 0, len(asyncio.all_tasks()), types, allocators(), snapshot
        )


def _where(frame: tracemalloc.Frame) -> str:
    name = frame.filename
    for marker in ("site-packages/", "python3.11/", str(REPO_ROOT) + "/"):
        if marker in name:
            name = name.split(marker, 1)[1]
    line = linecache.getline(frame.filename, frame.lineno).strip()
    return f"{name}:{frame.lineno}  {line[:70]}"


def _cause(traceback: tracemalloc.Traceback) -> str:
    """The innermost frame that is not asyncio's or the standard library's plumbing."""
    for frame in reversed(traceback):  # most recent call first
        if not any(p in frame.filename for p in _PLUMBING):
            return _where(frame)
    return _where(traceback[-1])


def by_place(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, streams: int, top: int
) -> dict[str, list[tuple[str, float, float]]]:
    """Bytes and blocks per stream, grouped by allocating line and by cause."""
    diffs = after.compare_to(before, "traceback")
    views: dict[str, list[tuple[str, float, float]]] = {}
    for name, key in (("allocated at", lambda t: _where(t[-1])), ("caused by", _cause)):
        sizes: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        for diff in diffs:
            where = key(diff.traceback)
            sizes[where] += diff.size_diff
            counts[where] += diff.count_diff
        rows = [(w, s / streams, counts[w] / streams) for w, s in sizes.most_common(top)]
        views[name] = rows
    return views


def stacks(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, streams: int, count: int
) -> list[tuple[float, list[str]]]:
    """The ``count`` largest growths by whole call stack, plumbing left out, innermost last."""
    diffs = after.compare_to(before, "traceback")[:count]
    return [
        (
            d.size_diff / streams,
            [_where(f) for f in d.traceback if not any(p in f.filename for p in _PLUMBING)],
        )
        for d in diffs
    ]


def report(
    streams: int, before: Reading, after: Reading, closed: Reading, top: int
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "streams": streams,
        "rss_before_kib": before.rss_kib,
        "rss_open_kib": after.rss_kib,
        "rss_closed_kib": closed.rss_kib,
        "rss_bytes_per_stream": round((after.rss_kib - before.rss_kib) * 1024 / streams),
        "allocators_per_stream": {
            k: round((v - before.allocators.get(k, 0)) / streams)
            for k, v in after.allocators.items()
        },
        "tasks_per_stream": round((after.tasks - before.tasks) / streams, 2),
        "tasks_left_after_close": closed.tasks - before.tasks,
        "gc_objects_per_stream": round(
            (sum(after.types.values()) - sum(before.types.values())) / streams, 2
        ),
        "gc_types_per_stream": {
            t: round(n / streams, 2)
            for t, n in (after.types - before.types).most_common(top)
            if n / streams >= 0.05
        },
    }
    if before.snapshot is not None and after.snapshot is not None:
        traced = sum(s.size_diff for s in after.snapshot.compare_to(before.snapshot, "filename"))
        out["traced_bytes_per_stream"] = round(traced / streams)
        out["by_place"] = by_place(before.snapshot, after.snapshot, streams, top)
        out["stacks"] = stacks(before.snapshot, after.snapshot, streams, top)
    return out


def print_report(out: dict[str, Any], *, show_stacks: bool = False) -> None:
    n = out["streams"]
    print(f"\n{n:,} open streams, idle but for pings")
    print(f"  RSS {out['rss_before_kib']:,} -> {out['rss_open_kib']:,} KiB open", end="")
    print(f" -> {out['rss_closed_kib']:,} KiB closed")
    print(f"  RSS growth per stream: {out['rss_bytes_per_stream']:,} bytes")
    for name, size in out["allocators_per_stream"].items():
        print(f"    {name}: {size:,} bytes")
    if "traced_bytes_per_stream" in out:
        print(f"  tracemalloc per stream: {out['traced_bytes_per_stream']:,} bytes")
    print(f"  pings per stream while idle: {out['pings_per_stream_idle']}")
    print(f"  tasks per stream: {out['tasks_per_stream']}", end="")
    print(f" (left after closing: {out['tasks_left_after_close']})")
    print(f"  gc-tracked objects per stream: {out['gc_objects_per_stream']}")
    for t, k in out["gc_types_per_stream"].items():
        print(f"    {k:6.2f}  {t}")
    for view, rows in out.get("by_place", {}).items():
        print(f"  tracemalloc, bytes per stream by line {view}:")
        for where, size, count in rows:
            print(f"    {size:8.1f} B {count:6.2f} blocks  {where}")
    if show_stacks:
        print("  tracemalloc, the largest growths by call stack:")
        for size, frames in out.get("stacks", []):
            print(f"    {size:8.1f} B")
            for where in frames[-8:]:
                print(f"        {where}")


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    async with database() as url:
        tokens = await seed(url, [USER])
        app = create_app(settings(url, args.ping_seconds))
        async with serving(app, args.http) as (server, port):
            paths = await start_generations(port, tokens[USER], args.generations)
            await asyncio.sleep(0.5)  # the first flush writes their progress events
            # A warm-up round: caches, pools, the allocators' arenas, first-time imports.
            await listen(port, tokens[USER], paths, args.warmup, lambda: None)
            await asyncio.sleep(1.0)
            if args.trace:
                tracemalloc.start(args.frames)
            before = Reading.take()
            readings: list[Reading] = []
            result = await listen(
                port,
                tokens[USER],
                paths,
                args.streams,
                lambda: readings.append(Reading.take()),
                idle=args.idle,
            )
            if result.get("attached") != args.streams:
                raise RuntimeError(f"not every listener attached: {result}")
            deadline = time.monotonic() + 30
            gauge = app.state.services.worker.streams
            while gauge.open and time.monotonic() < deadline:  # noqa: ASYNC110 (a poll)
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            closed = Reading.take()
            out = report(args.streams, before, readings[0], closed, args.top)
            out["pings_per_stream_idle"] = round(result["pings_received"] / args.streams, 2)
            out["open_after_close"] = app.state.services.worker.streams.open
            out["connections_after_close"] = len(server.server_state.connections)
            tracemalloc.stop()
            return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_memory", description=__doc__)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=250)
    parser.add_argument("--ping-seconds", type=float, default=1.0)
    parser.add_argument("--idle", type=float, default=0.5, help="seconds left idle, measured")
    parser.add_argument("--http", default="httptools", help="uvicorn's HTTP implementation")
    parser.add_argument("--trace", action="store_true", help="tracemalloc by place")
    parser.add_argument("--frames", type=int, default=30, help="tracemalloc frames per trace")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--stacks", action="store_true", help="print the largest call stacks")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    import uvloop

    out = uvloop.run(measure(args))
    print_report(out, show_stacks=args.stacks)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
