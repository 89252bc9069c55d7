"""What a worker remembers of its token lookups, for ``TOKEN_CACHE_SECONDS``.

Valid and invalid tokens are kept apart, each bounded, the least recently used forgotten first.
Anybody can send random tokens, but those only ever push out other invalid ones: a real user's
entry can be displaced only by other valid tokens. A valid token's user is trusted for
``seconds`` after its lookup (so a revoked token stops working within that time), then looked up
again; the entry itself stays, as a note that the token was valid, which spares its next lookup
the limit on failed ones (``server/limits.py``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TypeVar

from server.store import User

V = TypeVar("V")

CACHE_SIZE = 10_000  # entries per kind: valid tokens, invalid tokens


class TokenCache:
    def __init__(self, *, seconds: float, size: int = CACHE_SIZE) -> None:
        self.seconds = seconds
        self.size = size
        self._valid: OrderedDict[bytes, tuple[float, User]] = OrderedDict()
        self._invalid: OrderedDict[bytes, float] = OrderedDict()

    def user(self, key: bytes) -> User | None:
        """The user of a valid token looked up less than ``seconds`` ago."""
        found = self._valid.get(key)
        if found is None:
            return None
        self._valid.move_to_end(key)
        expires, user = found
        return user if expires > time.monotonic() else None

    def known_invalid(self, key: bytes) -> bool:
        """Whether the token was found invalid less than ``seconds`` ago."""
        expires = self._invalid.get(key)
        return expires is not None and expires > time.monotonic()

    def known_valid(self, key: bytes) -> bool:
        """Whether the token was valid at its last lookup, however long ago."""
        return key in self._valid

    def remember(self, key: bytes, user: User | None) -> None:
        expires = time.monotonic() + self.seconds
        if user is None:
            self._valid.pop(key, None)
            _put(self._invalid, key, expires, self.size)
        else:
            self._invalid.pop(key, None)
            _put(self._valid, key, (expires, user), self.size)


def _put(entries: OrderedDict[bytes, V], key: bytes, value: V, size: int) -> None:
    """Set ``key`` as the most recent entry, forgetting the oldest beyond ``size``."""
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > size:
        entries.popitem(last=False)
