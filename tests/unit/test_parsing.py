"""Every field of every request body has our own sentences for its problems."""

from __future__ import annotations

from server.models import Input
from server.parsing import FIELD_RULES, FIELD_TYPES


def test_every_request_field_has_a_rule_and_a_type() -> None:
    fields = {name for model in Input.__subclasses__() for name in model.model_fields}
    assert fields <= FIELD_RULES.keys(), fields - FIELD_RULES.keys()
    assert fields <= FIELD_TYPES.keys(), fields - FIELD_TYPES.keys()
