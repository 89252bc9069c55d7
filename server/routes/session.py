"""Browser sign-in: trade a token for an HttpOnly session cookie (EventSource sends no headers).

A sign-in never replaces a session of another account silently: a link carrying someone else's
token (``/#token=...``) would otherwise put everything the person then types into that account.
The server refuses (409 ``another_account_signed_in``, naming both accounts) unless the request
says ``replace``, which the page sends only once the person has confirmed."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.auth import COOKIE_MAX_AGE, COOKIE_NAME, client_address, same_origin
from server.errors import AnotherAccountSignedIn, NotAuthenticated
from server.models import SessionInfo, SessionRequest
from server.parsing import read_json
from server.routes.respond import json_response
from server.services import services


async def create_session(request: Request) -> Response:
    app = services(request)
    if request.headers.get("origin") is not None and not same_origin(request):
        raise NotAuthenticated("sign in from this site's own pages", code="cross_origin_request")
    body = await read_json(request, SessionRequest, max_bytes=app.settings.max_body_bytes)
    client = client_address(request)
    user = await app.auth.user_for_token(body.token, client)
    if user is None:
        raise NotAuthenticated("the token is not valid", code="invalid_token")
    current = request.cookies.get(COOKIE_NAME)
    if current and current != body.token and not body.replace:
        signed_in = await app.auth.user_for_token(current, client)
        if signed_in is not None and signed_in.id != user.id:
            raise AnotherAccountSignedIn(signed_in.username, user.username)
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


async def get_session(request: Request) -> Response:
    """Who this browser (or bearer) is signed in as: the page shows it, and names it before
    switching accounts."""
    user = await services(request).auth.authenticate(request)
    return json_response(SessionInfo(username=user.username).model_dump_json())


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
    Route("/api/session", get_session, methods=["GET"]),
    Route("/api/session", delete_session, methods=["DELETE"]),
]
