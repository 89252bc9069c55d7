"""Schemathesis hooks for ``test_fuzz.py`` (loaded by ``st run`` through ``SCHEMATHESIS_HOOKS``).

Every built-in check runs, ``positive_data_acceptance`` included, with exactly two allowances
for what a JSON Schema cannot state, each named here rather than hidden in a broad setting:

- a 422 whose code depends on the server's state or on two parameters at once:
  ``last_event_id_out_of_range`` (a ``Last-Event-ID`` beyond the answer's log, whose length no
  document can know), ``conflicting_parameters`` (``before`` and ``after`` together),
  ``tool_results_mismatch`` (results that do not answer the calls of the project's latest
  answer, which no document can know), ``tools_too_large`` (a limit on the tools' compact
  JSON, which no schema counts), and the three refusals of ``POST /api/chat`` that depend on
  the last of its messages alone (``chat_message_role``, ``chat_message_empty``,
  ``chat_file_not_supported``), which no schema of an array can single out;
- a 414 for a URL over ``MAX_URL_BYTES``: the limit is in bytes of the encoded URL, and a
  schema's ``maxLength`` counts characters.

And one filter: no request whose URL is over 60,000 bytes is sent. uvicorn's HTTP parser itself
refuses one of about 64 KiB with its own text/plain 400 before the app sees it (as a proxy in
front would); the app's own limit, 414 at ``MAX_URL_BYTES`` (16 KiB), is well below that and is
exercised.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import schemathesis
from schemathesis.checks import positive_data_acceptance

STATE_DEPENDENT_422 = frozenset(
    {
        "last_event_id_out_of_range",
        "conflicting_parameters",
        "tool_results_mismatch",
        "tools_too_large",
        # POST /api/chat reads the last of its messages only: what that one holds (its role,
        # whether it has text, a file part) is checked, and no schema of an array can single
        # out its last item.
        "chat_message_role",
        "chat_message_empty",
        "chat_file_not_supported",
    }
)
MAX_SENT_URL_BYTES = 60_000
POSITIVE_CHECK = "positive_data_acceptance_but_unstatable"


def _code(response: Any) -> object:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


@schemathesis.check
def positive_data_acceptance_but_unstatable(ctx: Any, response: Any, case: Any) -> bool | None:
    """``positive_data_acceptance``, but for the refusals listed in this module's docstring."""
    if response.status_code == 414:
        return None
    if response.status_code == 422 and _code(response) in STATE_DEPENDENT_422:
        return None
    result: bool | None = positive_data_acceptance(ctx, response, case)
    return result


@schemathesis.hook
def filter_case(_context: Any, case: Any) -> bool:
    query = urlencode(case.query or {}, doseq=True)
    return len(case.formatted_path) + len(query) <= MAX_SENT_URL_BYTES
