"""docs/api.md, the contract users read, names what the code does: every route, error code,
event, message field, policy and setting it names exists, and every one that exists is named."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from starlette.routing import Route

from server.app import create_app
from server.config import Settings
from server.events import KIND_OF, TERMINAL_EVENTS
from server.models import ON_RUNNING_POLICIES, Message

ROOT = Path(__file__).resolve().parent.parent.parent
DOC = (ROOT / "docs" / "api.md").read_text()
SOURCES = {p: p.read_text() for p in (ROOT / "server").rglob("*.py")}


def table(heading: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first table at or after ``heading``, without its
    header row."""
    rows = []
    for line in DOC[DOC.index(heading) :].splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set(cells[0]) <= {"-", " ", ":"}:
                rows.append(cells)
        elif rows:
            break
    return rows[1:]


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    app = create_app(Settings(database_url="postgresql://unused/unused"))
    served = set()
    for route in app.routes:
        if isinstance(route, Route):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                served.add(f"{method} {route.path}")
    documented = {ticked(row[0])[0].split("?")[0] for row in table("## Endpoints")}
    assert documented == served


def _codes_in_source() -> tuple[set[str], set[str]]:
    """(problem codes, error-event codes) that the server's code can produce."""
    text = "\n".join(SOURCES.values())
    problems = set(re.findall(r'(?<!ErrorInfo\()\bcode(?:: str)? ?= ?"([a-z_]+)"', text))
    problems |= set(re.findall(r'status, code, title = \d+, "([a-z_]+)"', text))
    problems |= set(re.findall(r'_refuse\(\s*send,\s*\d+,\s*"[^"]*",\s*"([a-z_]+)"', text))
    problems |= set(re.findall(r'code, detail = "([a-z_]+)"', text))
    problems |= set(re.findall(r'error_codes[^=]*= \{[^}]*: "([a-z_]+)"', text))
    problems |= set(re.findall(r'\d{3}: "([a-z_]+)"', text))  # problems._HTTP_CODES
    events = set(re.findall(r'GeneratorError\("([a-z_]+)"', text))
    events |= set(re.findall(r'ErrorInfo\(code="([a-z_]+)"', text))
    events |= set(re.findall(r'"error", "([a-z_]+)", [A-Z_]+_MESSAGE', text))  # store's ends
    # The terminal event's fallback for an error row without a code, which the schema forbids
    # (messages_error_check): not a code any client can see.
    events.discard("internal_error")
    return problems, events


def test_every_error_code_is_documented_and_every_documented_code_exists() -> None:
    problems, events = _codes_in_source()
    documented_problems = {ticked(row[0])[0] for row in table("### Error codes")}
    documented_events = {ticked(row[0])[0] for row in table("The `error` event's codes")}
    assert problems == documented_problems
    assert events == documented_events


def test_the_events_are_the_ones_the_stream_sends() -> None:
    documented = {ticked(row[0])[0] for row in table("## The SSE stream")}
    assert documented == {"start", *KIND_OF, *TERMINAL_EVENTS}


def test_the_message_fields_are_the_models() -> None:
    documented = {name for row in table("| field | what |") for name in ticked(row[0])}
    assert documented == set(Message.model_fields)


def test_the_policies_are_the_models() -> None:
    section = DOC[DOC.index("**`on_running`.**") : DOC.index("## The SSE stream")]
    documented = set(re.findall(r"^- `([a-z]+)`:", section, re.MULTILINE))
    assert documented == set(ON_RUNNING_POLICIES)


HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}


@pytest.mark.parametrize(
    "name", sorted(set(re.findall(r"`([A-Z][A-Z_]+[A-Z])`", DOC)) - HTTP_METHODS)
)
def test_every_setting_named_exists(name: str) -> None:
    settings = {f.name.upper() for f in dataclasses.fields(Settings)}
    assert name in settings, f"docs/api.md names {name}, which is not a setting"


def test_the_docs_link_only_inside_the_repository() -> None:
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        assert "../shared" not in path.read_text(), path
