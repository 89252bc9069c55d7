"""Generators: where an answer's text comes from (``demo`` by default)."""

from __future__ import annotations

from server.config import Settings
from server.generators.base import Generator
from server.generators.demo import DemoGenerator


def generator_from_settings(settings: Settings) -> Generator:
    if settings.generator == "demo":
        return DemoGenerator(deltas=settings.demo_deltas, delta_ms=settings.demo_delta_ms)
    raise NotImplementedError(f"GENERATOR={settings.generator} is not available yet")
