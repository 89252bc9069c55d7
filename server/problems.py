"""RFC 9457 problem documents: the one table from errors to HTTP responses."""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.errors import OrderlyError

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "malformed_request"}


def problem(
    status: int,
    title: str,
    detail: str,
    code: str,
    *,
    retry_after: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if extra:
        body.update(extra)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def from_error(error: OrderlyError) -> Response:
    return problem(
        error.status,
        error.title,
        error.detail,
        error.code,
        retry_after=error.retry_after,
        extra=error.fields(),
    )


async def handle_orderly_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OrderlyError)
    return from_error(exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    from http import HTTPStatus

    title = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if exc.detail != title else f"{title}."
    code = _HTTP_CODES.get(exc.status_code, title.lower().replace(" ", "_"))
    response = problem(exc.status_code, title, detail, code)
    if exc.headers:
        response.headers.update(exc.headers)
    if exc.status_code == 405:
        allowed = allowed_methods(request)
        if allowed:
            response.headers["Allow"] = ", ".join(sorted(allowed))
    return response


def allowed_methods(request: Request) -> set[str]:
    """Every method the request's path is served with. Starlette's 405 names only the methods
    of the first route that matched the path, and a path served by two routes (``GET`` and
    ``POST /api/projects``, ``POST`` and ``DELETE /api/session``) would seem to take one."""
    path = request.scope["path"]
    found: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.match(path):
            found |= route.methods
    return found


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "Internal Server Error", "An unexpected error occurred.", "internal_error")
