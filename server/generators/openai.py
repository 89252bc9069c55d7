"""The ``openai`` generator: any OpenAI-compatible ``/chat/completions`` server, streamed.

The request carries the system prompt, the project's latest whole successful turns (so the roles
alternate, as strict chat templates require; their content and tool calls, never their reasoning),
the new user message (or tool results), and the turn's ``tools`` and ``tool_choice``. The answer
is read chunk by chunk under three clocks (``openai_clock``): the model's reasoning as
``Reasoning`` items, its text as ``Delta``, its tool calls as ``ToolCallDelta`` (one chunk may
carry all three). Every failure ends the generation with a ``GeneratorError`` (the runner keeps
the partial content). A request is tried again only while the upstream has not accepted it, so no
text is ever produced twice.

Every request asks for the answer's usage (``stream_options.include_usage``); the answer ends
with a ``Finish`` carrying it and the last ``finish_reason``. Some servers refuse that option
(HTTP 400 or 422, whatever their text says): a request so refused is sent once more at once
without it, and when that one is accepted this generator (one per worker process) leaves the
option out from then on. A 400 for another reason is refused again and reported as before, and
then nothing is remembered.

Modules: ``openai_stream`` reads the SSE chunks, ``openai_failures`` turns upstream failures into
error codes and safe messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from server.config import Settings
from server.generators.base import (
    Delta,
    Finish,
    GenerationContext,
    GeneratorError,
    Item,
    Progress,
    Reasoning,
)
from server.generators.openai_clock import Clock, Timeouts
from server.generators.openai_failures import Failure, status_failure, transport_failure
from server.generators.openai_stream import ChatChunk, ChatStream
from server.models import Message, ToolCall

logger = logging.getLogger(__name__)

# Enough of an error body for its message. Messages show at most EXCERPT_CHARS of it, far less
# than this, so a key cut in half at this limit can never show.
ERROR_BODY_BYTES = 2048


class OpenAIGenerator:
    """Answers from ``POST {base_url}/chat/completions``, over one shared HTTP client."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        timeouts: Timeouts,
        api_key: str | None = None,
        system_prompt: str = "",
        retries: int = 1,
    ) -> None:
        self.url = httpx.URL(base_url.rstrip("/") + "/chat/completions")
        if self.url.scheme not in ("http", "https"):  # fail at start-up, not on every answer
            raise ValueError("OPENAI_BASE_URL must be an absolute http or https URL")
        self.model = model
        self.system_prompt = system_prompt
        self.timeouts = timeouts
        self.retries = max(0, retries)
        # Whether requests ask for usage; False once the server refused that (see above).
        self.ask_usage = True
        self._secret = api_key or None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # No read timeout here: the clocks bound every read, and tell a slow start from a stall.
        timeout = httpx.Timeout(None, connect=timeouts.connect)
        # No cap on connections: the runner already bounds running answers, and a wait for a
        # pooled connection would pass for a slow model (upstream_timeout).
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=20)
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits)

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIGenerator:
        timeouts = Timeouts(
            connect=settings.openai_connect_timeout_seconds,
            first_token=settings.openai_first_token_seconds,
            idle=settings.openai_idle_seconds,
            total=settings.openai_total_seconds,
        )
        return cls(
            base_url=settings.openai_base_url,
            model=settings.openai_model,
            timeouts=timeouts,
            api_key=settings.openai_api_key,
            system_prompt=settings.openai_system_prompt,
            retries=settings.openai_retries,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        yield Progress("contacting model", f"Sending the conversation to {self.model}", None)
        messages = chat_messages(
            self.system_prompt, await context.load_history(), context.user_message
        )
        tools = {
            name: json.loads(value)
            for name, value in (("tools", context.tools), ("tool_choice", context.tool_choice))
            if value is not None
        }
        # Only now: a wait for our database (the runner retries a blip) is not the model's time.
        clock = Clock(self.timeouts)
        ask_usage = self.ask_usage
        attempt = 0
        while True:
            opened = await self._open(self._payload(messages, ask_usage, tools), clock)
            if not isinstance(opened, Failure):
                break
            if ask_usage and opened.bad_request:  # perhaps stream_options: at once, without
                ask_usage = False
                clock.new_attempt()
                continue
            attempt += 1
            delay = self._retry_delay(opened, attempt, clock)
            yield Progress("retrying", f"{opened.error.message}; trying again", None)
            await asyncio.sleep(delay)
            clock.new_attempt()
        if self.ask_usage and not ask_usage:
            self._stop_asking_for_usage()
        # Closing the response on every way out (an error, a cancel, the runner's aclose) closes
        # the upstream connection, so an abandoned answer stops costing the model server.
        async with (
            contextlib.aclosing(opened),
            contextlib.aclosing(opened.aiter_lines()) as lines,  # type: ignore[type-var]
        ):
            stream = ChatStream(lines, self._secret)
            reasoned = wrote = False
            while (chunk := await self._next_chunk(stream, clock)) is not None:
                if chunk.reasoning:
                    if not reasoned:
                        reasoned = True
                        yield Progress("reasoning", f"{self.model} is thinking", None)
                    yield Reasoning(chunk.reasoning)
                produced = bool(chunk.text or chunk.tool_calls)
                if produced and not wrote:
                    wrote = True
                    yield Progress("writing", f"{self.model} is writing", None)
                if chunk.text:
                    yield Delta(chunk.text)
                for call in chunk.tool_calls:
                    yield call
                # After the yields: time the consumer takes is not the model's idle time. A
                # model that reasons is alive too.
                clock.received(produced or bool(chunk.reasoning))
        yield Finish(stream.usage, stream.finish_reason)

    def _payload(
        self, messages: list[Any], ask_usage: bool, tools: dict[str, Any]
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.model, "stream": True, "messages": messages}
        payload.update(tools)  # tools and tool_choice, as the client sent them
        if ask_usage:
            payload["stream_options"] = {"include_usage": True}
        return payload

    def _stop_asking_for_usage(self) -> None:
        """The server refused a request with ``stream_options`` and accepted it without."""
        if self.ask_usage:
            self.ask_usage = False
            logger.warning(
                "the model server refused stream_options; requests leave it out from now on, "
                "and answers carry no usage"
            )

    def _retry_delay(self, failure: Failure, attempt: int, clock: Clock) -> float:
        """How long to wait before trying again; raises the failure's error when not to."""
        delay = failure.retry_after
        if delay is None or attempt > self.retries or not clock.can_wait(delay):
            raise failure.error
        return delay

    async def _open(self, payload: dict[str, Any], clock: Clock) -> httpx.Response | Failure:
        """One attempt: the response once its headers say 2xx, or why there is none."""
        request = self._client.build_request("POST", self.url, json=payload)
        try:
            async with asyncio.timeout_at(clock.deadline()):
                response = await self._client.send(request, stream=True)
        except TimeoutError:
            return Failure(clock.expired(), None)
        except httpx.TransportError as exc:
            return transport_failure(exc, self.timeouts.connect)
        if response.is_success:
            return response
        async with contextlib.aclosing(response):
            body = await _body_start(response, clock)
        return status_failure(response, body, self._secret)

    async def _next_chunk(self, stream: ChatStream, clock: Clock) -> ChatChunk | None:
        """The next chunk within the clock's deadline; None after ``[DONE]``."""
        try:
            async with asyncio.timeout_at(clock.deadline()):
                return await stream.next_chunk()
        except TimeoutError:
            raise clock.expired() from None
        except httpx.DecodingError:  # e.g. a gzip body cut short
            message = "the model server sent a body that cannot be decoded"
            raise GeneratorError("upstream_protocol", message) from None
        except httpx.TransportError:
            message = "the connection to the model server broke during the answer"
            raise GeneratorError("upstream_error", message) from None


async def _body_start(response: httpx.Response, clock: Clock) -> bytes:
    """The first ERROR_BODY_BYTES of an error body; what came in time, if it is slow."""
    body = b""
    with contextlib.suppress(TimeoutError, httpx.RequestError):
        async with (
            asyncio.timeout_at(clock.deadline()),
            contextlib.aclosing(response.aiter_bytes()) as chunks,  # type: ignore[type-var]
        ):
            async for chunk in chunks:
                body += chunk
                if len(body) >= ERROR_BODY_BYTES:
                    break
    return body[:ERROR_BODY_BYTES]


def chat_messages(system_prompt: str, history: list[Message], user: Message) -> list[Any]:
    """The request's ``messages``: the system prompt, the history in order (whole turns: user,
    assistant, ...; an answer that made calls with its ``tool_calls``, then a ``tool`` message per
    result in the order of the calls), the new message (or results)."""
    messages: list[Any] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    turns = [*history, user]
    for i, message in enumerate(turns):
        if message.role == "tool":
            messages += _results(message, turns[i - 1].tool_calls or [] if i else [])
        else:  # an answer's calls only with their results (never cut: Store.recent_history)
            answered = i + 1 < len(turns) and turns[i + 1].role == "tool"
            messages.append(_turn(message, with_calls=answered))
    return messages


def _results(message: Message, calls: list[ToolCall]) -> list[dict[str, Any]]:
    """A tool message's results as OpenAI's ``tool`` messages, in the order of the calls."""
    order = {call.id: position for position, call in enumerate(calls)}
    results = sorted(message.tool_results or (), key=lambda r: order.get(r.tool_call_id, 0))
    return [{"role": "tool", "tool_call_id": r.tool_call_id, "content": r.content} for r in results]


def _turn(message: Message, *, with_calls: bool = False) -> dict[str, Any]:
    if message.tool_calls and with_calls:
        return {
            "role": "assistant",
            "content": message.content or None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ],
        }
    if not message.image_urls:
        return {"role": message.role, "content": message.content}
    # With images, the content is the parts array of OpenAI's vision format.
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in message.image_urls]
    return {"role": message.role, "content": parts}
