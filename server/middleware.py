"""Pure ASGI middleware (never BaseHTTPMiddleware: it hides disconnects and breaks streaming).

``SecurityHeaders`` adds the demo page's browser protections to every response; ``AccessLog``
writes one line per request with the route's path but never its query string (which can carry a
message) nor any header (which can carry a token).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Mapping
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import logs, metrics

access_logger = logging.getLogger("server.access")
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
RECEIVED = "orderly.received"  # scope key: when the request arrived (perf_counter)
# Scope key: the ``send`` that the outermost of our middleware received. Event streams send their
# body chunks there, past every middleware: the middleware here needs only the response start,
# and a wrapper call per chunk is a cost per event (see server/sse.py).
RAW_SEND = "orderly.send"


def received_at(scope: Scope) -> float:
    found = scope.get(RECEIVED)
    return found if isinstance(found, float) else time.perf_counter()


SECURITY_HEADERS = {
    # No inline script or style anywhere: the demo page loads only its own files.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: it hands back the inner app's, so that a response that lasts (an
        # event stream) keeps no frame of this middleware alive, only the send wrapper.
        if scope["type"] != "http":
            return self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        return self.app(scope, receive, send_with_headers)


class RequestLimits:
    """Refuse oversized URLs (414) and header sections (431) before any handler runs.

    uvicorn's httptools parser sets no limit of its own; a proxy in front should too (see
    docs/security.md)."""

    def __init__(self, app: ASGIApp, *, max_url_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_url_bytes = max_url_bytes
        self.max_header_bytes = max_header_bytes

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: it hands back the refusal's or the inner app's, so that a response
        # that lasts (an event stream) keeps no frame of this middleware alive.
        if scope["type"] == "http":
            url_size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
            header_size = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
            if url_size > self.max_url_bytes:
                return _refuse(
                    send,
                    414,
                    "URI Too Long",
                    "uri_too_long",
                    f"the URL must be at most {self.max_url_bytes} bytes",
                )
            if header_size > self.max_header_bytes:
                return _refuse(
                    send,
                    431,
                    "Request Header Fields Too Large",
                    "headers_too_large",
                    f"the headers must total at most {self.max_header_bytes} bytes",
                )
        return self.app(scope, receive, send)


async def _refuse(send: Send, status: int, title: str, code: str, detail: str) -> None:
    body = json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail, "code": code}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AccessLog:
    """Per request: a request id (``X-Request-ID`` if sane, else a new one, echoed back), one
    access line and the HTTP metrics, labelled by route template, never by raw path."""

    def __init__(self, app: ASGIApp, *, route_templates: Mapping[Any, str]) -> None:
        self.app = app
        self.route_templates = route_templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = scope[RECEIVED] = time.perf_counter()
        scope[RAW_SEND] = send
        rid = _request_id(scope)
        token = logs.request_id.set(rid)
        status = 0

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).setdefault("X-Request-ID", rid)
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            # In a method of its own: this frame lives as long as the response (an event stream
            # for hours), and its size grows with what it holds and the calls it makes.
            self._record(scope, status, time.perf_counter() - started)
            logs.request_id.reset(token)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route = self._route(scope)
        metrics.HTTP_REQUESTS.labels(route, str(status)).inc()
        metrics.HTTP_SECONDS.labels(route).observe(elapsed)
        client = scope.get("client")
        access_logger.info(
            '%s "%s %s" %d %.1fms',
            client[0] if client else "-",
            scope["method"],
            scope["path"],
            status,
            elapsed * 1000,
            extra={
                "method": scope["method"],
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 1),
            },
        )

    def _route(self, scope: Scope) -> str:
        # The router writes the matched endpoint into this very scope dict.
        template = self.route_templates.get(scope.get("endpoint"))
        if template is not None:
            return template
        path: str = scope["path"]
        return "/static" if path.startswith("/static/") else "unmatched"


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if _SANE_ID.fullmatch(text):
                return text
    return uuid.uuid4().hex
