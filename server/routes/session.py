"""Browser sign-in: trade a token for an HttpOnly session cookie (EventSource sends no headers)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.auth import COOKIE_MAX_AGE, COOKIE_NAME, client_address, same_origin
from server.errors import NotAuthenticated
from server.models import SessionRequest
from server.parsing import read_json
from server.services import services


async def create_session(request: Request) -> Response:
    app = services(request)
    if request.headers.get("origin") is not None and not same_origin(request):
        raise NotAuthenticated("sign in from this site's own pages", code="cross_origin_request")
    body = await read_json(request, SessionRequest, max_bytes=app.settings.max_body_bytes)
    if await app.auth.user_for_token(body.token, client_address(request)) is None:
        raise NotAuthenticated("the token is not valid", code="invalid_token")
    response = Response(status_code=204)
    response.set_cookie(
        COOKIE_NAME,
        body.token,
        max_age=COOKIE_MAX_AGE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def delete_session(request: Request) -> Response:
    response = Response(status_code=204)
    response.delete_cookie(
        COOKIE_NAME,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


routes = [
    Route("/api/session", create_session, methods=["POST"]),
    Route("/api/session", delete_session, methods=["DELETE"]),
]
