"""What the load cost, in the model-pace report: CPU per event of the server, PostgreSQL and the
client over each steady step's window, and the client's own cost beside the Python client's."""

from __future__ import annotations

from bench.pace.results import R, databases_run
from bench.pace.results import n_ as _n


def cpu_table(steps: list[R]) -> list[str]:
    rows = [
        "Over each steady step's window:\n",
        "| N | cores: server / postgres (this database's backends) / client / other "
        "| µs per event: server / postgres (this database's backends) / client | per worker "
        "| busy sessions of other databases |",
        "|---|---|---|---|---|",
    ]
    for s in steps:
        c = s["cpu"]
        cores, per = c["cores"], c["us_per_event"]
        workers = ", ".join(f"{v:.2f}" for v in (c.get("workers_cores") or {}).values())
        rows.append(
            f"| {s['n']:,} | {_n(cores.get('server'), 2)} / {_n(cores.get('postgres'), 2)} "
            f"({_n(c.get('postgres_own_backends_cores'), 2)}) / {_n(cores.get('client'), 3)} "
            f"/ {_n(c.get('other_cores'), 2)} "
            f"| {_n(per.get('server'), 1)} / {_n(per.get('postgres'), 1)} "
            f"({_n(per.get('postgres_own_backends'), 1)}) "
            f"/ {_n(c.get('client_own_us_per_event'), 2)} "
            f"| {workers or '—'} | {_n(c.get('other_active_backends'))} |"
        )
    return [*rows, ""]


def client(pace: R) -> list[str]:
    used = pace.get("client") or {}
    out = ["### The client and what it cost\n"]
    kind = {"c": "a C program", "python": "the Python client"}.get(used.get("kind", ""), "?")
    text = (
        f"The load came from {kind} ({used.get('note', '')}): one process, non-blocking "
        "sockets on epoll, one connection per answer (a slot opens a new one for its next); "
        "it counts and times every delta (the lags by phase in 0.1 ms buckets, by second in "
        "1 ms ones), parses the HTTP head, the chunked "
        "body and each SSE frame's `id:` and `event:` lines, never the JSON, and takes the "
        "clock once per read (the C client pauses 1 ms after each wake-up with work, so that "
        "one wake-up reads many streams: every arrival is timed at most that late). Its own "
        "CPU per event over the steady steps' windows (µs, by N):"
    )
    busiest: R | None = None
    for key, db in databases_run(pace):
        sweep = ((db.get("builds") or {}).get("current") or {}).get("sweep", [])
        measured = [s for s in sweep if s["cpu"].get("client_own_us_per_event") is not None]
        by_step = ", ".join(
            f"{s['n']:,}: {s['cpu']['client_own_us_per_event']:.2f}" for s in measured
        )
        text += f" {key}, {by_step};" if by_step else ""
        for s in measured:
            if busiest is None or s["events_per_s"] > busiest["events_per_s"]:
                busiest = s
    if busiest is not None:
        cores = busiest["cpu"]["client_own_us_per_event"] * busiest["events_per_s"] / 1e6
        text += (
            f" at the busiest step ({busiest['events_per_s']:,} events/s) it took {cores:.3f} "
            "of a core."
        )
    compared = [
        (b["sweep"][0], b["python_client"])
        for _k, db in databases_run(pace)
        for b in (db.get("builds") or {}).values()
        if b.get("python_client") and b.get("sweep")
    ]
    if compared:
        c, py = compared[0]
        c_us = c["cpu"].get("client_own_us_per_event")
        py_us = py["cpu"].get("client_own_us_per_event")
        text += (
            f" The same step of {c['n']:,} answers with the Python client "
            f"(`bench/pace/client.py`, an asyncio protocol on uvloop): {_n(py_us, 2)} µs per "
            f"event against {_n(c_us, 2)}"
            + (
                f"; at that cost, 40,000 events/s would take {py_us * 0.04:.2f} of a core from "
                "the two that the server and PostgreSQL share."
                if py_us
                else "."
            )
        )
    return [*out, text + "\n"]
