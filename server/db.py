"""The database: connection pool, named queries, transactions, and driver error translation.

This is the only module that imports asyncpg. Everything above it sees rows as mappings and
errors as domain errors (``server/errors.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from server.citus import call_text
from server.errors import (
    AnswerRunning,
    DatabaseUnavailable,
    DuplicateRequest,
    InvalidInput,
    NotAuthenticated,
    NotLatestAnswer,
    ToolCallsNotPending,
    ToolResultsMismatch,
    TooManyRunning,
    WorkerUnavailable,
    WriteConflict,
)
from server.resources import SQL_DIR

logger = logging.getLogger(__name__)

Row = Mapping[str, Any]
_QUERY_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
# On Citus a constraint violated on a shard is named with the shard's id (messages_pkey_102008),
# and only in the message: the error's constraint field does not come through the coordinator.
_SHARD_SUFFIX = re.compile(r"_\d+$")
_CONSTRAINT_IN_MESSAGE = re.compile(r'constraint "([^"]+)"')


def _constraint(exc: asyncpg.PostgresError) -> str:
    """The name of the constraint ``exc`` violated, as the schema names it."""
    name = getattr(exc, "constraint_name", None)
    if not name:
        found = _CONSTRAINT_IN_MESSAGE.search(str(exc))
        name = found[1] if found else ""
    return _SHARD_SUFFIX.sub("", name)


# Errors that mean "the database is not reachable right now", not "this query is wrong".
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    # "cannot switch to state 12; another operation is in progress": a pooled connection caught
    # by the server's shutdown mid-operation (seen under `pg_ctl stop -m fast`, fault suite seed
    # 2010). The database going away, not a bug of the query.
    asyncpg.InternalClientError,
)


def load_queries(path: Path = SQL_DIR / "queries.sql") -> dict[str, str]:
    """Split ``queries.sql`` into ``{name: statement}`` by its ``-- name:`` headers."""
    parts = _QUERY_HEADER.split(path.read_text())
    return {name: sql.strip() for name, sql in zip(parts[1::2], parts[2::2], strict=True)}


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors into domain errors, in one place."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        constraint = _constraint(exc)
        if constraint == "messages_idempotency_key":
            raise DuplicateRequest() from exc
        if constraint == "event_chunks_pkey":
            # A flush whose chunk's id an end (cancel, the reaper) took meanwhile: the flusher
            # sends it again, and then finds the message ended.
            raise WriteConflict("an end written meanwhile took the event id of a chunk") from exc
        raise
    except asyncpg.RaiseError as exc:
        if exc.args and exc.args[0] == "too_many_running_generations":
            raise TooManyRunning() from exc
        if exc.args and exc.args[0] == "answer_running":  # detail: "<message id> <sequence>"
            message_id, sequence = str(exc.detail).split()
            raise AnswerRunning(message_id, int(sequence)) from exc
        if exc.args and exc.args[0] == "tool_calls_not_pending":
            raise ToolCallsNotPending() from exc
        if exc.args and exc.args[0] == "tool_results_mismatch":
            raise ToolResultsMismatch() from exc
        if exc.args and exc.args[0] == "not_latest_answer":
            raise NotLatestAnswer() from exc
        if exc.args and exc.args[0] == "heartbeat_expired":
            raise WorkerUnavailable(
                "this worker's heartbeat expired (it lost the database for longer than the "
                "lease); it is registering again: retry"
            ) from exc
        raise
    except asyncpg.ForeignKeyViolationError as exc:
        if _constraint(exc) == "projects_owner_id_fkey":
            # The user was removed (`user remove`) while a worker still had their token cached.
            raise NotAuthenticated("this user no longer exists", code="invalid_token") from exc
        raise
    except (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError) as exc:
        raise InvalidInput("text contains characters the database cannot store") from exc
    except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
        raise DatabaseUnavailable("the database was busy; retry") from exc
    except _UNAVAILABLE as exc:
        raise DatabaseUnavailable() from exc


async def _keep_session(_conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Skip asyncpg's reset query on release (``RESET ALL; UNLISTEN *; ...``): one round trip per
    query saved. Safe because pooled connections never change session state: advisory locks and
    LISTEN live on connections of their own (``connect()``, ``Listener``), and an open
    transaction is still rolled back by asyncpg itself."""


