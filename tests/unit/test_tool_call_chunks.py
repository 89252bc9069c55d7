"""``delta.tool_calls`` as the openai generator reads it (server/generators/openai_stream.py):
pieces of calls, by index, beside a chunk's reasoning and text; a shape other than OpenAI's is the
upstream's protocol error."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.generators.base import GeneratorError, ToolCallDelta
from server.generators.openai_stream import parse_chunk


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [choice]})


def test_pieces_of_calls_are_read_by_index() -> None:
    first = {"index": 1, "id": "call_a", "type": "function", "function": {"name": "f"}}
    parsed = parse_chunk(chunk({"tool_calls": [first]}), None)
    assert parsed.tool_calls == (ToolCallDelta(1, "call_a", "f", ""),)
    later = {"index": 1, "function": {"arguments": '{"a": 1}'}}
    parsed = parse_chunk(chunk({"content": None, "tool_calls": [later]}, "tool_calls"), None)
    assert parsed.tool_calls == (ToolCallDelta(1, None, None, '{"a": 1}'),)
    assert (parsed.text, parsed.finish_reason) == ("", "tool_calls")


def test_one_chunk_may_carry_reasoning_text_and_a_call() -> None:
    """Each is read from the same chunk: none of them hides the others."""
    call = {"index": 0, "id": "call_a", "function": {"name": "f", "arguments": "{"}}
    delta = {"reasoning_content": "so ", "content": "Let me look.", "tool_calls": [call]}
    parsed = parse_chunk(chunk(delta), None)
    assert (parsed.reasoning, parsed.text) == ("so ", "Let me look.")
    assert parsed.tool_calls == (ToolCallDelta(0, "call_a", "f", "{"),)


def test_a_piece_without_an_index_is_its_position() -> None:
    pieces = [{"id": "x", "function": {"name": "f", "arguments": ""}}, {"function": {}}]
    parsed = parse_chunk(chunk({"tool_calls": pieces}), None)
    assert [p.index for p in parsed.tool_calls] == [0, 1]


@pytest.mark.parametrize(
    "tool_calls",
    [
        {"index": 0},  # not a list
        ["call"],
        [{"index": "0", "function": {"name": "f"}}],
        [{"index": 0, "function": {"name": 5}}],
        [{"index": 0, "function": {"arguments": {"a": 1}}}],
        [{"index": 0, "function": "f"}],
    ],
)
def test_another_shape_is_a_protocol_error(tool_calls: Any) -> None:
    with pytest.raises(GeneratorError) as raised:
        parse_chunk(chunk({"tool_calls": tool_calls}), None)
    assert raised.value.code == "upstream_protocol"
