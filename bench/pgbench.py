"""The ceiling: pgbench running the service's own SQL for one generation, and the seed app's
``MAX(sequence) + 1`` method for comparison.

The pgbench script is built from ``sql/queries.sql`` itself, so it stays the same SQL as the
server's: ``reserve_pair`` (the reservation, with the ownership check and the per-user count),
then ``flush`` for that one message with the events a demo generation writes (2 progress, 8
deltas, one chunk) and its final status and content. Parameters become pgbench expressions: the
project and owner ids are computed from a random number (see ``bench.database``). The flush's one
NOTIFY hint is left out: the service sends one per batch of many generations, not one per
generation, so including it would lower the ceiling. The flush is fenced by its worker's heartbeat,
so the run first registers one for the script's worker (``SETUP_SQL``), expiring in a day.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.database import SQL_PROJECT_ID, SQL_USER_ID
from server.citus import function_name
from server.db import load_queries
from server.events import Chunk, Event, delta_data, progress_data
from server.generators.demo import demo_answer, split_evenly

LEASE_OWNER = "0000000b-0000-0000-0000-00000000000b"
PROMPT = "Benchmark question: how are you today?"
_PARAM = re.compile(r"\$(\d+)\b")
_TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.MULTILINE)
_TXNS = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.MULTILINE)
# ``-r``: a line per command of the script, its mean latency first (and, since 15, its failures)
_STATEMENT = re.compile(r"^\s+([\d.]+)\s+(?:\d+\s+)?(\S.*)$")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _array(values: list[str], cast: str) -> str:
    return f"ARRAY[{', '.join(values)}]::{cast}[]"


def _substitute(sql: str, params: dict[int, str]) -> str:
    body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return _PARAM.sub(lambda m: f"({params[int(m[1])]})", body)


SETUP_SQL = (
    "INSERT INTO workers (id, expires_at, host) "
    f"VALUES ('{LEASE_OWNER}', now() + interval '1 day', 'pgbench') ON CONFLICT (id) DO NOTHING"
)


def generation_script(queries_sql: Path, *, delegated: bool = False) -> tuple[str, dict[str, Any]]:
    """The pgbench script for one generation (from ``queries_sql``, the run's snapshot of
    ``sql/queries.sql``), and a description of what it does. ``delegated``: on Citus, the two
    statements called as the service calls them there, as their distributed functions
    (``server/citus.py``), and the answer's id read back by a routed query (a call's row is one
    composite value, which ``\\aset`` cannot take apart)."""
    queries = load_queries(queries_sql)
    project = SQL_PROJECT_ID.format(n=":n::int")
    owner = SQL_USER_ID.format(n=":n::int")
    reserve_values = {
        1: project,
        2: owner,
        3: _literal(PROMPT),
        4: "'{}'",
        5: "NULL",
        6: _literal(LEASE_OWNER),
        7: "1000000",
        8: "'concurrent'",
        # A user message: no tool results, no tools, no tool choice
        9: "NULL",
        10: "NULL",
        11: "NULL",
    }
    answer = demo_answer(PROMPT)
    parts = split_evenly(answer, 8)
    named = [
        ("progress", progress_data("thinking", "Reading the conversation", 0.0)),
        ("progress", progress_data("writing", "Writing the answer", 10.0)),
        *(("delta", delta_data(part)) for part in parts),
    ]
    chunk = Chunk.of([Event(i + 2, name, data) for i, (name, data) in enumerate(named)])
    n_events = len(named)
    # The flush's NOTIFY is turned off by its own parameter ($18): nobody listens here.
    flush_values = {
        1: _literal(LEASE_OWNER),
        # The chunk of the answer's events
        2: _array([owner], "uuid"),
        3: _array([":id::uuid"], "uuid"),
        4: _array([str(chunk.first_event_id)], "integer"),
        5: _array([_literal(chunk.kinds)], "text"),
        6: _array([_literal(chunk.data)], "text"),
        # The message's end
        7: _array([owner], "uuid"),
        8: _array([":id::uuid"], "uuid"),
        9: _array(["'success'"], "text"),
        10: _array([_literal(answer)], "text"),
        11: _array([str(n_events + 2)], "integer"),
        12: _array(["NULL"], "text"),
        13: _array(["NULL"], "text"),
        # The demo's report: the prompt's words, the answer's pieces, and why it ended.
        14: _array([str(len(PROMPT.split()))], "integer"),
        15: _array([str(len(parts))], "integer"),
        16: _array([_literal("stop")], "text"),
        # The batch's owners, and no NOTIFY (nobody listens here)
        17: _array([owner], "uuid"),
        18: "false",
        # No reasoning (its text, tokens and time) and no tool calls
        19: _array(["NULL"], "text"),
        20: _array(["NULL"], "integer"),
        21: _array(["NULL"], "integer"),
        22: _array(["NULL"], "text"),
    }
    if delegated:
        reserve = (
            f"{_call('reserve_pair', reserve_values, owner)};\n"
            f"SELECT id FROM messages WHERE created_by = {owner} AND project_id = {project}"
            " AND role = 'assistant' ORDER BY sequence DESC LIMIT 1"
        )
        flush = _call("flush", flush_values, owner)
    else:
        reserve = _substitute(queries["reserve_pair"], reserve_values)
        flush = _substitute(queries["flush"], flush_values)
    script = f"\\set n random(:lo, :hi)\n{reserve} \\aset\n{flush};\n"
    return script, {
        "statements": ["reserve_pair", "flush (1 message, its events in one chunk, final status)"],
        "events_per_generation": n_events,
        "notify_removed": True,
        "mode": "prepared",
        **({"delegated": True} if delegated else {}),
    }


def _call(statement: str, values: dict[int, str], owner: str) -> str:
    arguments = [f"({values[n]})" for n in sorted(values)]
    return f"SELECT {function_name(statement)}({', '.join([*arguments, owner])})"


def reserve_script(generation: str) -> str:
    """The generation script cut after its ``reserve_pair`` (a reservation alone). A delegated
    script's reservation is its call alone: the routed read-back of the answer's id that follows
    it there is for the flush (regression: it was counted in, so that the reservation on Citus
    cost a second statement and a second commit, which one PostgreSQL's did not)."""
    head, sep, _ = generation.partition(" \\aset\n")
    if not sep:
        raise ValueError("not a generation script")
    call = head.find(f"SELECT {function_name('reserve_pair')}(")
    if call >= 0:
        head = head[: head.index(";\n", call)]
    return head + ";\n"


@dataclass
class PgbenchRun:
    clients: int
    seconds: float
    tps: float
    transactions: int
    failed: int
    latency_ms: float | None
    aborted: bool
    stderr_tail: str
    statements: list[tuple[float, str]]  # with ``per_statement``: (mean ms, its text's start)

    def as_dict(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "seconds": self.seconds,
            "rate": round(self.tps, 1),
            "transactions": self.transactions,
            "failed": self.failed,
            "latency_avg_ms": self.latency_ms,
            "aborted_clients": self.aborted,
            **({"statement_latency_ms": self.named_latencies()} if self.statements else {}),
            **({"stderr": self.stderr_tail} if self.aborted else {}),
        }

    def named_latencies(self) -> dict[str, float]:
        """The SQL statements' mean latencies, named as in the generation script (its
        ``\\set`` lines left out)."""
        sql = [ms for ms, text in self.statements if not text.startswith("\\")]
        names = DELEGATED_SCRIPT_STATEMENTS if len(sql) == 3 else SCRIPT_STATEMENTS
        return dict(zip(names, sql, strict=False))


SCRIPT_STATEMENTS = ("reserve_pair", "flush")  # the SQL of generation_script, in order
DELEGATED_SCRIPT_STATEMENTS = ("reserve_pair", "read_back_id", "flush")  # delegated=True


def statement_latencies(out: str) -> list[tuple[float, str]]:
    """``-r``'s lines: each command's mean latency in ms and the start of its text."""
    lines = out.split("statement latencies in milliseconds", 1)
    if len(lines) < 2:
        return []
    found = []
    for line in lines[1].splitlines()[1:]:
        match = _STATEMENT.match(line)
        if match is None:
            break
        found.append((float(match[1]), match[2][:60]))
    return found


async def run_pgbench(
    bin_dir: Path,
    url: str,
    script: Path,
    *,
    clients: int,
    seconds: float,
    variables: dict[str, int],
    on_start: Callable[[int], None] | None = None,
    per_statement: bool = False,
) -> PgbenchRun:
    """One pgbench run; ``on_start`` gets pgbench's pid (for the CPU meter); ``per_statement``:
    each statement's mean latency too (``-r``)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SETUP_SQL)
    finally:
        await conn.close()
    args = [
        str(bin_dir / "pgbench"),
        "-n",
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        str(min(2, clients)),
        "-T",
        str(max(1, round(seconds))),
        "-f",
        str(script),
        *(["-r"] if per_statement else []),
    ]
    for name, value in variables.items():
        args += ["-D", f"{name}={value}"]
    proc = await asyncio.create_subprocess_exec(
        *args, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    if on_start is not None:
        on_start(proc.pid)
    try:
        out_b, err_b = await asyncio.wait_for(proc.communicate(), seconds + 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    out, err = out_b.decode(errors="replace"), err_b.decode(errors="replace")
    tps = _TPS.search(out)
    if tps is None:
        raise RuntimeError(f"pgbench failed ({proc.returncode}):\n{out}\n{err}")
    txns, failed, latency = _TXNS.search(out), _FAILED.search(out), _LATENCY.search(out)
    return PgbenchRun(
        clients=clients,
        seconds=seconds,
        tps=float(tps[1]),
        transactions=int(txns[1]) if txns else 0,
        failed=int(failed[1]) if failed else 0,
        latency_ms=float(latency[1]) if latency else None,
        aborted="aborted" in err,
        stderr_tail=err[-1500:],
        statements=statement_latencies(out) if per_statement else [],
    )


# The seed app's method, for comparison


SEED_TABLE = """
CREATE TABLE IF NOT EXISTS seed_messages (
    project_id integer NOT NULL,
    sequence   bigint NOT NULL,
    role       text NOT NULL,
    content    text NOT NULL{constraint}
)
"""


async def seed_method(
    url: str, *, clients: int, seconds: float, unique: bool, project: int
) -> dict[str, Any]:
    """``MAX(sequence) + 1`` in its own query, then the INSERT, for a user message and then an
    assistant message, by ``clients`` connections on one project for ``seconds``. With the
    UNIQUE constraint the race shows as duplicate-key failures; without it, as duplicates."""
    table = "seed_messages" if unique else "seed_messages_unconstrained"
    constraint = ",\n    UNIQUE (project_id, sequence)" if unique else ""
    admin = await asyncpg.connect(url)
    try:
        ddl = SEED_TABLE.replace("seed_messages", table).format(constraint=constraint)
        await admin.execute(ddl)
        await admin.execute(f"DELETE FROM {table} WHERE project_id = $1", project)
    finally:
        await admin.close()
    counts = {"generations": 0, "inserts": 0, "duplicate_key": 0}
    first_failure: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds

    async def client() -> None:
        conn = await asyncpg.connect(url)
        try:
            while time.perf_counter() < deadline:
                for role in ("user", "assistant"):
                    nxt = await conn.fetchval(
                        f"SELECT coalesce(max(sequence), 0) + 1 FROM {table} WHERE project_id = $1",
                        project,
                    )
                    try:
                        await conn.execute(
                            f"INSERT INTO {table} (project_id, sequence, role, content)"
                            " VALUES ($1, $2, $3, 'hello')",
                            project,
                            nxt,
                            role,
                        )
                        counts["inserts"] += 1
                    except asyncpg.UniqueViolationError:
                        counts["duplicate_key"] += 1
                        if not first_failure:
                            first_failure.append(time.perf_counter() - started)
                counts["generations"] += 1
        finally:
            await conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    check = await asyncpg.connect(url)
    try:
        row = await check.fetchrow(
            f"SELECT count(*) AS n, count(DISTINCT sequence) AS d, max(sequence) AS hi"
            f" FROM {table} WHERE project_id = $1",
            project,
        )
    finally:
        await check.close()
    assert row is not None
    return {
        "clients": clients,
        "seconds": seconds,
        "unique_constraint": unique,
        "generations_attempted": counts["generations"],
        "rows_written": int(row["n"]),
        "duplicate_key_failures": counts["duplicate_key"],
        "duplicate_sequences_written": int(row["n"]) - int(row["d"]),
        "first_failure_after_s": round(first_failure[0], 4) if first_failure else None,
        "gaps": int(row["hi"] or 0) - int(row["d"]),
    }
