"""Generators: where an answer's text comes from (``demo`` by default, or ``openai``)."""

from __future__ import annotations

from server.config import Settings
from server.generators.base import Generator
from server.generators.demo import DemoGenerator
from server.generators.openai import OpenAIGenerator


def generator_from_settings(settings: Settings) -> Generator:
    if settings.generator == "demo":
        return DemoGenerator(deltas=settings.demo_deltas, delta_ms=settings.demo_delta_ms)
    if settings.generator == "openai":
        return OpenAIGenerator.from_settings(settings)
    raise ValueError(f"GENERATOR={settings.generator!r}: expected 'demo' or 'openai'")
