"""Following a log: the events after a cursor, exactly once and in order, then the live tail.

A listener on the producing worker reads the log from memory; any other listener (another worker,
a finished message, a log this worker lost) reads the table, and between reads waits for a NOTIFY
hint or a slow poll. A follow also ends, without a terminal event, when the worker is closing or
the stream has lived its maximum time: the client resumes with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from server.errors import DatabaseUnavailable
from server.eventlog import MessageLog
from server.events import Batch, Event, start_event, terminal_event
from server.models import Message
from server.notifier import Notifier
from server.store import Store

PAGE = 200  # chunks per read (a few events each)


@dataclass(frozen=True, slots=True)
class FollowLimits:
    closing: asyncio.Event  # set when this worker shuts down
    deadline: float  # loop time after which the stream ends
    ping_seconds: float = 15.0  # an empty batch (a ping) after this long without events

    def over(self) -> bool:
        return self.closing.is_set() or _now() >= self.deadline

    def ping_due(self, quiet_since: float) -> bool:
        return _now() - quiet_since >= self.ping_seconds

    def wait_seconds(self, quiet_since: float) -> float:
        """How long to wait for news: until the next ping is due, or the stream's end."""
        now = _now()
        return max(0.0, min(quiet_since + self.ping_seconds - now, self.deadline - now))


def _now() -> float:
    return asyncio.get_running_loop().time()


async def follow(
    message: Message,
    after: int,
    *,
    store: Store,
    local: MessageLog | None,
    notifier: Notifier,
    limits: FollowLimits,
) -> AsyncIterator[Batch]:
    """Yield the events of ``message``'s log with ids above ``after``, up to the terminal one,
    in batches: whatever became visible together is sent together (one write, not one each).
    A batch without frames is a ping.

    One generator for both sources: a nested one would be kept alive, with its frame, by every
    open stream."""
    cursor = after
    if local is not None:
        quiet_since = _now()
        while True:
            frames = local.visible_after(cursor)
            if frames:
                cursor += len(frames)
                yield Batch(frames)
                if cursor == local.terminal_id:
                    return
                quiet_since = _now()  # and look again: more may have become visible meanwhile
            elif local.lost or limits.over():
                break  # the table has the rest (unless the stream is over)
            elif limits.ping_due(quiet_since):
                yield Batch([])  # a ping
                quiet_since = _now()
            else:
                await local.changed()  # woken by news, or by the worker's ticker (Worker.tick)
    backoff = 0.1
    quiet_since = _now()
    while not limits.over():
        # Subscribe before reading, so that news arriving during the read is not missed.
        with notifier.watch(message.id) as news:
            try:
                events, finished = await read_stored(store, message, cursor)
            except DatabaseUnavailable:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except LookupError:
                # The message is gone: its project was deleted. Its end is known here when this
                # worker deleted it; then the listener gets it, if it has every event before it.
                deleted = notifier.deleted_row(message.id)
                if deleted is not None and cursor == deleted.last_event_id - 1:
                    yield Batch.of([terminal_event(deleted.message, deleted.last_event_id)])
                return
            backoff = 0.1
            if events:
                yield Batch.of(events)
                cursor = events[-1].id
                quiet_since = _now()
            if finished:
                return
            if not events:
                if limits.ping_due(quiet_since):
                    yield Batch([])  # a ping; the slow poll of the table is the fallback
                    quiet_since = _now()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(news.wait(), limits.wait_seconds(quiet_since))


async def read_stored(store: Store, message: Message, cursor: int) -> tuple[list[Event], bool]:
    """The next events after ``cursor`` from the database, and whether the log is complete.

    This is what every wake of a listener on another worker costs, so it reads only what is new
    (``Store.log_tail``): a few thousand listeners on one long answer must not each re-read it."""
    events: list[Event] = []
    if cursor < 1:
        pair = await store.start_pair(message)
        if pair is None:
            raise LookupError(f"message {message.id} has no user message")
        events.append(start_event(pair.user.message, pair.assistant.message))
        cursor = 1
    tail = await store.log_tail(message.created_by, message.project_id, message.id, cursor, PAGE)
    if tail is None:
        raise LookupError(f"message {message.id} is gone")
    chain: list[Event] = []
    for event in tail.events:
        if event.id != cursor + len(chain) + 1:
            break
        chain.append(event)
    if tail.ended is None:
        return events + chain, False
    last = tail.ended.last_event_id
    terminal = terminal_event(tail.ended.message, last)
    if cursor >= last:
        return [], True
    if cursor >= last - 1 or (chain and chain[-1].id == last - 1):
        return [*events, *chain, terminal], True
    if tail.more and len(chain) == len(tail.events):
        return events + chain, False  # more pages to read
    # Pruned: a finished message whose log is gone is answered with its terminal event alone.
    return [terminal], True
