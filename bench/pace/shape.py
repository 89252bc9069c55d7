"""What a model-pace step asks for, and the client's spec for it. Three kinds:

- *steady*: a closed loop in steady state. N slots; slot i starts its first answer at i/N of one
  answer's duration (the generator's own, ``DEMO_DELTAS`` x ``DEMO_DELTA_MS``) and each next one
  as soon as the previous ends, so that about N answers are open at any moment and they start at
  an even N per answer duration. The first answer duration is a warm-up (the slots are still
  joining); the measured window follows, ``measure_answers`` answer durations long; no slot
  starts an answer after the window, and the answers open then run to their end (the drain).
- *burst*: N answers started at once (over ``ramp_s``), one per slot; its window is its first
  few seconds, where the start-up costs fall.
- *waves*: N slots started at once (over ``ramp_s``), each running answers back to back: one
  each, or as many as start before a stop time; its window is the whole step (the long-answer
  pair: the same N, delta rate and duration on both sides).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.pace.spec import Spec


@dataclass(frozen=True, slots=True)
class Shape:
    kind: str  # "steady", "burst" or "waves"
    n: int  # slots: answers open at once
    deltas: int
    delta_ms: int
    delta_chars: int
    spread_s: float  # slot i starts its first answer at i/n of this
    per_slot: int  # answers a slot may run, one after another
    stop_s: float | None  # no answer starts after this (None: each slot runs all of its own)
    window: tuple[float, float | None]  # seconds from the step's start; None: to the last end
    # Each answer reasons first (a /think message): half its pieces reasoning, half text.
    think: bool = False

    @property
    def server_deltas(self) -> int:
        """The server's DEMO_DELTAS: the pieces of the text (a thinking answer streams as many
        pieces of reasoning first)."""
        return self.deltas // 2 if self.think else self.deltas

    @property
    def text_chars(self) -> int:
        """The length of each answer's text (its reasoning, if any, is about as long)."""
        return self.server_deltas * self.delta_chars

    @property
    def own_seconds(self) -> float:
        """The generator's own duration of one answer: its pieces x DEMO_DELTA_MS."""
        return self.deltas * self.delta_ms / 1000

    @property
    def answers(self) -> int:
        return self.n * self.per_slot

    @property
    def load_seconds(self) -> float:
        """How long the slots go on starting answers (at the generator's own pace)."""
        return self.stop_s if self.stop_s is not None else self.per_slot * self.own_seconds

    @property
    def timeout_s(self) -> float:
        return self.load_seconds + self.own_seconds * 6 + self.spread_s + 20

    def spec(self, port: int, requests: list[bytes]) -> Spec:
        start, end = self.window
        return Spec(
            host="127.0.0.1",
            port=port,
            delta_us=self.delta_ms * 1000,
            spread_us=round(self.spread_s * 1e6),
            timeout_ms=round((self.timeout_s - 10) * 1000),
            requests=requests,
            slots=self.n,
            stop_us=-1 if self.stop_s is None else round(self.stop_s * 1e6),
            window_start_us=round(start * 1e6),
            window_end_us=-1 if end is None else round(end * 1e6),
        )


def steady(
    n: int, deltas: int, delta_ms: int, chars: int, measure_answers: float, *, think: bool = False
) -> Shape:
    """A warm-up of one answer duration, then a window of ``measure_answers`` of them;
    ``think``: each answer's ``deltas`` pieces are half reasoning, half text."""
    own = deltas * delta_ms / 1000
    end = own * (1 + measure_answers)
    # An answer never takes less than its own duration, so no slot starts more than this.
    per_slot = math.ceil(end / own - 1e-9)
    return Shape("steady", n, deltas, delta_ms, chars, own, per_slot, end, (own, end), think)


def burst(n: int, deltas: int, delta_ms: int, chars: int, ramp_s: float, window_s: float) -> Shape:
    return Shape("burst", n, deltas, delta_ms, chars, ramp_s, 1, None, (0.0, window_s))


def waves(n: int, deltas: int, delta_ms: int, chars: int, ramp_s: float, seconds: float) -> Shape:
    """Answers back to back for ``seconds``: none starts later than half an answer duration
    before its end, so that the slots' last answers end within half an answer of it, either
    side (one answer each when they are that long)."""
    own = deltas * delta_ms / 1000
    stop = max(0.0, seconds - own / 2) if own < seconds else 0.0
    per_slot = math.ceil(seconds / own - 1e-9) + (own < seconds)
    return Shape("waves", n, deltas, delta_ms, chars, ramp_s, per_slot, stop or None, (0.0, None))
