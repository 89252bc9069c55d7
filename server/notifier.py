"""Wakes this worker's listeners when the database says their messages moved.

Fed by the worker's one LISTEN connection (``db.Listener``). A notification is only a hint to
re-read the table: listeners also re-read on a slow timer, so a lost one delays, never loses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from uuid import UUID

ALL = "*"


class _Watch:
    __slots__ = ("event", "watchers")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.watchers = 0


class Notifier:
    def __init__(self) -> None:
        self._watches: dict[UUID, _Watch] = {}

    @contextlib.contextmanager
    def watch(self, message_id: UUID) -> Iterator[asyncio.Event]:
        """An event set when ``message_id`` has news (or everything must be re-read) from now on.

        Watch *before* reading the table: news that arrives during the read is then not lost.
        """
        entry = self._watches.get(message_id)
        if entry is None:
            entry = self._watches[message_id] = _Watch()
        entry.watchers += 1
        try:
            yield entry.event
        finally:
            entry.watchers -= 1
            if entry.watchers <= 0 and self._watches.get(message_id) is entry:
                del self._watches[message_id]

    def on_events(self, payload: str) -> None:
        """A NOTIFY payload: comma-separated message ids, or ``*``."""
        if payload == ALL:
            self.wake_all()
            return
        for raw in payload.split(","):
            with contextlib.suppress(ValueError):
                self.wake(UUID(raw))

    def wake(self, message_id: UUID) -> None:
        entry = self._watches.pop(message_id, None)
        if entry is not None:
            entry.event.set()

    def wake_all(self) -> None:
        watches, self._watches = self._watches, {}
        for entry in watches.values():
            entry.event.set()

    @property
    def waiting(self) -> int:
        return sum(entry.watchers for entry in self._watches.values())
