"""Statements that Citus runs whole on the owner's node: delegated calls (docs/scaling.md).

Citus plans a statement whose CTEs write in steps: each CTE a query of its own, its rows shipped
to every node as an intermediate result, and the transaction committed on each node that took a
part (two-phase), even when every table it touches is on one shard. ``reserve_pair`` and
``flush`` are such statements, on the hot path. On Citus each of them is instead a PL/pgSQL
function (its body in ``sql/citus.sql``: the statement's steps as plain single-shard
statements), distributed by an extra last argument: the owner whose shard it touches
(``create_distributed_function``, co-located with the per-user tables). Called as
``SELECT f(args)`` outside a transaction block, Citus sends the call whole to the node of that
owner's shard, where each statement runs on local shards: one round trip, one node, one local
commit. ``Database.fetch_routed`` calls them so.

A function takes its statement's parameters and returns its statement's columns (read from
``sql/queries.sql`` with a describe), so the two cannot drift apart in shape; the integration
suite, run on Citus (``make test-citus``), holds them to the same behaviour. ``migrate``
(re)makes the functions on every run on Citus: one whose body, arguments and row type already
match is left alone (a second run changes nothing); one that differs (a new release changed it)
is dropped and made again. On PostgreSQL without Citus there are no such functions, and the
statements run as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # server.db calls call_text
    from server.db import Session

# The statements run as delegated calls on Citus. Each takes, after its own parameters, the owner
# that routes it: the caller's (reserve_pair) or any owner of the batch (flush batches are grouped
# by shard: Store.by_shard).
DELEGATED = ("reserve_pair", "flush")
DELEGATE_TO = "user_running"  # the co-location group of every per-user table


def function_name(statement: str) -> str:
    return f"orderly_call_{statement}"


def row_type(statement: str) -> str:
    return f"orderly_{statement}_row"


def call_text(statement: str, parameters: int) -> str:
    """The call of ``statement``'s function: its parameters, then the routing owner."""
    arguments = ", ".join(f"${i}" for i in range(1, parameters + 2))
    return f"SELECT {function_name(statement)}({arguments})"


async def delegate(
    session: Session, queries: Mapping[str, str], bodies: Mapping[str, str]
) -> list[str]:
    """Make (or remake) the function of every delegated statement that does not match its
    body (``sql/citus.sql``) and its statement's parameters and columns; return the names of
    those made. Only on a database with the citus extension."""
    made = []
    for statement in DELEGATED:
        parameters, columns = await session.describe(queries[statement])
        code = bodies[statement]
        arguments = [*parameters, "uuid"]
        signature = f"{function_name(statement)}({', '.join(arguments)})"
        fields = ", ".join(f"{_quote(name)} {kind}" for name, kind in columns)
        current = await session.fetchval_sql(
            "SELECT p.prosrc = $2 AND pg_get_function_identity_arguments(p.oid) = $3"
            "       AND (SELECT string_agg(quote_ident(a.attname) || ' '"
            "                              || format_type(a.atttypid, a.atttypmod), ', '"
            "                              ORDER BY a.attnum)"
            "            FROM pg_attribute AS a JOIN pg_type AS t ON t.typrelid = a.attrelid"
            "            WHERE t.typname = $4 AND a.attnum > 0 AND NOT a.attisdropped) = $5"
            " FROM pg_proc AS p WHERE p.proname = $1",
            function_name(statement),
            code,
            ", ".join(arguments),
            row_type(statement),
            fields,
        )
        if current:
            continue
        await session.execute_sql(f"DROP FUNCTION IF EXISTS {function_name(statement)}")
        await session.execute_sql(f"DROP TYPE IF EXISTS {row_type(statement)}")
        await session.execute_sql(f"CREATE TYPE {row_type(statement)} AS ({fields})")
        await session.execute_sql(
            f"CREATE FUNCTION {signature} RETURNS SETOF {row_type(statement)}"
            f" LANGUAGE plpgsql VOLATILE AS $orderly${code}$orderly$"
        )
        await session.execute_sql(
            "SELECT create_distributed_function("
            "$1::regprocedure, $2::text, colocate_with => $3::text)",
            signature,
            f"${len(arguments)}",
            DELEGATE_TO,
        )
        made.append(statement)
    return made


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
