"""The demo generator's pieces, and the named queries file."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from server.db import SQL_DIR, load_queries
from server.generators.demo import demo_answer, demo_pieces, split_evenly


@pytest.mark.parametrize("pieces", [1, 2, 7, 20, 500])
def test_split_evenly_keeps_the_text_and_the_count(pieces: int) -> None:
    text = demo_answer("hello \U0001f600 world")
    parts = split_evenly(text, pieces)
    assert "".join(parts) == text
    assert len(parts) == min(pieces, len(text))
    assert all(parts)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_demo_answer_is_deterministic() -> None:
    assert demo_answer("abc") == demo_answer("abc")
    assert demo_answer("abc") != demo_answer("abd")


def test_demo_answer_quotes_the_prompt_in_a_little_markdown() -> None:
    answer = demo_answer("Hello there")
    assert answer.startswith("You wrote 2 words and 11 characters: \u201cHello there\u201d\n\n")
    assert "`GENERATOR=demo`" in answer, "a code span"
    assert answer.count("\n- ") == 3, "a list"


def test_demo_pieces_stop_after_the_whole_answer() -> None:
    pieces, finish_reason = demo_pieces("Tell me a story", 7)
    assert (pieces, finish_reason) == (split_evenly(demo_answer("Tell me a story"), 7), "stop")


@pytest.mark.parametrize(("deltas", "sent"), [(7, 3), (20, 10), (2, 1), (1, 1)])
def test_a_message_starting_with_cut_gets_half_its_answer_and_length(
    deltas: int, sent: int
) -> None:
    prompt = "/cut Tell me a story"
    pieces, finish_reason = demo_pieces(prompt, deltas)
    assert finish_reason == "length"
    assert pieces == split_evenly(demo_answer(prompt), deltas)[:sent]


@pytest.mark.parametrize("prompt", ["/cutlery", "please /cut", "/Cut it"])
def test_only_the_first_word_cut_cuts_short(prompt: str) -> None:
    assert demo_pieces(prompt, 5)[1] == "stop"


def test_every_query_is_named_once_and_not_empty() -> None:
    """The headers are read as a list: ``load_queries`` returns a dict, where a second query of
    the same name silently replaces the first (regression: so this test could not see one)."""
    text = (SQL_DIR / "queries.sql").read_text()
    names = re.findall(r"^-- name: (\w+)\s*$", text, re.MULTILINE)
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    assert not twice, f"queries named more than once: {twice}"
    malformed = [
        line
        for line in text.splitlines()
        if re.match(r"--\s*name\b", line) and not re.fullmatch(r"-- name: \w+\s*", line)
    ]
    assert not malformed, f"headers the loader does not read: {malformed}"
    queries = load_queries()
    assert list(queries) == names
    assert {"reserve_pair", "flush", "orphans", "close_message"} <= set(names)
    assert all(sql.strip() for sql in queries.values())
