"""Authentication: API tokens (stored only as hashes), the session cookie, the current user."""

from __future__ import annotations

import hashlib
import secrets

from starlette.requests import Request

from server.errors import NotAuthenticated
from server.limits import FailedLookups, RateLimiter
from server.store import Store, User
from server.tokencache import TokenCache

COOKIE_NAME = "orderly_session"
COOKIE_MAX_AGE = 30 * 24 * 3600
TOKEN_PREFIX = "ord_"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    """Tokens are 256-bit random secrets, so one unsalted SHA-256 is enough to store them."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


async def issue_token(store: Store, username: str) -> str:
    """Create ``username`` if needed and a new token for it; only its hash is stored."""
    token = new_token()
    await store.create_token(username, hash_token(token))
    return token


class Authenticator:
    """Finds the user of a request. A valid token's lookup is cached for ``TOKEN_CACHE_SECONDS``,
    so a revoked token keeps working on a worker for at most that long; an invalid token's too,
    and a lookup of a token the worker does not know is held to the limit on failed lookups
    (see ``server/tokencache.py``, ``server/limits.py`` and docs/security.md)."""

    def __init__(
        self,
        store: Store,
        *,
        cache: TokenCache,
        failures: FailedLookups,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.failures = failures
        self.limiter = limiter

    async def user_for_token(self, token: str, client: str) -> User | None:
        """The token's user, or None; ``client`` (an address) pays for failed lookups."""
        # The database looks tokens up by their hash: the secret itself is never compared, so
        # there is no timing signal about it to measure.
        key = hash_token(token)
        user = self.cache.user(key)
        if user is not None or self.cache.known_invalid(key):
            return user
        if not self.cache.known_valid(key):
            self.failures.check(client)  # 429, and no query, when it failed too often
        user = await self.store.user_for_token_hash(key)
        if user is None:
            self.failures.record(client)
        self.cache.remember(key, user)
        return user

    async def authenticate(self, request: Request, *, changes_state: bool = False) -> User:
        """The request's user. ``changes_state``: a GET that changes state (EventSource can only
        GET), held to the cookie's cross-origin check like an unsafe method."""
        token = bearer_token(request)
        if token is None:
            token = request.cookies.get(COOKIE_NAME)
            if token:
                check_cookie_origin(request, changes_state)
        if not token:
            raise NotAuthenticated()
        user = await self.user_for_token(token, client_address(request))
        if user is None:
            raise NotAuthenticated("the token is not valid", code="invalid_token")
        if self.limiter is not None:
            self.limiter.charge(user.id)
        return user


def client_address(request: Request) -> str:
    """The client's address: the peer, or X-Forwarded-For from a trusted proxy (uvicorn's
    ``FORWARDED_ALLOW_IPS``)."""
    return request.client.host if request.client is not None else "-"


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated("use 'Authorization: Bearer <token>'", code="invalid_token")
    return token.strip()


def check_cookie_origin(request: Request, changes_state: bool) -> None:
    """A cookie goes along with requests that other pages make (SameSite=Strict keeps other
    sites out, not other origins of the same site: another port or subdomain), so a
    cookie-authenticated request that changes state must show that it comes from our pages."""
    if request.method in UNSAFE_METHODS and not same_origin(request):
        raise NotAuthenticated(
            "cookie-authenticated requests that change state need a same-origin Origin header",
            code="cross_origin_request",
        )
    if changes_state and from_elsewhere(request):
        raise NotAuthenticated(
            "cookie-authenticated requests that change state must come from this site's pages",
            code="cross_origin_request",
        )


def from_elsewhere(request: Request) -> bool:
    """Whether a GET came from another origin. Browsers send no Origin on a same-origin GET
    (EventSource included), so an absent one proves nothing; a present foreign one, or a
    ``Sec-Fetch-Site`` other than ``same-origin`` or ``none`` (typed or bookmarked), does."""
    if request.headers.get("origin") is not None and not same_origin(request):
        return True
    return request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


def same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    return origin is not None and host is not None and origin == f"{request.url.scheme}://{host}"
