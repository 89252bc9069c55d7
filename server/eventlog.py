"""The in-memory log of a running assistant message, and how a listener follows any log.

The producing worker keeps each running message's log in memory (``MessageLog``). An event becomes
*visible* to listeners only once the flusher has written it, so a client never sees an event that
a crash could take back, and a listener on another worker (reading the table) sees the same log.
Event 1 (start) is visible at once: it is derived from rows committed before it is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from datetime import datetime

from server.events import Event, delta_data, progress_data, start_event, terminal_event
from server.models import TERMINAL_STATUSES, ErrorInfo
from server.store import FlushItem, Pair

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """What PostgreSQL text can hold: a generator's NUL or lone surrogate would make every flush
    of this message fail, so they become U+FFFD here, before anyone sees them."""
    return _UNSTORABLE.sub("\ufffd", text)


class MessageLog:
    """One running assistant message: its events, content and fate, in this worker's memory."""

    def __init__(self, pair: Pair) -> None:
        self.user = pair.user.message
        self.placeholder = pair.assistant.message
        self.events: list[Event] = [start_event(self.user, self.placeholder)]
        self.written = 1  # events[:written] are in the database
        self.visible = 1  # events[:visible] may be sent to listeners
        self.status = "pending"
        self.parts: list[str] = []
        self.error: ErrorInfo | None = None
        self.final_status: str | None = None  # the generation ended; not yet written
        self.closed = False  # no more events: the terminal one is visible, or the log was lost
        self.lost = False  # another worker (or the reaper) owns the message now
        self._changed = asyncio.Event()
        self.started = time.monotonic()

    # The producer's side

    def add_progress(self, stage: str, message: str, percent: float | None) -> None:
        self._append("progress", progress_data(storable(stage), storable(message), percent))

    def add_delta(self, text: str) -> None:
        text = storable(text)
        self.parts.append(text)
        self._append("delta", delta_data(text))

    def finish(self, status: str, error: ErrorInfo | None = None) -> None:
        if self.final_status is None:
            self.final_status, self.error = status, error

    @property
    def unwritten(self) -> int:
        return len(self.events) - self.written

    @property
    def needs_flush(self) -> bool:
        return not self.closed and (self.unwritten > 0 or self.final_status is not None)

    def snapshot(self) -> FlushItem:
        """What the next flush writes for this message."""
        final = self.final_status
        return FlushItem(
            project_id=self.placeholder.project_id,
            message_id=self.placeholder.id,
            status=final or self.status,
            content="".join(self.parts),
            last_event_id=len(self.events) + (1 if final else 0),
            error=self.error if final else None,
            events=self.events[self.written :],
        )

    def mark_written(self, item: FlushItem, updated_at: datetime) -> None:
        """The flush of ``item`` committed: publish its events (and the terminal one)."""
        self.written = self.visible = self.written + len(item.events)
        if item.status in TERMINAL_STATUSES:
            final = self.placeholder.model_copy(
                update={
                    "status": item.status,
                    "content": item.content,
                    "error": item.error,
                    "updated_at": updated_at,
                }
            )
            self.events.append(terminal_event(final, item.last_event_id))
            self.written = self.visible = len(self.events)
            self.closed = True
        self._notify()

    def mark_lost(self) -> None:
        """The database says this worker no longer owns the message: listeners read it there."""
        self.lost = self.closed = True
        self._notify()

    def _append(self, name: str, data: str) -> None:
        if self.final_status is not None:
            raise RuntimeError("the generation has already ended")
        self.status = "streaming"
        self.events.append(Event(len(self.events) + 1, name, data))

    # The listeners' side

    def visible_after(self, cursor: int) -> list[Event]:
        return self.events[cursor : self.visible]

    async def changed(self, seconds: float) -> None:
        """Wait until new events are visible or the log closes (or ``seconds`` pass)."""
        waiter = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.wait(), seconds)

    def _notify(self) -> None:
        # Wake every current waiter at once, and give later ones a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()
