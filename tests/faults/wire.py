"""PostgreSQL's wire framing, just enough to find message boundaries (nothing is decoded).

After the start-up phase every message, in both directions, is a type byte and a 4-byte
big-endian length that counts itself and the body. Start-up messages (SSLRequest, GSSENCRequest,
CancelRequest, StartupMessage) are a length and a code, with no type byte, and the server answers
an SSLRequest or GSSENCRequest with a single byte ('N': no encryption here) before any message.

The fault proxy uses the boundaries to pick its moments: a client's Sync ('S') or simple Query
('Q') ends a request, and the server's ReadyForQuery ('Z') ends its reply, after the transaction
of an implicit (single-statement) request has committed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
# A client message that asks the server to execute what came before it and answer.
REQUEST_ENDS = frozenset({"S", "Q"})
READY_FOR_QUERY = "Z"


@dataclass(frozen=True, slots=True)
class Message:
    """One whole message: its type ('startup', 'negotiate', 'cancel', a letter, or 'byte' for
    the server's one-byte answer to a negotiation) and its raw bytes."""

    kind: str
    raw: bytes


class Framer:
    """Splits one direction of a connection into whole messages as bytes arrive."""

    def __init__(self, *, client_side: bool) -> None:
        self._buffer = bytearray()
        self._startup = client_side  # the client starts untyped; the server never does
        self._single_bytes = 0  # one-byte answers the server still owes (client_side=False)

    def expect_single_byte(self) -> None:
        """The client sent a negotiation request: the server's next answer is one byte."""
        self._single_bytes += 1

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages = []
        while (message := self._next()) is not None:
            messages.append(message)
        return messages

    def _next(self) -> Message | None:
        if self._single_bytes and self._buffer:
            self._single_bytes -= 1
            return Message("byte", self._take(1))
        if self._startup:
            return self._next_untyped()
        if len(self._buffer) < 5:
            return None
        (length,) = struct.unpack_from("!I", self._buffer, 1)
        if len(self._buffer) < 1 + length:
            return None
        return Message(chr(self._buffer[0]), self._take(1 + length))

    def _next_untyped(self) -> Message | None:
        if len(self._buffer) < 8:
            return None
        length, code = struct.unpack_from("!II", self._buffer, 0)
        if len(self._buffer) < length:
            return None
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            kind = "negotiate"
        elif code == CANCEL_REQUEST:
            kind = "cancel"
        else:
            kind = "startup"
            self._startup = False
        return Message(kind, self._take(length))

    def _take(self, count: int) -> bytes:
        taken = bytes(self._buffer[:count])
        del self._buffer[:count]
        return taken
