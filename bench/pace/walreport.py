"""The model-pace report's WAL: per answer byte with and without full-page images, by resource
manager, for the steady steps (window and whole step) and the long-answer pair."""

from __future__ import annotations

from typing import Any

from bench.pace.results import TARGET_N, R, current_builds, target_step
from bench.pace.results import n_ as _n

RMGR_ROWS = 8


def section(pace: R) -> list[str]:
    builds = current_builds(pace)
    if not builds:
        return []
    out = ["### WAL: records and full-page images\n", _intro(builds)]
    out += _steady(builds)
    out += _pair(builds)
    out += _by_rmgr(*builds[-1][1:])
    return out


def _intro(builds: list[tuple[str, R, R]]) -> str:
    missing = [
        f"{db.get('label', key)}: {b['wal_records']}" for key, db, b in builds if "wal_records" in b
    ]
    return (
        "The headline WAL per answer byte (the target's) is the WAL position's advance; "
        "`pg_waldump --stats=record` over the same range splits it into record bytes and "
        "full-page images (FPI) by resource manager, where the harness can read the WAL files "
        "(a temporary replication slot keeps them while a step runs). *Without FPI*: the total "
        "less the image bytes (records, page headers, alignment). FPIs depend on where "
        "checkpoints fall, not on the service alone: after a checkpoint, the first change to "
        "each page already on disk logs the whole page (where `full_page_writes` is on). The "
        "harness keeps a `CHECKPOINT` before every step, so that all of them start at the same "
        "place of the checkpoint cycle and none depends on when the last timed one fell (the "
        "table counts the checkpoints inside each window). It no longer tilts the long-answer "
        "pair: both sides now run as long at the same rate, so they pay their first touches "
        "over the same time and about the same bytes; without it, a timed checkpoint inside "
        "one side's run and not the other's would decide their ratio. A steady step pays "
        "most of its first touches in its warm-up, so its window shows the steady state one "
        "answer duration after a checkpoint, and its whole step the cost with the "
        "checkpoint's images in. A deployment checkpoints every `checkpoint_timeout` (5 min "
        "by default) or `max_wal_size` of WAL, so its FPI share lies between the two, nearer "
        "the window's. The WAL per answer byte also falls when the flusher falls behind: a late "
        "flush puts more events in each row (see the messages per flush above). On a server "
        "shared with other databases the range holds their WAL too "
        "(`pg_waldump` cannot tell databases apart in its statistics; the CPU table counts "
        "their busy sessions)." + (f" Not split here: {'; '.join(missing)}." if missing else "")
    ) + "\n"


def _steady(builds: list[tuple[str, R, R]]) -> list[str]:
    out = [
        "| database | N | window: WAL B per answer byte | without FPI | FPI | checkpoints in "
        "the window | whole step: WAL B per answer byte | without FPI | FPI |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _key, db, build in builds:
        for s in build.get("sweep", []):
            win, step = s["wal"]["window"], s["wal"]["step"]
            out.append(
                f"| {db.get('label', '?')} | {s['n']:,} | {_wal(win)} "
                f"| {_n(win.get('checkpoints'))} | {_wal(step)} |"
            )
    return [*out, ""]


def _wal(entry: R) -> str:
    no_fpi = entry.get("per_answer_byte_without_fpi")
    return (
        f"{_n(entry.get('per_answer_byte'), 1)} | {_n(no_fpi, 1)} "
        f"| {_n(entry.get('fpi_per_answer_byte'), 1)}"
    )


def _pair(builds: list[tuple[str, R, R]]) -> list[str]:
    out = [
        "The long-answer pair, each side a whole step (from just after its `CHECKPOINT` to its "
        "last answer's end), at the same N, delta rate and duration:\n",
        "| database | side | answers | answer | step s | events/s | WAL B per answer byte "
        "| without FPI | FPI |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for _key, db, build in builds:
        pair = build.get("long") or {}
        if not pair.get("long") or not pair.get("short"):
            continue
        for side in ("short", "long"):
            s = pair[side]
            out.append(
                f"| {db.get('label', '?')} | {side} | {s['answers']:,} "
                f"| {_n(s['mean_answer_bytes'])} B | {_n(s['window']['seconds'], 1)} "
                f"| {_n(s['events_per_s'])} | {_wal(s['wal']['step'])} |"
            )
        ratios.append(
            f"{db.get('label', '?')}: **{_n(pair.get('wal_ratio_long_to_short'), 2)}** "
            f"(without FPI {_n(_ratio(pair, 'per_answer_byte_without_fpi'), 2)})"
        )
    if not ratios:
        return []
    out.append(
        "\nWAL per answer byte, long over short (a write cost per event that does not grow "
        "with the answer gives 1.0): " + "; ".join(ratios) + ".\n"
    )
    return out


def _ratio(pair: R, key: str) -> float | None:
    short, long = (pair[k]["wal"]["step"].get(key) for k in ("short", "long"))
    return round(long / short, 3) if short and long else None


def _by_rmgr(db: R, build: R) -> list[str]:
    steady, _burst = target_step(build, TARGET_N)
    columns: list[tuple[str, Any]] = []
    if steady is not None:
        columns.append((f"steady {steady['n']:,}, window", steady["wal"]["window"]))
    pair = build.get("long") or {}
    columns += [(f"pair, {k}", pair[k]["wal"]["step"]) for k in ("short", "long") if pair.get(k)]
    columns = [(name, c) for name, c in columns if c.get("by_rmgr")]
    if not columns:
        return []
    totals: dict[str, int] = {}
    for _name, c in columns:
        for rmgr, e in c["by_rmgr"].items():
            totals[rmgr] = totals.get(rmgr, 0) + e["record"] + e["fpi"]
    names = sorted(totals, key=lambda r: -totals[r])[:RMGR_ROWS]
    out = [
        f"By resource manager, {db.get('label', '?')}: bytes of WAL per answer byte, records "
        "+ full-page images (the largest first; the rest is page headers, alignment and the "
        "smaller managers):\n",
        "| resource manager | " + " | ".join(name for name, _c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for rmgr in names:
        cells = []
        for _name, c in columns:
            e = c["by_rmgr"].get(rmgr)
            cells.append(f"{e['record_per_byte']:.2f} + {e['fpi_per_byte']:.2f}" if e else "—")
        out.append(f"| {rmgr} | " + " | ".join(cells) + " |")
    return [*out, ""]
