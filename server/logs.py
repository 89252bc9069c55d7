"""Logging: one line per event, JSON or text, with the request id when there is one.

``LOG_FORMAT=auto`` (the default) picks text when stderr is a terminal and JSON otherwise.

Never logged at info level: tokens, cookies, message content, query strings.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes a caller may attach with ``extra=`` that belong in the line.
_EXTRA_FIELDS = (
    "project_id",
    "message_id",
    "method",
    "route",
    "path",
    "status",
    "duration_ms",
    "client",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            line["request_id"] = rid
        for name in _EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = str(value) if not isinstance(value, int | float) else value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For a person at a terminal: time, level, logger, the request id if any, message."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)-7s %(name)s%(request_tag)s %(message)s", "%H:%M:%S"
        )

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        record.request_tag = f" [{rid}]" if rid else ""
        return super().format(record)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def resolve_format(fmt: str, stream: TextIO) -> str:
    """``json`` or ``text``: ``auto`` is text on a terminal, JSON anywhere else."""
    if fmt != "auto":
        return fmt
    return "text" if stream.isatty() else "json"


def configure(level: str, fmt: str) -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    if resolve_format(fmt, sys.stderr) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True
