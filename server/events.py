"""The events of an assistant message's log, how the first and last are derived, and how events
are stored (a chunk per row) and sent (SSE frames).

A log is numbered 1..N. Event 1 (``start``) and the terminal event (``done``, ``error`` or
``cancelled``) are projections of the message rows, built here the same way whether the event is
sent live or replayed; events 2..N-1 (``progress``, ``reasoning``, ``delta``) are stored as
written, a few consecutive ones per row of ``event_chunks``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from server.models import ErrorData, ErrorInfo, Message, StartData

TERMINAL_EVENTS = frozenset({"done", "error", "cancelled"})
_EVENT_FOR_STATUS = {"success": "done", "error": "error", "cancelled": "cancelled"}
# The stored events' kinds, one letter each (see event_chunks.kinds).
KIND_OF = {"delta": "d", "progress": "p", "reasoning": "r", "tool_call": "c"}
NAME_OF = {kind: name for name, kind in KIND_OF.items()}
# One encoder for every event: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


# not frozen: a frozen dataclass is 4x slower to build, and one is built per event
@dataclass(slots=True)
class Event:
    id: int
    name: str
    data: str  # compact JSON, exactly the bytes of the `data:` line

    @property
    def is_terminal(self) -> bool:
        return self.name in TERMINAL_EVENTS

    @property
    def frame(self) -> bytes:
        """The event on the wire. Built directly: the id is a number, the name one of ours, and
        compact JSON has no raw line break, so nothing here can end a frame early."""
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (
            self.id,
            self.name.encode(),
            self.data.encode("utf-8"),
        )


def storable(text: str) -> str:
    """What PostgreSQL text can hold. Every text that reaches the database from a generator (a
    delta, a progress message, an upstream's error text) passes here: a NUL or a lone surrogate
    would make every write of its message fail, so they become U+FFFD before anyone sees them."""
    if text.isascii() and "\x00" not in text:  # the common case, five times cheaper
        return text
    return _UNSTORABLE.sub("\ufffd", text)


def compact_json(value: Any) -> str:
    """One line of JSON: JSON escapes CR and LF inside strings, so no frame can be injected."""
    return _ENCODER.encode(value)


def start_event(user: Message, assistant: Message) -> Event:
    """Event 1: the pair as it was created (the placeholder, pending and empty)."""
    placeholder = assistant.model_copy(
        update={
            "status": "pending",
            "content": "",
            "error": None,
            "updated_at": assistant.created_at,
            "usage": None,
            "finish_reason": None,
            "reasoning": None,
            "reasoning_ms": None,
            "tool_calls": None,
        }
    )
    data = StartData(user_message=user, assistant_message=placeholder)
    return Event(1, "start", data.model_dump_json())


def terminal_event(message: Message, event_id: int) -> Event:
    """The last event of a finished message, from its final row."""
    name = _EVENT_FOR_STATUS[message.status]
    if name == "error":
        error = message.error or ErrorInfo(code="internal_error", message="unknown error")
        data = ErrorData(error=error, message=message).model_dump_json()
    else:
        data = '{"message":' + message.model_dump_json() + "}"
    return Event(event_id, name, data)


def progress_data(stage: str, message: str, percent: float | None) -> str:
    return compact_json({"stage": stage, "message": message, "percent": percent})


def delta_data(text: str) -> str:
    return '{"text":' + _ENCODER.encode(text) + "}"


reasoning_data = delta_data  # the same shape: {"text": str}


def tool_call_data(index: int, call_id: str | None, name: str | None, arguments: str) -> str:
    return compact_json({"index": index, "id": call_id, "name": name, "arguments": arguments})


@dataclass(slots=True)
class Batch:
    """What a stream sends at once: the frames of consecutive events. No frames: a ping."""

    frames: list[bytes]

    @classmethod
    def of(cls, events: list[Event]) -> Batch:
        return cls([e.frame for e in events])


# not frozen: a frozen dataclass is 4x slower to build, and one is built per event
@dataclass(slots=True)
class Chunk:
    """Consecutive stored events of one log, as one row of ``event_chunks``."""

    first_event_id: int
    kinds: str
    data: str

    @classmethod
    def of(cls, events: list[Event]) -> Chunk:
        return cls(
            events[0].id,
            "".join(KIND_OF[e.name] for e in events),
            "\n".join(e.data for e in events),
        )

    @property
    def last_event_id(self) -> int:
        return self.first_event_id + len(self.kinds) - 1

    def events(self) -> list[Event]:
        lines = self.data.split("\n")
        return [
            Event(self.first_event_id + i, NAME_OF[kind], line)
            for i, (kind, line) in enumerate(zip(self.kinds, lines, strict=True))
        ]
