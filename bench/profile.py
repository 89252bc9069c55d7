"""py-spy profiles of the server under load, and their summary: where the CPU time goes.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``); we keep that
file beside the results (any flamegraph tool reads it) and summarise it: the functions with the
most samples of their own, the functions with the most samples under them, and the share of each
library among the innermost Python frames.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# Frames every sample goes through (process start, the event loop): not a cost of their own.
_PLUMBING = (
    "multiprocessing/",
    "<string>",
    "uvicorn/_subprocess.py",
    "uvicorn/supervisors/",
    "uvicorn/server.py",
    "uvicorn/_compat.py",
    "uvicorn/main.py",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "server/__main__.py",
    "runpy.py",
)
# Pass-through frames of the request chain: their inclusive share is the whole request's.
_CHAIN = (
    "Handle._run ",
    "RequestResponseCycle.run_asgi ",
    "ProxyHeadersMiddleware.__call__ ",
    "Starlette.__call__ ",
    "ServerErrorMiddleware.__call__ ",
    "ExceptionMiddleware.__call__ ",
    "AccessLog.__call__ ",
    "SecurityHeaders.__call__ ",
    "RequestLimits.__call__ ",
    "wrap_app_handling_exceptions.<locals>.wrapped_app ",
    "Router.__call__ ",
    "Router.app ",
    "Route.handle ",
    "request_response.<locals>.app ",
    "request_response.<locals>.app.<locals>.app ",
    "TaskHandle._run_coro ",
)
_LIBRARIES = (
    ("server/", "orderly (server/)"),
    ("asyncpg/", "asyncpg"),
    ("sse_starlette/", "sse-starlette"),
    ("starlette/", "starlette"),
    ("uvicorn/", "uvicorn"),
    ("pydantic/", "pydantic"),
    ("anyio/", "anyio"),
    ("asyncio/", "asyncio"),
    ("json/", "json"),
    ("prometheus_client/", "prometheus-client"),
    ("logging/", "logging"),
    ("uuid.py", "uuid"),
)


def py_spy() -> str | None:
    """The py-spy executable beside this Python, or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local)
    return shutil.which("py-spy")


async def record(pid: int, seconds: float, output: Path, *, rate: int = 200) -> str | None:
    """Sample ``pid`` and its children for ``seconds`` into ``output`` (raw collapsed stacks);
    returns an error text, or None."""
    exe = py_spy()
    if exe is None:
        return "py-spy is not installed (pip install py-spy)"
    proc = await asyncio.create_subprocess_exec(
        exe,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--gil",
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--output",
        str(output),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return "py-spy did not finish"
    if proc.returncode != 0 or not await asyncio.to_thread(output.exists):
        return f"py-spy failed ({proc.returncode}): {out.decode(errors='replace')[-500:]}"
    return None


_PROCESS = re.compile(r'^(?:process \d+:"(?:[^"\\]|\\.)*";)+')


def _process_prefix(stack: str) -> str:
    """The ``process N:"command line";`` frames that --subprocesses puts first (command lines
    may hold semicolons, so they are cut by pattern, not split)."""
    match = _PROCESS.match(stack)
    return match.group(0) if match else ""


def compress(path: Path) -> Path:
    """Gzip a raw profile in place (collapsed stacks repeat a lot: about 20 times smaller);
    ``zcat`` it into any flamegraph tool."""
    target = path.with_name(path.name + ".gz")
    with path.open("rb") as raw, gzip.open(target, "wb") as packed:
        shutil.copyfileobj(raw, packed)
    path.unlink()
    return target


def _function(frame: str) -> tuple[str, str]:
    """``('Class.method', 'pkg/file.py')`` from ``'Class.method (pkg/file.py:123)'``."""
    name, _, where = frame.rpartition(" (")
    if not name:
        return frame, ""
    return name, where.rstrip(")").rsplit(":", 1)[0]


def _library(path: str) -> str:
    for prefix, label in _LIBRARIES:
        if path.startswith(prefix) or f"/{prefix}" in path:
            return label
    return "other (stdlib, C extensions' Python parts)"


def summarize(raw: str, *, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares of the functions in a raw py-spy profile."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.removeprefix(_process_prefix(stack)).split(";")
        if not frames:
            continue
        total += count
        keys = []
        for frame in frames:
            name, path = _function(frame)
            if any(p in path for p in _PLUMBING):
                continue
            keys.append(f"{name} ({path})")
        leaf_name, leaf_path = _function(frames[-1])
        own[f"{leaf_name} ({leaf_path})"] += count
        libraries[_library(leaf_path)] += count
        for key in set(keys):
            inclusive[key] += count

    def share(counter: Counter[str], limit: int) -> list[dict[str, Any]]:
        return [
            {"function": key, "samples": n, "percent": round(100 * n / total, 1)}
            for key, n in counter.most_common(limit)
        ]

    # Inclusive lists are topped by the frames every request passes through (the ASGI chain of
    # middleware and routing): leave those out, keep the ones that tell where time goes.
    telling = Counter(
        {
            k: n
            for k, n in inclusive.items()
            if n < 0.95 * total and not any(k.startswith(chain) for chain in _CHAIN)
        }
    )
    return {
        "samples": total,
        "self_top": share(own, top),
        "inclusive_top": share(telling, top + 10),
        "by_library": share(libraries, len(libraries)),
    }
