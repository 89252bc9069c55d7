"""Log formats: ``auto`` follows whether stderr is a terminal; ``json`` and ``text`` force one."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import TextIO

import pytest

from server import logs
from server.config import Settings


@pytest.fixture
def terminal() -> Iterator[TextIO]:
    """One end of a real pseudo-terminal, as stderr is when a person runs `make run`."""
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as stream:
        yield stream
    os.close(leader)


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored after the test (configure replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_auto_is_the_default() -> None:
    assert Settings().log_format == "auto"
    assert Settings.from_env({"LOG_FORMAT": "text"}).log_format == "text"


def test_auto_is_text_on_a_terminal_and_json_elsewhere(terminal: TextIO) -> None:
    assert terminal.isatty()
    assert logs.resolve_format("auto", terminal) == "text"
    assert logs.resolve_format("auto", io.StringIO()) == "json"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_json_and_text_are_forced(fmt: str, terminal: TextIO) -> None:
    assert logs.resolve_format(fmt, terminal) == fmt
    assert logs.resolve_format(fmt, io.StringIO()) == fmt


def test_configure_auto_writes_json_when_stderr_is_not_a_terminal(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    logs.configure("info", "auto")
    logging.getLogger("server.test").info("hello %s", "there")
    line = json.loads(captured.getvalue())
    assert line["message"] == "hello there" and line["level"] == "info"


def test_configure_auto_writes_text_on_a_terminal(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch, terminal: TextIO
) -> None:
    monkeypatch.setattr(sys, "stderr", terminal)
    logs.configure("info", "auto")
    (handler,) = root_logger.handlers
    assert isinstance(handler.formatter, logs.TextFormatter)


def test_text_lines_show_the_request_id_only_when_there_is_one() -> None:
    formatter = logs.TextFormatter()
    record = logging.makeLogRecord({"name": "server.access", "levelname": "INFO", "msg": "hi"})
    assert formatter.format(record).endswith(" INFO    server.access hi")
    record.request_id = "abc123"
    assert formatter.format(record).endswith(" INFO    server.access [abc123] hi")
