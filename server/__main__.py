"""The command line: serve (default), migrate, token create/list/revoke, user remove.

Every command uses the same database as the server: ``DATABASE_URL``, or the embedded PostgreSQL
under ``DATA_DIR`` (default ``.data/``) when it is unset.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

from server import accounts, announce, logs
from server.auth import hash_token, issue_token
from server.config import Settings, SettingsError
from server.db import connect
from server.migrate import migrate
from server.store import Store

logger = logging.getLogger("server")
EMBEDDED_DATABASE = "orderly"


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """``DATABASE_URL``, or an embedded server (started if needed, stopped if we started it)."""
    if settings.database_url:
        yield settings.database_url
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the wheel warns about XDG_RUNTIME_DIR on import
        from server.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(settings.data_dir / "postgres", settings.embedded_port)
    started_here = server.running_port() is None
    admin_url = server.start()
    asyncio.run(_ensure_database(admin_url, EMBEDDED_DATABASE))
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + EMBEDDED_DATABASE
    finally:
        if started_here:
            server.stop()


async def _ensure_database(admin_url: str, name: str) -> None:
    async with connect(admin_url) as session:
        exists = await session.fetchval_sql("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await session.execute_sql(f'CREATE DATABASE "{name}"')


async def _migrate(url: str, to: int | None = None) -> None:
    async with connect(url) as session:
        applied = await migrate(session, to=to)
    if not applied:
        logger.info("the database is up to date")


async def _create_token(url: str, username: str) -> str:
    async with Store.single(url) as store:
        return await issue_token(store, username)


async def _revoke(url: str, args: argparse.Namespace) -> int:
    if args.token_id is not None:
        return await accounts.revoke_token_id(url, args.token_id)
    async with Store.single(url) as store:
        if args.username is not None:
            return await store.revoke_user_tokens(username=args.username)
        return await store.revoke_token(hash_token(args.token))


def _print_tokens(tokens: list[accounts.TokenInfo]) -> None:
    """One line per token: its id (for ``token revoke --id``), user, creation, state."""
    for t in tokens:
        state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
        print(f"{t.id}  {t.username}  created {t.created_at:%Y-%m-%d %H:%M}  {state}")


def _remove_user(url: str, username: str) -> int:
    removal = asyncio.run(accounts.remove_user(url, username))
    if not removal.found:
        print(f"no user {username!r}", file=sys.stderr)
        return 1
    if removal.running:
        print(
            f"user {username!r} has {removal.running} answer(s) running or queued: nothing was "
            "removed. Revoke their tokens (token revoke --user) and try again once they end.",
            file=sys.stderr,
        )
        return 1
    print(
        f"removed user {username!r}: {removal.tokens} token(s), {removal.projects} project(s), "
        f"{removal.messages} message(s)"
    )
    return 0


async def _is_fresh(url: str) -> bool:
    async with Store.single(url) as store:
        return await store.count_users() == 0


def _exit_quietly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _fresh_metrics_dir(settings: Settings) -> Path:
    directory = (settings.data_dir / "metrics").resolve()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def serve(settings: Settings) -> None:
    import uvicorn

    with database_url(settings) as url:
        asyncio.run(_migrate(url))
        base = settings.base_url
        if asyncio.run(_is_fresh(url)):
            token = asyncio.run(_create_token(url, "demo"))
            notice = (
                f"\nCreated user 'demo'. Open this URL to sign in:\n\n    {base}/#token={token}\n"
            )
        else:
            notice = (
                f"\nServing on {base}/ (a new sign-in link: "
                "`.venv/bin/python -m server token create demo`)\n"
            )
        # Printed once the server answers, not now: opened at once, the URL must work.
        announce.when_ready(settings.host, settings.port, notice)
        # The workers build their settings from the environment: hand them the resolved URL,
        # and with several workers a directory where their metrics meet.
        os.environ["DATABASE_URL"] = url
        if settings.workers > 1:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_fresh_metrics_dir(settings))
        # uvicorn re-raises the signal that stopped it once it is done; exit through Python
        # then, so that the embedded database above is stopped too.
        signal.signal(signal.SIGTERM, _exit_quietly)
        uvicorn.run(
            "server.app:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            proxy_headers=True,
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
            log_level=settings.log_level.lower(),
            access_log=False,  # ours (server/middleware.py) leaves query strings out
            log_config=None,  # ours (server/logs.py): one format for every line
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve HTTP (the default)")
    migrate_cmd = commands.add_parser("migrate", help="apply database migrations")
    migrate_cmd.add_argument("--to", type=int, default=None, help="stop at this version")
    token = commands.add_parser("token", help="manage API tokens").add_subparsers(
        dest="action", required=True
    )
    create = token.add_parser(
        "create",
        help="create a user (if needed) and a new token; print the sign-in URL, then the token "
        "alone on the last line",
    )
    create.add_argument("username")
    listing = token.add_parser("list", help="list tokens (ids, users, states; never the tokens)")
    listing.add_argument("username", nargs="?", help="only this user's")
    revoke = token.add_parser("revoke", help="revoke one token, or all of a user's")
    group = revoke.add_mutually_exclusive_group(required=True)
    group.add_argument("token", nargs="?")
    group.add_argument("--user", dest="username")
    group.add_argument("--id", dest="token_id", type=UUID, help="a token's id, from token list")
    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="action", required=True
    )
    remove = user.add_parser(
        "remove",
        help="delete a user, their tokens, projects and messages (refused while an answer of "
        "theirs runs)",
    )
    remove.add_argument("username")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        parser.error(str(exc))
    if args.command in (None, "serve"):
        logs.configure(settings.log_level, settings.log_format)
    else:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command in (None, "serve"):
        serve(settings)
        return 0
    with database_url(settings) as url:
        if args.command == "migrate":
            asyncio.run(_migrate(url, args.to))
        elif args.command == "user":
            return _remove_user(url, args.username)
        elif args.action == "create":
            asyncio.run(_migrate(url))
            issued = asyncio.run(_create_token(url, args.username))
            # The link first, for a person; the token alone last, for `| tail -1`.
            print(f"Sign-in URL for {args.username}:\n\n    {settings.base_url}/#token={issued}\n")
            print(issued)
        elif args.action == "list":
            _print_tokens(asyncio.run(accounts.list_tokens(url, args.username)))
        else:
            count = asyncio.run(_revoke(url, args))
            print(f"revoked {count} token{'s' if count != 1 else ''}")
            return 0 if count else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