class Session:
    """One connection: named queries, raw SQL (migrations), transactions."""

    def __init__(
        self,
        conn: asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record],
        queries: Mapping[str, str],
    ) -> None:
        self._conn = conn
        self._queries = queries

    async def fetch(self, name: str, *args: Any) -> list[Row]:
        with translate_errors():
            return cast(list[Row], await self._conn.fetch(self._queries[name], *args))

    async def fetchrow(self, name: str, *args: Any) -> Row | None:
        with translate_errors():
            return cast(Row | None, await self._conn.fetchrow(self._queries[name], *args))

    async def fetchval(self, name: str, *args: Any) -> Any:
        with translate_errors():
            return await self._conn.fetchval(self._queries[name], *args)

    async def execute_sql(self, sql: str, *args: Any) -> str:
        with translate_errors():
            return await self._conn.execute(sql, *args)

    async def fetchval_sql(self, sql: str, *args: Any) -> Any:
        with translate_errors():
            return await self._conn.fetchval(sql, *args)

    async def describe(self, sql: str) -> tuple[list[str], list[tuple[str, str]]]:
        """A statement's parameter types and its result columns (name, type), as SQL names."""
        with translate_errors():
            statement = await self._conn.prepare(sql)
            oids = [t.oid for t in statement.get_parameters()]
            attributes = statement.get_attributes()
            names = await self._conn.fetch(
                "SELECT format_type(o, NULL) FROM unnest($1::oid[]) WITH ORDINALITY AS u (o, n)"
                " ORDER BY n",
                oids + [a.type.oid for a in attributes],
            )
        types = [r[0] for r in names]
        return types[: len(oids)], [
            (a.name, kind) for a, kind in zip(attributes, types[len(oids) :], strict=True)
        ]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        with translate_errors():
            async with self._conn.transaction():
                yield


# Every connection of the service's own (pool and heartbeat) sets these first, with set_config
# rather than as start-up parameters, which a pooler such as PgBouncer refuses. asyncpg looks up,
# once per new connection, each type it has no codec for (uuid[], int4[]: arrays of ours) with a
# query on the catalogs, and two settings made that lookup seconds long:
# - jit: PostgreSQL compiles a query its planner thinks expensive, and the lookup's recursive
#   query looks so (measured on PostgreSQL 15 with llvmjit: 1.9 s with JIT, 5 ms without). No
#   statement of ours is worth compiling: short ones, on indexes.
# - citus.override_table_visibility: on Citus, every catalog query of a session hides the shards
#   with a filter called per pg_class row, which made the lookup take 1 to 3 s per connection on
#   a loaded coordinator (33 ms without). Nothing of ours lists tables. On PostgreSQL without
#   Citus the setting is an unused placeholder.
SESSION_SETUP = (
    "SELECT set_config('jit', 'off', false),"
    " set_config('citus.override_table_visibility', 'off', false)"
)


async def _set_up_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.execute(SESSION_SETUP)


# How long closing a pool may wait for its connections to be handed back (Database.close).
CLOSE_SECONDS = 5.0


