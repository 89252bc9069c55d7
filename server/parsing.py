"""Request parsing shared by the handlers: JSON bodies, path ids, query numbers.

Wrong shapes and types are 400; well-formed but invalid values are 422 (see API.md).
"""

from __future__ import annotations

import json
from typing import TypeVar
from uuid import UUID

from pydantic import BaseModel, ValidationError
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


def validate(model: type[Model], value: object) -> Model:
    if not isinstance(value, dict):
        raise MalformedRequest("the body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise validation_problem(exc, getattr(model, "error_codes", {})) from None


def validation_problem(
    exc: ValidationError, codes: dict[str, str] | None = None
) -> MalformedRequest | InvalidInput:
    """400 for wrong types, else 422: ``invalid_input``, or ``codes[field]`` when that field is
    the only one in error."""
    errors = [
        {
            "field": ".".join(str(p) for p in err["loc"]) or "(body)",
            "message": err["msg"],
            "type": err["type"],
        }
        for err in exc.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    if any(e["type"].endswith(_TYPE_ERRORS) for e in errors):
        return MalformedRequest(f"wrong type: {summary}", code="wrong_type")
    fields = {e["field"] for e in errors}
    field = fields.pop() if len(fields) == 1 else ""
    code = (codes or {}).get(field, "invalid_input")
    return InvalidInput(summary, code=code, errors=errors)


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
