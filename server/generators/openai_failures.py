"""What went wrong upstream, in words that are safe to show to the user.

An HTTP status or a transport error becomes a ``GeneratorError`` with a stable code, and a
``Failure`` says whether (and after how long) the request may be tried again. Upstream text is
only ever shown through ``excerpt``, which removes the API key: an upstream may echo it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from server.generators.base import GeneratorError

# The pause before a retry when the upstream did not ask for one (Retry-After).
RETRY_PAUSE_SECONDS = 0.25
# How much of an upstream's text a message shows (a short excerpt, never a whole page).
EXCERPT_CHARS = 200


@dataclass(frozen=True, slots=True)
class Failure:
    error: GeneratorError
    # Seconds to wait before trying again; None: trying again would not help.
    retry_after: float | None
    # The upstream refused the request's shape (HTTP 400 or 422): an unknown field, say.
    bad_request: bool = False


def transport_failure(exc: httpx.TransportError, connect_seconds: float) -> Failure:
    """A request that got no answer at all: always worth one more try."""
    if isinstance(exc, httpx.ConnectTimeout):
        message = f"could not connect to the model server within {connect_seconds:g} seconds"
        return Failure(GeneratorError("upstream_timeout", message), RETRY_PAUSE_SECONDS)
    if isinstance(exc, httpx.ConnectError):
        # No exception text: it can name internal hosts, or a URL with credentials in it.
        message = "could not connect to the model server"
    else:
        message = "the connection to the model server failed before it answered"
    return Failure(GeneratorError("upstream_error", message), RETRY_PAUSE_SECONDS)


def status_failure(response: httpx.Response, body: bytes, secret: str | None) -> Failure:
    """A request the upstream refused: 429 and 5xx may pass with time, other statuses will not."""
    status = response.status_code
    if status == 429:
        return _rate_limited(response.headers.get("retry-after"))
    if status in (401, 403):
        # Providers quote (parts of) a rejected key in their text: show none of it.
        message = f"the model server refused the request (HTTP {status}); check OPENAI_API_KEY"
        return Failure(GeneratorError("upstream_error", message), None)
    reason = excerpt(body.decode("utf-8", "replace"), secret)
    message = f"the model server answered HTTP {status}" + (f": {reason}" if reason else "")
    retry = RETRY_PAUSE_SECONDS if status >= 500 else None
    return Failure(GeneratorError("upstream_error", message), retry, status in (400, 422))


def _rate_limited(retry_after: str | None) -> Failure:
    message = "the model server is rate limiting requests (HTTP 429)"
    if retry_after:
        value = "".join(c for c in retry_after if c.isprintable())[:40]
        message = f"the model server is rate limiting requests (HTTP 429, Retry-After: {value})"
    delay = retry_after_seconds(retry_after)
    error = GeneratorError("upstream_rate_limited", message)
    return Failure(error, RETRY_PAUSE_SECONDS if delay is None else delay)


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now; None if unusable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def excerpt(text: str, secret: str | None) -> str:
    """The gist of an upstream's error text: its ``error.message`` when it is JSON, shortened,
    on one line, with every occurrence of the API key removed."""
    text = _error_message(text)
    if secret:
        text = text.replace(secret, "[redacted]")
    text = " ".join(text.split())
    if len(text) > EXCERPT_CHARS:
        text = text[: EXCERPT_CHARS - 1] + "\u2026"
    return text


def _error_message(text: str) -> str:
    """``{"error": {"message": ...}}`` (OpenAI, vLLM), ``{"error": "..."}`` (Ollama) or as is."""
    try:
        document: Any = json.loads(text)
    except (ValueError, RecursionError):  # (RecursionError: nested too deeply to decode)
        return text
    error = document.get("error", document) if isinstance(document, dict) else document
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail")
    return error if isinstance(error, str) else text
