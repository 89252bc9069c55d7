"""The model-pace benchmark's own logic: reading a replayed stream, the lag histogram, the
prompts, the shapes of the steps and which answers they measure, the targets, the WAL
statistics. (The scenario itself runs in tests/integration/test_bench_smoke.py.)"""

from __future__ import annotations

from pathlib import Path

from bench.pace import waldump
from bench.pace.check import parse_events
from bench.pace.figures import coarse_width, concurrency, histogram_ms, measured
from bench.pace.prose import prompt_for
from bench.pace.run import Answer
from bench.pace.servermetrics import histogram
from bench.pace.shape import burst, steady, waves
from bench.pace.targets import burst_note, targets
from server.generators.demo import demo_answer, split_evenly


def frames(*events: tuple[int, str, str]) -> bytes:
    head = "retry: 2000\n\n: ping\n\n"
    return (head + "".join(f"id: {i}\nevent: {n}\ndata: {d}\n\n" for i, n, d in events)).encode()


def test_a_replay_joins_the_deltas_and_reads_the_terminal_message() -> None:
    body = frames(
        (1, "start", "{}"),
        (2, "delta", '{"text":"Hel"}'),
        (3, "delta", '{"text":"lo\\n"}'),
        (4, "done", '{"message":{"status":"success","content":"Hello\\n"}}'),
    )
    replay = parse_events(body)
    assert replay.ids_ok and replay.terminal == "done" and replay.status == "success"
    assert replay.joined == replay.content == "Hello\n"


def test_a_replay_with_a_gap_or_an_event_after_the_terminal_is_not_ok() -> None:
    gap = frames((1, "start", "{}"), (3, "done", '{"message":{"content":""}}'))
    late = frames(
        (1, "start", "{}"),
        (2, "done", '{"message":{"content":""}}'),
        (3, "delta", '{"text":"x"}'),
    )
    assert not parse_events(gap).ids_ok
    assert not parse_events(late).ids_ok


def test_an_error_event_gives_its_code() -> None:
    body = frames(
        (1, "start", "{}"),
        (2, "error", '{"error":{"code":"interrupted","message":"m"},"message":{"status":"error"}}'),
    )
    replay = parse_events(body)
    assert (replay.status, replay.error_code) == ("error", "interrupted")


def test_the_lag_percentiles_are_bucket_upper_edges() -> None:
    buckets = {0: 98, 1_000: 1, 50_000: 1}  # 100 lags: 98 under 0.1 ms, one at 1 ms, one at 50
    figures = histogram_ms(buckets)
    assert figures["count"] == 100
    assert figures["p50_ms"] == 0.1
    assert figures["p99_ms"] == 1.1
    assert figures["max_ms"] == 50.1


def test_the_lags_by_second_have_1_ms_buckets_below_a_second_and_100_ms_above() -> None:
    figures = histogram_ms({-1000: 1, 0: 97, 5000: 1, 1_200_000: 1}, coarse_width)
    assert (figures["p50_ms"], figures["p99_ms"], figures["max_ms"]) == (1.0, 6.0, 1300.0)


def test_a_steady_step_warms_up_for_one_answer_then_measures_and_stops_starting() -> None:
    shape = steady(1000, 400, 25, 5, measure_answers=2)  # 10 s answers
    assert shape.window == (10.0, 30.0) and shape.stop_s == 30.0 and shape.spread_s == 10.0
    assert shape.per_slot == 3  # an answer never ends before its own duration
    spec = shape.spec(8000, [b""] * shape.answers)
    assert (spec.slots, spec.stop_us, spec.window_start_us, spec.window_end_us) == (
        1000,
        30_000_000,
        10_000_000,
        30_000_000,
    )
    assert burst(1000, 400, 25, 5, 0.5, 3.0).spec(8000, [b""] * 1000).window_end_us == 3_000_000
    short, long = (waves(100, deltas, 5, 5, 0.5, 16.5) for deltas in (412, 3300))
    assert (long.per_slot, long.stop_s, long.window) == (1, None, (0.0, None))
    assert short.per_slot == 10 and short.stop_s == 16.5 - 1.03  # the last end about 16.5 s


def answer(start: int, ended: int) -> Answer:
    return Answer(200, "ok", "done", start, start, start, start, ended, ended, 10, 13, 0, True, 0)


def test_a_steady_step_measures_pace_on_answers_that_can_end_in_its_window() -> None:
    shape = steady(3, 400, 25, 5, measure_answers=2)  # window 10-30 s
    s = 1_000_000
    answers = [answer(t * s, t * s + 10 * s) for t in (0, 5, 10, 15, 20, 25, 30)]
    unused = Answer(0, "unused", "-", -1, -1, -1, -1, -1, -1, 0, 0, 0, True, 0)
    first_delta, pace = measured(shape, [*answers, unused])
    assert first_delta == [2, 3, 4, 5]  # started in [10 s, 30 s)
    assert pace == [2, 3, 4]  # started in [10 s, 20 s]: they end in the window at pace 1
    assert measured(burst(3, 400, 25, 5, 0.5, 3.0), answers) == (list(range(7)), list(range(7)))


