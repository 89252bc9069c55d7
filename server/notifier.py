"""Wakes this worker's listeners when the database says their messages moved.

Fed by the worker's one LISTEN connection (``db.Listener``). A notification is only a hint to
re-read the table: listeners also re-read on a slow timer, so a lost one delays, never loses.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from uuid import UUID

from server.store import StoredMessage

ALL = "*"
# How long this worker remembers the final rows of messages whose project it deleted: enough for
# its listeners that were told of the end to read it, whatever the load.
DELETED_KEEP_SECONDS = 60.0


class _Watch:
    __slots__ = ("event", "watchers")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.watchers = 0


class Notifier:
    def __init__(self) -> None:
        self._watches: dict[UUID, _Watch] = {}
        self._deleted: dict[UUID, tuple[float, StoredMessage]] = {}

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

    def deleting(self, ended: Sequence[StoredMessage]) -> None:
        """These answers were just ended (cancelled) and their project is being deleted: keep
        their final rows for a while, for this worker's listeners that read the table once the
        rows are gone (``deleted_row``), and wake them."""
        now = time.monotonic()
        self._deleted = {
            message_id: kept
            for message_id, kept in self._deleted.items()
            if now - kept[0] < DELETED_KEEP_SECONDS
        }
        for stored in ended:
            self._deleted[stored.message.id] = (now, stored)
            self.wake(stored.message.id)

    def deleted_row(self, message_id: UUID) -> StoredMessage | None:
        """The final row of a message this worker deleted lately (see ``deleting``)."""
        kept = self._deleted.get(message_id)
        return None if kept is None else kept[1]

    @property
    def waiting(self) -> int:
        return sum(entry.watchers for entry in self._watches.values())
