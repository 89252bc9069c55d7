"""The events of an assistant message's log, and how the first and last are derived.

A log is numbered 1..N. Event 1 (``start``) and the terminal event (``done``, ``error`` or
``cancelled``) are projections of the message rows, built here the same way whether the event is
sent live or replayed; events 2..N-1 (``progress``, ``delta``) are stored as written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from server.models import ErrorData, ErrorInfo, Message, StartData

TERMINAL_EVENTS = frozenset({"done", "error", "cancelled"})
_EVENT_FOR_STATUS = {"success": "done", "error": "error", "cancelled": "cancelled"}


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    name: str
    data: str  # compact JSON, exactly the bytes of the `data:` line

    @property
    def is_terminal(self) -> bool:
        return self.name in TERMINAL_EVENTS


def compact_json(value: Any) -> str:
    """One line of JSON: JSON escapes CR and LF inside strings, so no frame can be injected."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def start_event(user: Message, assistant: Message) -> Event:
    """Event 1: the pair as it was created (the placeholder, pending and empty)."""
    placeholder = assistant.model_copy(
        update={
            "status": "pending",
            "content": "",
            "error": None,
            "updated_at": assistant.created_at,
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
    return compact_json({"text": text})