class Database:
    """A pool of connections running the named queries of ``sql/queries.sql``."""

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 10) -> None:
        self.url = url
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self.queries = load_queries()
        self.in_flight = 0  # queries issued and not answered yet (for the pool metrics)
        # Whether the database is a Citus cluster (docs/scaling.md): read when the pool opens.
        self.distributed = False

    async def open(self) -> None:
        with translate_errors():
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=self._min_size,
                max_size=self._max_size,
                command_timeout=30,
                max_inactive_connection_lifetime=60,
                reset=_keep_session,
                init=_set_up_session,
            )
            self.distributed = bool(await self._pool.fetchval(self.queries["is_distributed"]))

    async def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Close the pool: politely if every connection is handed back and the server answers
        within ``timeout``, else drop the connections. asyncpg's own ``Pool.close`` waits
        without a bound for a connection still held (a statement waiting on a lock, a node
        that stopped answering), and a server stopping must not hang on it."""
        if self._pool is None:
            return
        try:
            await asyncio.wait_for(self._pool.close(), timeout)
        except TimeoutError:
            logger.warning("the pool did not close within %.1fs; its connections dropped", timeout)
            self._pool.terminate()

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    @property
    def max_size(self) -> int:
        """The most connections the pool opens (so the most statements it runs at once)."""
        return self._max_size

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Database.open() was not called")
        return self._pool

    async def fetch(self, name: str, *args: Any) -> list[Row]:
        self.in_flight += 1
        try:
            with translate_errors():
                rows = await self.pool.fetch(self.queries[name], *args, timeout=30)
                return cast(list[Row], rows)
        finally:
            self.in_flight -= 1

    async def fetch_routed(self, name: str, owner: UUID, *args: Any) -> list[Row]:
        """A statement of ``server.citus.DELEGATED``: on Citus, the call of its function, which
        Citus sends whole to the node of ``owner``'s shard (``server/citus.py``); elsewhere the
        statement itself. The same rows either way."""
        if not self.distributed:
            return await self.fetch(name, *args)
        self.in_flight += 1
        try:
            with translate_errors():
                rows = await self.pool.fetch(call_text(name, len(args)), *args, owner, timeout=30)
                return [cast(Row, row[0]) for row in rows]
        finally:
            self.in_flight -= 1

    async def fetchrow(self, name: str, *args: Any) -> Row | None:
        self.in_flight += 1
        try:
            with translate_errors():
                row = await self.pool.fetchrow(self.queries[name], *args, timeout=30)
                return cast(Row | None, row)
        finally:
            self.in_flight -= 1

    async def fetchval(self, name: str, *args: Any) -> Any:
        self.in_flight += 1
        try:
            with translate_errors():
                return await self.pool.fetchval(self.queries[name], *args, timeout=30)
        finally:
            self.in_flight -= 1

    def pool_usage(self) -> tuple[int, int, int]:
        """(connections open, in use, queries waiting for one)."""
        if self._pool is None:
            return 0, 0, 0
        size = self._pool.get_size()
        in_use = size - self._pool.get_idle_size()
        return size, in_use, max(0, self.in_flight - in_use)

    async def ping(self) -> bool:
        try:
            with translate_errors():
                await self.pool.fetchval("SELECT 1", timeout=2)
        except DatabaseUnavailable:
            return False
        return True

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        with translate_errors():
            async with self.pool.acquire(timeout=10) as conn:
                yield Session(conn, self.queries)


@asynccontextmanager
async def connect(url: str, queries: Path = SQL_DIR / "queries.sql") -> AsyncIterator[Session]:
    """A single connection outside any pool (the CLI and the migration runner), running the
    named queries of ``queries``."""
    with translate_errors():
        conn = await asyncpg.connect(url, timeout=10)
    try:
        yield Session(conn, load_queries(queries))
    finally:
        await conn.close()


class TimedConnection:
    """One connection of its own whose every statement ends within ``timeout``, whatever the
    network does: for the few small statements that must never wait behind a stuck one (the
    heartbeat's).

    A statement that overruns (or fails) is abandoned with its connection, which is terminated,
    not closed: closing waits for the server, and a half-open connection never answers (asyncpg's
    own timeout would send a cancel request and go on waiting for the stuck connection to
    acknowledge it). The next statement opens a fresh connection, within the same budget. The
    server stops a statement that outlives the budget too (``statement_timeout``), so that one
    stuck on its side holds no lock the next one would wait for.
    """

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.queries = load_queries()
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None

    async def fetch(self, name: str, *args: Any) -> list[Row]:
        try:
            with translate_errors():
                async with asyncio.timeout(self.timeout):
                    conn = await self._connection()
                    return cast(list[Row], await conn.fetch(self.queries[name], *args))
        except BaseException:
            # Whatever went wrong (a timeout, a reset, our own cancellation mid-statement), the
            # connection's state is unknown: never send another statement on it.
            self.abandon()
            raise

    async def _connection(self) -> asyncpg.Connection[asyncpg.Record]:
        if self._conn is None or self._conn.is_closed():
            conn = await asyncpg.connect(
                self.url,
                server_settings={"statement_timeout": str(max(1, int(self.timeout * 1000)))},
            )
            try:
                await _set_up_session(conn)
            except BaseException:
                conn.terminate()
                raise
            self._conn = conn
        return self._conn

    def abandon(self) -> None:
        """Drop the connection at once, without a word to the server."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        """Close politely if the server answers within the budget; drop the connection if not."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await conn.close()
        except Exception:
            logger.debug("a timed connection did not close in time; dropped")
        finally:
            if not conn.is_closed():
                conn.terminate()


async def retry_unavailable(action: Callable[[], Awaitable[None]], *, attempts: int) -> None:
    """Run ``action``, retrying with backoff while the database is unavailable."""
    for attempt in range(attempts):
        try:
            await action()
            return
        except DatabaseUnavailable:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))


class Listener:
    """LISTEN on a dedicated connection (never a pooled one), reconnecting by itself.

    ``on_connect`` runs after every (re)connect: notifications sent while we were away are lost,
    so whoever waits on them must re-read the tables.
    """

    def __init__(
        self,
        url: str,
        channels: Mapping[str, Callable[[str], None]],
        *,
        on_connect: Callable[[], None],
        health_seconds: float = 10.0,
    ) -> None:
        self.url = url
        self.channels = channels
        self.on_connect = on_connect
        self.health_seconds = health_seconds
        self.connected = False

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._listen_once()
                backoff = 0.1
            except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
                logger.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, backoff)
            except Exception:
                logger.exception("LISTEN connection failed; reconnecting in %.1fs", backoff)
            self.connected = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _listen_once(self) -> None:
        conn = await asyncpg.connect(self.url, timeout=5)
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            for channel, callback in self.channels.items():
                await conn.add_listener(channel, _deliver(callback))
            self.connected = True
            self.on_connect()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self.health_seconds)
                if not lost.is_set():
                    # A half-open connection never says goodbye: ask it something.
                    await conn.fetchval("SELECT 1", timeout=5)
        finally:
            conn.terminate()


def _deliver(callback: Callable[[str], None]) -> Callable[..., None]:
    def on_notification(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        callback(payload)

    return on_notification
