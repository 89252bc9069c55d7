"""The demo generator's own drift: one answer run alone, outside any server, on uvloop like the
server's workers, with the build's own generator. The delivery lag counts a generator that runs
late, by its definition; this says how late the generator runs with no service around it (its
per-delta sleeps add their timer overshoot up), so that the report can tell the two apart."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

_SCRIPT = """
import asyncio, json, sys, time
import uvloop
from server.generators.demo import DemoGenerator

class UserMessage:  # a user's message: no tool results (what the demo reads of it)
    tool_results = None

class Context:
    prompt = "word " * 400
    user_message = UserMessage()

async def main(deltas, delta_ms):
    generator = DemoGenerator(deltas=deltas, delta_ms=delta_ms)
    started = time.perf_counter()
    async for _ in generator(Context()):
        pass
    return time.perf_counter() - started

seconds = uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
print(json.dumps({"seconds": seconds}))
"""


async def generator_drift(source_root: Path, deltas: int, delta_ms: int) -> dict[str, Any]:
    """Pace and drift of one demo answer of ``deltas`` x ``delta_ms``, alone."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SCRIPT,
        str(deltas),
        str(delta_ms),
        cwd=source_root,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    own = deltas * delta_ms / 1000
    try:
        out, err = await asyncio.wait_for(proc.communicate(), own * 3 + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return {"error": "timed out"}
    if proc.returncode != 0:
        return {"error": err.decode(errors="replace").strip()[-300:]}
    seconds = float(json.loads(out)["seconds"])
    return {
        "deltas": deltas,
        "delta_ms": delta_ms,
        "pace": round(seconds / own, 4),
        "drift_ms": round((seconds - own) * 1000, 1),
    }