def test_concurrency_counts_the_answers_open_over_the_window() -> None:
    s = 1_000_000
    answers = [answer(0, 10 * s), answer(5 * s, 15 * s), answer(10 * s, 20 * s)]
    figures = concurrency(answers, 5 * s, 15 * s)
    assert figures == {"mean": 2.0, "min": 2, "max": 2}


def test_prompts_give_answers_of_the_asked_length_in_deltas_of_five_characters() -> None:
    prompts = [prompt_for(demo_answer, 2000, seed) for seed in range(20)]
    assert len(set(prompts)) == 20
    for prompt in prompts:
        answer = demo_answer(prompt)
        assert len(answer) == 2000
        assert {len(p) for p in split_evenly(answer, 400)} == {5}


def test_targets_say_why_the_1000_step_is_missing() -> None:
    step = {"n": 500, "pace_rows": {"p99": 2.5}, "wal_per_answer_byte": 40.0}
    build = {"sweep": [step], "stopped": {"n": 500, "why": "p99 pace 2.5 > 2"}, "long": {}}
    results = {
        "scenarios": {
            "model_pace": {
                "plan": {"counts": [100, 500, 1000]},
                "databases": {"external": {"builds": {"current": build}}},
            }
        }
    }
    found = {t["name"].split(": ", 1)[1]: t for t in targets(results)}
    assert found["p99 pace"]["met"] is False
    assert "stopped at 500" in found["p99 pace"]["verdict"]
    assert found["WAL bytes per answer byte, worst step"]["measured"] == 40.0
    assert found["WAL bytes per answer byte, worst step"]["met"] is False


WALDUMP_STATS = Path(__file__).with_name("waldump-stats.txt")  # pg_waldump --stats=record


def test_waldump_stats_are_summed_by_resource_manager() -> None:
    found = waldump.parse(WALDUMP_STATS.read_text())
    assert found["records"] == 41
    assert (found["record_bytes"], found["fpi_bytes"]) == (3602, 68416)
    assert found["checkpoints"] == 1  # the REDO record is a checkpoint's start, not another one
    assert found["by_rmgr"]["Heap"] == {"records": 6, "record": 600, "fpi": 3404}
    assert next(iter(found["by_rmgr"])) == "Btree"  # the largest first
    assert found["by_type"]["Transaction/COMMIT"] == [2, 922, 0]
    assert waldump.lsn_text((0x3E << 32) + 0xC2E518) == "3E/C2E518"


def step(n: int, lag_p99: float, first_p99: float, reaped: int = 0) -> dict[str, object]:
    return {
        "n": n,
        "pace_rows": {"p99": 1.01},
        "lag": {"p99_ms": lag_p99},
        "lag_phases": {"after": {"p99_ms": 5.0}},
        "first_delta_ms": {"p50": first_p99 / 2, "p99": first_p99},
        "reaped": {"error/interrupted": reaped} if reaped else {},
        "wal_per_answer_byte": 20.0,
        "window": {"start_s": 10.0, "end_s": 30.0},
    }


def test_a_burst_feeds_no_target_and_is_said_beside_them() -> None:
    build = {"sweep": [step(1000, 40.0, 90.0)], "bursts": [step(1000, 450.0, 800.0, 2)]}
    results = {
        "scenarios": {
            "model_pace": {
                "plan": {"counts": [1000], "ramp_s": 0.5, "burst_window_s": 3.0},
                "databases": {"external": {"builds": {"current": build}}},
            }
        }
    }
    found = {t["name"].split(": ", 1)[1]: t for t in targets(results)}
    assert found["delivery lag p99"]["measured"] == 40.0 and found["delivery lag p99"]["met"]
    assert found["first delta p99"]["measured"] == 90.0
    assert found["healthy answers reaped, LEASE_SECONDS=3"]["measured"] == 0
    assert "window (10-30 s)" in found["delivery lag p99"]["source"]
    note = burst_note(results)
    assert "450 ms over its first 3 s" in note and "400 / 800 ms" in note
    assert "2 answer(s) reaped" in note


def test_a_server_histogram_between_two_scrapes_gives_bucket_upper_bounds() -> None:
    name = "orderly_flush_seconds"

    def sample(counts: tuple[int, int, int], total: float) -> dict[tuple[str, str], float]:
        edges = ('le="0.025"', 'le="0.25"', 'le="+Inf"')
        out = {(f"{name}_bucket", le): float(c) for le, c in zip(edges, counts, strict=True)}
        return {**out, (f"{name}_count", ""): float(counts[-1]), (f"{name}_sum", ""): total}

    found = histogram(sample((10, 10, 10), 0.1), sample((60, 108, 110), 5.1), name)
    assert found == {"count": 100, "mean": 0.05, "max_le": None, "p50_le": 0.025, "p99_le": None}
    found = histogram(sample((0, 0, 0), 0.0), sample((50, 100, 100), 3.0), name)
    assert (found["p50_le"], found["p99_le"]) == (0.025, 0.25)
