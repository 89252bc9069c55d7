"""Request parsing shared by the handlers: JSON bodies, path ids, query numbers.

Wrong shapes and types are 400; well-formed but invalid values are 422 (see API.md).
"""

from __future__ import annotations

import json
from typing import TypeVar
from uuid import UUID

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from starlette.requests import Request

from server.errors import (
    InvalidInput,
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)

Model = TypeVar("Model", bound=BaseModel)

# pydantic error types that mean "wrong JSON type", which API.md calls malformed (400).
_TYPE_ERRORS = ("_type", "_parsing", "model_attributes_type", "dict_type", "list_type")


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refusing to read past ``max_bytes`` whatever Content-Length claims."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(f"the body must be at most {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the body must be at most {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, model: type[Model], *, max_bytes: int) -> Model:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType()
    return validate(model, parse_json(await read_body(request, max_bytes)))


def parse_json(body: bytes) -> object:
    """A client's JSON document; anything that is not one is 400 ``invalid_json``."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedRequest("the body is not valid JSON", code="invalid_json") from None
    except RecursionError:
        # The C decoder recurses once per level: 20,000 levels of [[[... fit in a small body.
        raise MalformedRequest(
            "the body is not valid JSON: it is nested too deeply", code="invalid_json"
        ) from None


def validate(model: type[Model], value: object, names: dict[str, str] | None = None) -> Model:
    """``value`` as ``model``; a problem names each field as the client sent it (``names``: the
    query parameter of a field, when it came in a query)."""
    if not isinstance(value, dict):
        raise MalformedRequest("the body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise validation_problem(exc, getattr(model, "error_codes", {}), names) from None


# What each field of a request must be, in docs/api.md's words. A problem's detail is written
# for the person who sent the request: it names the field and its rule, never the validator's
# own phrasing ("Value should have at least 1 item after validation"). ``{name}`` is the field
# as the client sent it; ``image_urls[]`` is the rule of each item.
FIELD_RULES: dict[str, str] = {
    "title": "{name} must be 1 to 200 characters, not only whitespace",
    "token": "{name} must be 1 to 200 characters",
    # Its longest is a setting, which the handler checks (message_too_long).
    "message": "{name} must be at least 1 character, not only whitespace",
    "client_request_id": "{name} must be 1 to 64 characters, each a letter, a digit, - or _",
    "image_urls": "{name} must be a list of at most 8 URLs",
    "image_urls[]": "{name} must be an absolute http or https URL of at most 2,048 characters",
    "on_running": "{name} must be concurrent, reject, enqueue or interrupt",
    "replace": "{name} must be true or false",
    "tool_results": "{name} must be a list of 1 to 64 results",
    "tool_results[]": '{name} must be {{"tool_call_id": 1 to 256 characters, "content": text}}',
    "tools": "{name} must be a list of at most 64 tools",
    "tools[]": '{name} must be {{"type": "function", "function": {{"name": 1 to 64 of A-Z, a-z, '
    '0-9, _ and -, "description": text, "parameters": a JSON Schema object, "strict": bool}}}}',
    "tool_choice": '{name} must be none, auto, required or {{"type": "function", "function": '
    '{{"name": str}}}}',
}
# The JSON type of each field, for a value of another type (400 wrong_type).
FIELD_TYPES: dict[str, str] = {
    "title": "a string",
    "token": "a string",
    "message": "a string",
    "client_request_id": "a string or null",
    "image_urls": "a list of strings",
    "image_urls[]": "a string",
    "on_running": "a string or null",
    "replace": "a boolean",
    "tool_results": "a list of objects",
    "tool_results[]": "an object",
    "tools": "a list of objects",
    "tools[]": "an object",
    "tool_choice": "a string, an object or null",
}


def validation_problem(
    exc: ValidationError, codes: dict[str, str] | None = None, names: dict[str, str] | None = None
) -> MalformedRequest | InvalidInput:
    """400 for wrong types, else 422: ``invalid_input``, or ``codes[field]`` when that field is
    the only one in error. Each problem is one of our sentences (``FIELD_RULES``)."""
    errors = [
        {
            "field": ".".join(str(p) for p in err["loc"]) or "(body)",
            "message": _sentence(err, names or {}),
            "type": err["type"],
        }
        for err in exc.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(e["message"] for e in errors)
    if any(e["type"].endswith(_TYPE_ERRORS) for e in errors):
        return MalformedRequest(summary, code="wrong_type")
    fields = {e["field"] for e in errors}
    field = fields.pop() if len(fields) == 1 else ""
    code = (codes or {}).get(field, "invalid_input")
    return InvalidInput(summary, code=code, errors=errors)


def _sentence(err: ErrorDetails, names: dict[str, str]) -> str:
    """Our sentence for one of pydantic's errors: the field as the client named it, its rule."""
    loc = err["loc"]
    field = str(loc[0]) if loc else ""
    item = len(loc) > 1 and isinstance(loc[1], int)
    name = names.get(field, field) + (f"[{loc[1]}]" if item else "")
    key = f"{field}[]" if item else field
    kind = err["type"]
    if kind == "missing":
        return f"{name} is required"
    if kind == "extra_forbidden":
        return f"{name} is not a field of this request"
    if kind.endswith(_TYPE_ERRORS):
        return f"{name} must be {FIELD_TYPES.get(key, 'of another type')}"
    if kind == "value_error" and "ctx" in err:
        # Our own validators' reasons (server/models.py): "must not contain the NUL character".
        return f"{name} {err['ctx']['error']}".strip()
    if kind in ("too_short", "string_too_short") and key in ("title", "token", "message"):
        return f"{name} must not be empty"
    return FIELD_RULES.get(key, "{name} is not valid").format(name=name)


def path_uuid(request: Request, name: str, what: str) -> UUID:
    return parse_uuid(request.path_params[name], what)


def parse_uuid(raw: str, what: str) -> UUID:
    """An id; one that is not a UUID names nothing that exists, hence 404."""
    try:
        return UUID(raw)
    except ValueError:
        raise NotFound(f"no {what} with id {raw!r}") from None


def query_param(request: Request, name: str) -> str | None:
    """A query parameter given at most once. ``?limit=1&limit=500`` is a list where one value is
    expected (each parameter of /openapi.json is one value): taking either one would answer a
    question the client did not ask."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise MalformedRequest(f"{name} must be given once", code="invalid_parameter")
    return values[0] if values else None


def query_int(
    request: Request, name: str, *, default: int | None, low: int, high: int
) -> int | None:
    raw = query_param(request, name)
    if raw is None:
        return default
    # An empty value is not a number either (``?limit=``): /openapi.json says integer.
    try:
        value = int(raw)
    except ValueError:
        raise MalformedRequest(f"{name} must be an integer", code="invalid_parameter") from None
    if not low <= value <= high:
        raise InvalidInput(
            f"{name} must be between {low} and {high}", code="parameter_out_of_range"
        )
    return value
