"""Wakes this worker's listeners when the database says their messages moved.

Fed by the worker's one LISTEN connection (``db.Listener``). A notification is only a hint to
re-read the table: listeners also re-read on a slow timer, so a lost one delays, never loses.
"""

from __future__ import annotations

import asyncio
import contextlib
from uuid import UUID

ALL = "*"


class Notifier:
    def __init__(self) -> None:
        # message id -> (event, number of waiters)
        self._waiters: dict[UUID, tuple[asyncio.Event, int]] = {}

    async def wait(self, message_id: UUID, seconds: float) -> None:
        """Return when ``message_id`` has news, everything must be re-read, or after ``seconds``."""
        event, count = self._waiters.get(message_id, (asyncio.Event(), 0))
        self._waiters[message_id] = (event, count + 1)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), seconds)
        finally:
            current = self._waiters.get(message_id)
            if current is not None and current[0] is event:
                if current[1] <= 1:
                    del self._waiters[message_id]
                else:
                    self._waiters[message_id] = (event, current[1] - 1)

    def on_events(self, payload: str) -> None:
        """A NOTIFY payload: comma-separated message ids, or ``*``."""
        if payload == ALL:
            self.wake_all()
            return
        for raw in payload.split(","):
            with contextlib.suppress(ValueError):
                self.wake(UUID(raw))

    def wake(self, message_id: UUID) -> None:
        found = self._waiters.pop(message_id, None)
        if found is not None:
            found[0].set()

    def wake_all(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for event, _count in waiters.values():
            event.set()

    @property
    def waiting(self) -> int:
        return sum(count for _event, count in self._waiters.values())
