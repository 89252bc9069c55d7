"""A generation's history: the earlier turns it is given, read so that the database's blips are
the database's failure, never the generator's."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from uuid import UUID

from server.errors import DatabaseUnavailable
from server.models import Message

logger = logging.getLogger(__name__)

# How long a generation's history load is tried again while the database is unavailable (a cut
# connection, a restart, a timeout): a blip as an answer starts is ridden out, and a
# longer outage ends the answer as the database's failure, not the generator's. No attempt starts
# later than this after the first; each is bounded by the database layer's own timeouts.
HISTORY_RETRY_SECONDS = 5.0
HISTORY_RETRY_FIRST_PAUSE = 0.1  # doubled after each failure, up to the last
HISTORY_RETRY_LAST_PAUSE = 1.0
HISTORY_UNAVAILABLE = "the database was unavailable, so the conversation could not be read"


class HistoryLoader:
    """A generation's ``load_history``, the same for every generator: the database's blips are
    ridden out here, and a load that gives up is remembered, so that the runner ends the answer
    as the database's failure (``database_unavailable``), not the generator's.

    Regression: the ``openai`` generator's history load met a cut connection as an answer
    started, and the answer ended ``generator_failed``."""

    def __init__(self, load: Callable[[], Awaitable[list[Message]]], message_id: UUID) -> None:
        self._load = load
        self._message_id = message_id
        self._gave_up: DatabaseUnavailable | None = None

    async def __call__(self) -> list[Message]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HISTORY_RETRY_SECONDS
        pause = HISTORY_RETRY_FIRST_PAUSE
        while True:
            try:
                return await self._load()
            except DatabaseUnavailable as exc:
                left = deadline - loop.time()
                if left <= 0:
                    logger.warning(
                        "the history of message %s could not be read for %gs (%s); giving up",
                        self._message_id,
                        HISTORY_RETRY_SECONDS,
                        exc,
                    )
                    self._gave_up = exc
                    raise
                logger.info(
                    "the history of message %s could not be read (%s); retrying",
                    self._message_id,
                    exc,
                )
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, HISTORY_RETRY_LAST_PAUSE)

    def failed_with(self, exc: BaseException) -> bool:
        """Whether ``exc`` is (or was raised while handling) the error this load gave up with:
        a generator may let it through, or wrap it."""
        seen: list[BaseException] = []
        found: BaseException | None = exc
        while found is not None and self._gave_up is not None and found not in seen:
            if found is self._gave_up:
                return True
            seen.append(found)
            found = found.__cause__ or found.__context__
        return False
