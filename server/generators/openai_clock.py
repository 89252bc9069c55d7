"""The time limits of one answer from a model server, as deadlines on the event loop's clock.

Three limits, because they catch different failures: a model that never starts (first token),
one that stops mid-answer (idle), and one that never stops (total).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from server.generators.base import GeneratorError


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    first_token: float
    idle: float
    total: float


class Clock:
    """When the next chunk is due: the first token, then the next chunk, never past the total."""

    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts
        self.total_at = _now() + timeouts.total
        self.due = _now() + timeouts.first_token
        self.writing = False

    def new_attempt(self) -> None:
        """A retry gets its own time for the first token (the total keeps running)."""
        self.due = _now() + self.timeouts.first_token

    def received(self, produced: bool) -> None:
        """A chunk arrived (``produced``: it carried text or a tool call); from the first token
        on, any chunk proves the model is alive."""
        self.writing = self.writing or produced
        if self.writing:
            self.due = _now() + self.timeouts.idle

    def deadline(self) -> float:
        return min(self.total_at, self.due)

    def can_wait(self, seconds: float) -> bool:
        """Whether a retry after ``seconds`` fits: no longer than a first token may take, and
        within the total."""
        return seconds <= self.timeouts.first_token and _now() + seconds < self.total_at

    def expired(self) -> GeneratorError:
        """The error for a deadline that passed."""
        if self.total_at <= self.due:
            message = f"the model did not finish within {self.timeouts.total:g} seconds"
        elif self.writing:
            message = f"the model stalled: nothing for {self.timeouts.idle:g} seconds mid-answer"
        else:
            first = self.timeouts.first_token
            message = f"the model did not start answering within {first:g} seconds"
        return GeneratorError("upstream_timeout", message)


def _now() -> float:
    return asyncio.get_running_loop().time()
