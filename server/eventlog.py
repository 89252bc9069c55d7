"""The in-memory log of a running assistant message.

The producing worker keeps each running message's log in memory (``MessageLog``). An event becomes
*visible* to listeners only once the flusher has written it, so a client never sees an event that
a crash could take back, and a listener on another worker (reading the table) sees the same log.
Event 1 (start) is visible at once: it is derived from rows committed before it is built.

The flusher writes a log's new events as chunks (a few events per row). A chunk, once formed, is
sent unchanged until it is known to be written, so a flush retried after a lost reply writes
nothing twice.

Once sealed into a chunk, an event is kept only as its frame (bytes): what listeners send. A
long answer's events would otherwise be hundreds of objects per answer that every full garbage
collection walks (at 1,000 answers, pauses of about 200 ms); bytes are not tracked by the
collector at all.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from datetime import datetime

from server.events import (
    Chunk,
    Event,
    delta_data,
    progress_data,
    reasoning_data,
    start_event,
    storable,
    tool_call_data,
)
from server.events import terminal_event as terminal_event_of
from server.models import (
    MAX_FINISH_REASON_CHARS,
    TERMINAL_STATUSES,
    ErrorInfo,
    Message,
    ToolCall,
    Usage,
)
from server.store import FlushItem, Pair

# Bounds of one chunk (one row): a log that fell behind (the database was away) is written as
# several chunks, each of a size the database handles comfortably.
MAX_CHUNK_EVENTS = 512
MAX_CHUNK_CHARS = 256 * 1024


class MessageLog:
    """One running assistant message: its events, content and fate, in this worker's memory."""

    def __init__(self, pair: Pair, stored: Sequence[Event] = ()) -> None:
        """``stored``: events 2.. already written before the generation started (a queued
        answer's ``queued`` event); they do not move the message to ``streaming``."""
        self.user = pair.user.message
        self.placeholder = pair.assistant.message
        start = start_event(self.user, self.placeholder)
        # The frame of every event, event i at frames[i - 1].
        self.frames: list[bytes] = [start.frame, *(e.frame for e in stored)]
        self.unsealed: list[Event] = []  # the events after ``sealed``, for the next chunk
        self.written = len(self.frames)  # events 1..written are in the database
        self.visible = self.written  # events 1..visible may be sent to listeners
        self.sealed = self.written  # events 1..sealed are in chunks (written, or sent, unconfirmed)
        self.terminal_id: int | None = None  # the terminal event's id, once it is visible
        self.chunks: list[Chunk] = []  # sealed, not yet known to be written
        self.status = "pending"
        self.stored_status = "pending"  # the status the message row holds
        self.parts: list[str] = []
        self.reasoning: list[str] = []  # the reasoning events' texts: kept apart from content
        self.reasoning_since: float | None = None  # when the first reasoning event was made
        self.reasoning_ms: int | None = None  # how long the model reasoned, once it stopped
        self.calls: dict[int, ToolCall] = {}  # the tool calls so far, by the model's index
        self.error: ErrorInfo | None = None
        self.final_status: str | None = None  # the generation ended; not yet written
        self.usage: Usage | None = None  # what the generator reported, for a success
        self.finish_reason: str | None = None
        self.closed = False  # no more events: the terminal one is visible, or the log was lost
        self.lost = False  # another worker (or the reaper) owns the message now
        self._waiters: list[asyncio.Future[None]] = []  # one per waiting listener (``changed``)
        self.started = time.monotonic()
        self.waiting_since: float | None = None  # when the oldest unwritten news was made
        self._unsealed_chars = 0  # characters of the events after ``sealed``
        self.write_failures = 0  # the flusher's failed writes of this log alone, in a row

    # The producer's side

    def add_progress(self, stage: str, message: str, percent: float | None) -> None:
        self._append("progress", progress_data(storable(stage), storable(message), percent))

    def add_delta(self, text: str) -> None:
        text = storable(text)
        self._reasoned()
        self.parts.append(text)
        self._append("delta", delta_data(text))

    def add_reasoning(self, text: str) -> None:
        text = storable(text)
        if self.reasoning_since is None:
            self.reasoning_since = time.monotonic()
        self.reasoning.append(text)
        self._append("reasoning", reasoning_data(text))

    def _reasoned(self) -> None:
        """The model's reasoning (if any) is over: its first text or tool call came, or the answer
        ended."""
        if self.reasoning_since is not None and self.reasoning_ms is None:
            self.reasoning_ms = round((time.monotonic() - self.reasoning_since) * 1000)

    def add_tool_call(
        self, index: int, call_id: str | None, name: str | None, arguments: str
    ) -> None:
        """A piece of a tool call. The first piece of a call carries its id (ours, when the model
        gave none: ``call_`` and 24 hex digits) and its name; later ids and names are dropped
        (the first event said them), their arguments appended."""
        arguments = storable(arguments)
        self._reasoned()
        call = self.calls.get(index)
        if call is None:
            call_id = storable(call_id) if call_id else f"call_{uuid.uuid4().hex[:24]}"
            call = ToolCall.model_construct(id=call_id, name=storable(name or ""), arguments="")
            self.calls[index] = call
            self._append("tool_call", tool_call_data(index, call.id, call.name, arguments))
        elif arguments:
            self._append("tool_call", tool_call_data(index, None, None, arguments))
        else:
            return
        call.arguments += arguments

    def finish(
        self,
        status: str,
        error: ErrorInfo | None = None,
        *,
        usage: Usage | None = None,
        finish_reason: str | None = None,
    ) -> None:
        """The generation ended with ``status``; only a success keeps the generator's report of
        ``usage`` and ``finish_reason`` (an answer ended any other way stores neither)."""
        if self.final_status is None:
            if error is not None:  # an upstream's words: the same cleaning as its deltas
                error = ErrorInfo(code=storable(error.code), message=storable(error.message))
            self.final_status, self.error = status, error
            self._reasoned()
            if status == "success":
                self.usage = usage
                self.finish_reason = _finish_reason(finish_reason)
                if self.calls and self.finish_reason in (None, "stop"):
                    # Some servers (Ollama) say stop after calls: the answer waits for results.
                    self.finish_reason = "tool_calls"
            self._waiting()

    @property
    def unwritten(self) -> int:
        return len(self.frames) - self.written

    @property
    def needs_flush(self) -> bool:
        return not self.closed and (self.unwritten > 0 or self.final_status is not None)

    def due(self, now: float, *, max_delay: float, min_events: int) -> bool:
        """Whether the next flush should write this log: it ended, or has enough news to fill a
        chunk, or its oldest news has waited ``max_delay`` seconds."""
        if not self.needs_flush:
            return False
        if self.final_status is not None or self.unwritten >= min_events:
            return True
        return self.waiting_since is not None and now - self.waiting_since >= max_delay

    def snapshot(self) -> FlushItem:
        """What the next flush writes for this log: every chunk not yet known to be written
        (sealing the new events into chunks first), and the message's status."""
        self._seal()
        final = self.final_status
        status = final or self.status
        return FlushItem(
            project_id=self.placeholder.project_id,
            owner_id=self.placeholder.created_by,
            message_id=self.placeholder.id,
            status=status,
            changes_status=status != self.stored_status or not self.chunks,
            content="".join(self.parts) if final else None,
            reasoning="".join(self.reasoning) if final and self.reasoning else None,
            reasoning_ms=self.reasoning_ms if final and self.reasoning else None,
            last_event_id=self.sealed + (1 if final else 0),
            error=self.error if final else None,
            chunks=tuple(self.chunks),
            usage=self.usage if final else None,
            finish_reason=self.finish_reason if final else None,
            tool_calls=self._tool_calls_json() if final == "success" else None,
        )

    def _tool_calls_json(self) -> str | None:
        if not self.calls:
            return None
        calls = [self.calls[i].model_dump() for i in sorted(self.calls)]
        return json.dumps(calls, ensure_ascii=False, separators=(",", ":"))

    def pending_size(self) -> tuple[int, int]:
        """About how many chunks and characters the next snapshot sends (to bound statements)."""
        new = len(self.unsealed)
        chunks = len(self.chunks) + -(-new // MAX_CHUNK_EVENTS)
        chars = sum(len(c.data) for c in self.chunks) + self._unsealed_chars
        if self.final_status is not None:
            chars += sum(map(len, self.parts)) + sum(map(len, self.reasoning))
        return chunks, chars

    def _seal(self) -> None:
        events, start = self.unsealed, 0
        while start < len(events):
            end, chars = start, 0
            while end < len(events) and end - start < MAX_CHUNK_EVENTS:
                chars += len(events[end].data) + 1
                if chars > MAX_CHUNK_CHARS and end > start:
                    break
                end += 1
            self.chunks.append(Chunk.of(events[start:end]))
            start = end
        self.sealed = len(self.frames)
        self.unsealed = []
        self._unsealed_chars = 0

    def mark_written(self, item: FlushItem, updated_at: datetime | None) -> None:
        """The flush of ``item`` committed: publish its events (and the terminal one)."""
        count = len(item.chunks)
        del self.chunks[:count]
        self.stored_status = item.status
        if item.chunks:
            self.written = self.visible = item.chunks[-1].last_event_id
        self.waiting_since = time.monotonic() if self.unwritten else None
        if item.status in TERMINAL_STATUSES:
            assert updated_at is not None, "a terminal write returns its row's updated_at"
            final = self.placeholder.model_copy(
                update={
                    "status": item.status,
                    "content": item.content,
                    "error": item.error,
                    "updated_at": updated_at,
                    "usage": item.usage,
                    "finish_reason": item.finish_reason,
                    "reasoning": item.reasoning,
                    "reasoning_ms": item.reasoning_ms,
                    "tool_calls": [self.calls[i] for i in sorted(self.calls)]
                    if item.tool_calls
                    else None,
                }
            )
            self.frames.append(terminal_event_of(final, item.last_event_id).frame)
            self.written = self.visible = self.sealed = len(self.frames)
            self.terminal_id = item.last_event_id
            self.closed = True
        self._notify()

    def end_with(self, ended: Message, last_event_id: int) -> bool:
        """Someone else ended the message (cancel, a project's delete) with this row: make its
        terminal event visible here, right after the events listeners may already see, so that
        they get it from memory rather than from the table (where a deleted project's rows are
        gone). Only when every stored event is visible here: a flush that committed and has not
        been acknowledged yet would leave a gap; then False, and listeners read the table."""
        if self.closed or self.visible != last_event_id - 1:
            return False
        del self.frames[self.visible :]  # unwritten events: never stored, never sent
        self.frames.append(terminal_event_of(ended, last_event_id).frame)
        self.unsealed, self.chunks, self._unsealed_chars = [], [], 0
        self.written = self.visible = self.sealed = len(self.frames)
        self.terminal_id = last_event_id
        self.closed = True
        self._notify()
        return True

    def mark_lost(self) -> None:
        """The database says this worker no longer owns the message: listeners read it there."""
        self.lost = self.closed = True
        self._notify()

    def _append(self, name: str, data: str) -> None:
        if self.final_status is not None:
            raise RuntimeError("the generation has already ended")
        self.status = "streaming"
        event = Event(len(self.frames) + 1, name, data)
        self.frames.append(event.frame)
        self.unsealed.append(event)
        self._unsealed_chars += len(data) + 1
        self._waiting()

    def _waiting(self) -> None:
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()

    # The listeners' side

    def visible_after(self, cursor: int) -> list[bytes]:
        """The frames of the visible events after event ``cursor``."""
        return self.frames[cursor : self.visible]

    def changed(self) -> asyncio.Future[None]:
        """A future done when new events are visible, the log closes, or the worker's ticker
        wakes every listener (``wake``) so that each can check its ping and its limits. No timer
        per wait: a wait happens once per event batch of every listener. A bare future, not a
        coroutine around an ``asyncio.Event``: an idle listener keeps only this alive."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def wake(self) -> None:
        self._notify()

    def _notify(self) -> None:
        # Wake every current waiter at once; later ones wait for the next news.
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():  # (its listener was cancelled while waiting)
                waiter.set_result(None)


def _finish_reason(reason: str | None) -> str | None:
    """A model server's word, as the database stores it: cleaned, bounded, never empty."""
    if not reason:
        return None
    return storable(reason)[:MAX_FINISH_REASON_CHARS]
