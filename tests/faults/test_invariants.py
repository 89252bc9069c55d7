"""The checks that judge a run, on made-up evidence (no I/O): each can fail."""

from __future__ import annotations

from tests.faults.invariants import Interrupted, check_interrupted, check_log_lines

LOST_AFTER = 2.0
P0, P1 = 100, 101
SILENCES = {P0: [(10.0, 15.0)], P1: [(30.0, 31.0)]}  # P0 was cut off for 5 s, P1 for 1 s


def test_an_answer_interrupted_across_its_worker_outage_is_allowed() -> None:
    answers = [Interrupted("a", created=9.0, ended=16.0)]
    assert check_interrupted(answers, SILENCES, {"a": {P0}}, LOST_AFTER, 0.0) == []


def test_an_answer_started_after_the_outage_and_interrupted_is_caught() -> None:
    # What an expired heartbeat identity used for a new reservation does: reaped at once.
    answers = [Interrupted("b", created=15.5, ended=16.0)]
    found = check_interrupted(answers, SILENCES, {"b": {P0}}, LOST_AFTER, 0.0)
    assert len(found) == 1 and found[0].startswith("b: ended interrupted")


def test_a_short_silence_does_not_excuse_an_interruption() -> None:
    answers = [Interrupted("c", created=29.0, ended=32.0)]
    assert len(check_interrupted(answers, SILENCES, {"c": {P1}}, LOST_AFTER, 0.0)) == 1


def test_an_answer_never_seen_held_may_be_either_process() -> None:
    answers = [Interrupted("d", created=12.0, ended=13.0)]
    assert check_interrupted(answers, SILENCES, {}, LOST_AFTER, 0.0) == []
    assert len(check_interrupted(answers, SILENCES, {"d": {P1}}, LOST_AFTER, 0.0)) == 1


def test_a_generator_failure_or_a_deadlock_in_a_server_log_is_caught() -> None:
    lines = [
        '{"level": "warning", "message": "flush failed: database unavailable"}',
        '{"level": "error", "message": "generator failed for message m1"}',
        '{"level": "error", "message": "deadlock detected"}',
    ]
    found = check_log_lines("P0", lines)
    assert [sentence.split(";")[0] for sentence in found] == [
        "P0's log: 1 x a generator failure (a fault of the database taken for one of the answer)",
        "P0's log: 1 x PostgreSQL found a deadlock between the service's statements",
    ]
    assert check_log_lines("P0", lines[:1]) == []
