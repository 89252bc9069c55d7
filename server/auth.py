"""Authentication: API tokens (stored only as hashes), the session cookie, the current user."""

from __future__ import annotations

import hashlib
import secrets
import time

from starlette.requests import Request

from server.errors import NotAuthenticated
from server.limits import RateLimiter
from server.store import Store, User

COOKIE_NAME = "orderly_session"
COOKIE_MAX_AGE = 30 * 24 * 3600
TOKEN_PREFIX = "ord_"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CACHE_LIMIT = 10_000


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
    """Finds the user of a request. Lookups are cached for ``cache_seconds`` per token, so a
    revoked token keeps working on a worker for at most that long (see docs/security.md)."""

    def __init__(
        self, store: Store, *, cache_seconds: float, limiter: RateLimiter | None = None
    ) -> None:
        self.store = store
        self.limiter = limiter
        self.cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[float, User | None]] = {}

    async def user_for_token(self, token: str) -> User | None:
        # The database looks tokens up by their hash: the secret itself is never compared, so
        # there is no timing signal about it to measure.
        key = hash_token(token)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        user = await self.store.user_for_token_hash(key)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = (now + self.cache_seconds, user)
        return user

    async def authenticate(self, request: Request) -> User:
        token = bearer_token(request)
        if token is None:
            token = request.cookies.get(COOKIE_NAME)
            if token and request.method in UNSAFE_METHODS and not same_origin(request):
                raise NotAuthenticated(
                    "cookie-authenticated requests that change state need a same-origin "
                    "Origin header",
                    code="cross_origin_request",
                )
        if not token:
            raise NotAuthenticated()
        user = await self.user_for_token(token)
        if user is None:
            raise NotAuthenticated("the token is not valid", code="invalid_token")
        if self.limiter is not None:
            self.limiter.charge(user.id)
        return user


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated("use 'Authorization: Bearer <token>'", code="invalid_token")
    return token.strip()


def same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    return origin is not None and host is not None and origin == f"{request.url.scheme}://{host}"
