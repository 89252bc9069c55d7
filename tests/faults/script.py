"""The client script of a run, drawn from its seed: who asks for what, where, and how they behave.

Each plan is one generation. Its client starts it on one server process and then:

- ``follow``: reads its stream to the end (reconnecting on the other process if it is cut);
- ``hop``: hangs up after a few events and resumes on the other process with ``Last-Event-ID``,
  one to three times, then reads to the end;
- ``cancel``: hangs up after a few events, cancels (on either process), and resumes on the other
  process to the end;
- ``detach``: starts it with ``Accept: application/json`` (no listener) and attaches later from
  ``Last-Event-ID: 0``, or never;
- ``abandon``: hangs up after a few events and never comes back;
- ``burst``: waits for the long outage to end (``schedule.py``), starts at once and reads its
  stream to the end; a burst is ``BURST`` of them, in a project of their own per user (no
  ``interrupt`` there), half of them ``enqueue``: new work that meets workers whose heartbeats
  have just expired.

Each start asks for an ``on_running`` policy: mostly ``concurrent``, some ``enqueue`` (a queue
in the project, behind whatever runs there) and a few ``interrupt`` (which cancels the
project's running and queued answers, whoever's client is reading them).

Some clients start and resume through ``GET /api/generate-stream`` (as EventSource does: the
same URL again with ``Last-Event-ID``), the others through ``POST .../generations`` and
``GET .../events``. Every start carries a ``client_request_id``, and every retry reuses it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

STYLES = ("follow", "hop", "cancel", "detach", "abandon")
POLICIES = ("concurrent", "enqueue", "interrupt")
POLICY_WEIGHTS = (0.6, 0.28, 0.12)
USERS = 2
PROJECTS_PER_USER = 2  # the script's; each user has one more for the burst
BURST_PROJECT = PROJECTS_PER_USER
BURST = 6
GENERATIONS_PER_SECOND = 2.0
WORDS = ("order", "stream", "resume", "lease", "commit", "caf\u00e9", "\u2615", "\U0001f600")


@dataclass(frozen=True, slots=True)
class Plan:
    number: int
    at: float  # seconds after the run began
    user: int
    project: int  # index among the user's projects
    server: int  # the process it starts on (0 or 1)
    style: str
    reads: tuple[int, ...]  # events read before each hang-up (hop, cancel, abandon)
    eventsource: bool  # through GET /api/generate-stream
    cancel_on: int  # the process that gets the cancel
    attach_after: float | None  # detach: seconds before attaching; None: never
    words: tuple[str, ...]
    on_running: str = "concurrent"

    @property
    def key(self) -> str:
        return f"plan-{self.number}"

    @property
    def prompt(self) -> str:
        return f"Generation {self.number} ({self.style}): " + " ".join(self.words)


def client_script(seed: int, window: float) -> list[Plan]:
    """The plans of a run of ``window`` seconds: the same list for the same seed and window."""
    rng = random.Random(f"clients:{seed}")
    count = max(len(STYLES), round(window * GENERATIONS_PER_SECOND))
    starts = sorted(round(rng.uniform(0.0, window), 2) for _ in range(count))
    plans = [_plan(rng, number, at) for number, at in enumerate(starts)]
    return plans + [_burst(rng, len(plans) + i, i) for i in range(BURST)]


def _burst(rng: random.Random, number: int, i: int) -> Plan:
    return Plan(
        number=number,
        at=0.0,
        user=i % USERS,
        project=BURST_PROJECT,
        server=(i // USERS) % 2,
        style="burst",
        reads=(),
        eventsource=False,
        cancel_on=0,
        attach_after=None,
        words=tuple(rng.choice(WORDS) for _ in range(rng.randint(1, 12))),
        on_running="enqueue" if i % 2 else "concurrent",
    )


def _plan(rng: random.Random, number: int, at: float) -> Plan:
    style = STYLES[number % len(STYLES)] if number < len(STYLES) else rng.choice(STYLES)
    if style == "hop":
        reads = tuple(rng.randint(1, 12) for _ in range(rng.randint(1, 3)))
    elif style in ("cancel", "abandon"):
        reads = (rng.randint(1, 25),)
    else:
        reads = ()
    attach = rng.choice((None, round(rng.uniform(0.0, 4.0), 2)))
    return Plan(
        number=number,
        at=at,
        user=rng.randrange(USERS),
        project=rng.randrange(PROJECTS_PER_USER),
        server=rng.randrange(2),
        style=style,
        reads=reads,
        eventsource=style != "detach" and rng.random() < 0.3,
        cancel_on=rng.randrange(2),
        attach_after=attach if style == "detach" else None,
        words=tuple(rng.choice(WORDS) for _ in range(rng.randint(1, 12))),
        on_running=rng.choices(POLICIES, POLICY_WEIGHTS)[0],
    )
