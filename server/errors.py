"""Domain errors. Each maps to one RFC 9457 problem document (see ``server/problems.py``).

The docstring of each class is its default detail; ``code`` is the stable machine-readable name.
"""

from __future__ import annotations


class OrderlyError(Exception):
    """Something went wrong."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal Server Error"
    retry_after: int | None = None

    def __init__(self, detail: str | None = None, *, code: str | None = None) -> None:
        self.detail = detail or (self.__doc__ or "").strip()
        if code is not None:
            self.code = code
        super().__init__(self.detail)

    def fields(self) -> dict[str, object]:
        """Members of the problem document beyond the standard ones."""
        return {}


class MalformedRequest(OrderlyError):
    """The request is malformed."""

    status, code, title = 400, "malformed_request", "Bad Request"


class NotAuthenticated(OrderlyError):
    """Authentication is required: send a bearer token or sign in."""

    status, code, title = 401, "not_authenticated", "Unauthorized"


class NotFound(OrderlyError):
    """No such resource."""

    status, code, title = 404, "not_found", "Not Found"


class Conflict(OrderlyError):
    """The request conflicts with the current state."""

    status, code, title = 409, "conflict", "Conflict"


class AnswerRunning(Conflict):
    """An answer of this project is still running (the request's on_running is reject)."""

    code = "answer_running"

    def __init__(self, message_id: str, sequence: int) -> None:
        super().__init__(
            f"assistant message {message_id} (sequence {sequence}) of this project is still "
            "running; wait for it to end, or send on_running enqueue or interrupt"
        )
        self.message_id = message_id
        self.sequence = sequence

    def fields(self) -> dict[str, object]:
        return {"running_message_id": self.message_id, "running_sequence": self.sequence}


class ToolCallsNotPending(Conflict):
    """The project's latest answer did not end with tool calls waiting for results (it made none,
    it has not ended, it failed, or a later turn already answered them): nothing was written."""

    code = "tool_calls_not_pending"


class NotLatestAnswer(Conflict):
    """Only the project's latest answer can be regenerated, or have its current variant chosen:
    later turns were sent with this one's current variant as their context."""

    code = "not_latest_answer"


class AnotherAccountSignedIn(Conflict):
    """This browser is signed in to another account: ask the person before switching."""

    code = "another_account_signed_in"

    def __init__(self, signed_in: str, token_user: str) -> None:
        super().__init__(
            f"this browser is signed in as {signed_in!r} and the token is {token_user!r}'s; "
            'send "replace": true to switch accounts'
        )
        self.signed_in = signed_in
        self.token_user = token_user

    def fields(self) -> dict[str, object]:
        return {"signed_in_username": self.signed_in, "token_username": self.token_user}


class PayloadTooLarge(OrderlyError):
    """The request body is too large."""

    status, code, title = 413, "payload_too_large", "Content Too Large"


class UnsupportedMediaType(OrderlyError):
    """The request body must be JSON (Content-Type: application/json)."""

    status, code, title = 415, "unsupported_media_type", "Unsupported Media Type"


class InvalidInput(OrderlyError):
    """The request is well-formed but has invalid values."""

    status, code, title = 422, "invalid_input", "Unprocessable Content"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(detail, code=code)
        self.errors = errors or []

    def fields(self) -> dict[str, object]:
        return {"errors": self.errors} if self.errors else {}


class ToolResultsMismatch(InvalidInput):
    """tool_results must answer every call of the project's latest answer, each once, and no
    other (their tool_call_id are the calls' ids): nothing was written."""

    code = "tool_results_mismatch"


class TooManyRequests(OrderlyError):
    """Too many requests; retry later."""

    status, code, title = 429, "too_many_requests", "Too Many Requests"
    retry_after = 1


class TooManyRunning(TooManyRequests):
    """Too many of your generations are running; wait for one to finish."""

    code = "too_many_running_generations"
    retry_after = 2


class TooManyUserStreams(TooManyRequests):
    """You have as many answer streams open on this server as you may; close one (another tab's,
    say) or retry later."""

    code = "too_many_streams_per_user"
    # Streams end with their answers (seconds to minutes): a client retrying this often costs a
    # refusal, which reads nothing from the database.
    retry_after = 5


class ServiceUnavailable(OrderlyError):
    """The service is temporarily unavailable; retry later."""

    status, code, title = 503, "unavailable", "Service Unavailable"
    retry_after = 2


class DatabaseUnavailable(ServiceUnavailable):
    """The database is unavailable; retry later."""

    code = "database_unavailable"


class WriteConflict(Exception):
    """A flush found the event id of one of its chunks taken by an end written meanwhile (cancel,
    the reaper): that message has ended, and nothing of the statement was written. The flusher
    sends it again at once, and then leaves the ended message out (internal signal: only the
    flush meets it; an end's claim skips a taken id, see ``close_claim``)."""


class WorkerUnavailable(ServiceUnavailable):
    """This worker's heartbeat is not registered, or may have expired (the database was away for
    longer than the lease); it registers again as soon as the database answers: retry."""

    code = "worker_unavailable"
    retry_after = 1


class TooManyStreams(ServiceUnavailable):
    """This server holds as many open streams as it may; retry (another instance may take it)."""

    code = "too_many_streams"


class Draining(ServiceUnavailable):
    """The server is shutting down; retry on another instance."""

    code = "draining"


class DuplicateRequest(Exception):
    """A message with this client_request_id already exists in the project (internal signal)."""
