"""The load client, run as its own process: ``python -m bench.load`` reads one JSON spec on
stdin and writes JSON lines on stdout: phase markers while it runs (so that the harness can take
its own measurements at the right moments), then one ``{"phase": "result", ...}`` line.

Modes:

- ``closed``: N clients, each on one keep-alive connection, start a generation and read its
  stream to the terminal event, again and again (throughput).
- ``open``: generations started at a fixed rate whatever the answers do (open-loop pacing), each
  on an idle keep-alive connection or a new one; time to first event from the scheduled instant.
- ``listeners``: many connections attached to running messages' event streams, then idle.
- ``history``: one connection asking for a page of history, again and again (latency).
- ``resume``: read a stream on one server, hang up after event k, reconnect to another server
  with ``Last-Event-ID: k`` and time the first missed event.

Every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from bench.stats import summary_ms
from bench.wire import Connection, Exchange, request_bytes

Spec = dict[str, Any]
SSE = {"Accept": "text/event-stream"}


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def generation_request(port: int, project: str, token: str, text: str) -> bytes:
    body = json.dumps({"message": text}).encode()
    path = f"/api/projects/{project}/generations"
    return request_bytes("POST", path, port, token=token, body=body, headers=SSE)


def classify(ex: Exchange, errors: Counter[str]) -> bool:
    """True for a generation streamed to its ``done``; else count why not."""
    if ex.error is not None:
        errors["connection"] += 1
    elif ex.status != 200:
        errors[f"http_{ex.status}"] += 1
    elif ex.terminal != "done":
        errors[f"terminal_{ex.terminal}"] += 1
    elif not ex.contiguous or ex.first_event_id != 1:
        errors["event_ids"] += 1
    else:
        return True
    return False


async def closed_loop(spec: Spec) -> dict[str, Any]:
    port: int = spec["port"]
    requests = [
        generation_request(port, p, t, f"Benchmark question {i}: how are you today?")
        for i, (p, t) in enumerate(spec["targets"])
    ]
    rng = random.Random(spec.get("seed", 1))
    timeout = float(spec.get("timeout", 30.0))
    max_requests = int(spec["max_requests"])
    t0 = time.perf_counter()
    warm_end = t0 + float(spec["warmup"])
    end = warm_end + float(spec["duration"])
    latencies: list[float] = []
    first_events: list[float] = []
    errors: Counter[str] = Counter()
    counts = {"started": 0, "ok": 0, "in_window": 0}
    cpu: dict[str, float] = {}

    async def markers() -> None:
        await asyncio.sleep(max(0.0, warm_end - time.perf_counter()))
        cpu["start"] = time.process_time()
        emit({"phase": "measure_start"})
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        cpu["end"] = time.process_time()
        emit({"phase": "measure_end"})

    async def client() -> None:
        conn: Connection | None = None
        while time.perf_counter() < end and counts["started"] < max_requests:
            if conn is None or conn.closed:
                try:
                    conn = await Connection.open(port)
                except OSError:
                    errors["connect"] += 1
                    await asyncio.sleep(0.05)
                    continue
            counts["started"] += 1
            try:
                ex = await asyncio.wait_for(conn.request(rng.choice(requests)), timeout)
            except TimeoutError:
                errors["timeout"] += 1
                conn.abort()
                conn = None
                continue
            ok = classify(ex, errors)
            counts["ok"] += ok
            assert ex.ended_at is not None
            if ok and warm_end <= ex.ended_at <= end:
                counts["in_window"] += 1
                latencies.append(ex.ended_at - ex.sent)
                if ex.first_event_at is not None:
                    first_events.append(ex.first_event_at - ex.sent)
        if conn is not None:
            conn.close()

    marker_task = asyncio.create_task(markers())
    await asyncio.gather(*(client() for _ in range(int(spec["concurrency"]))))
    await marker_task
    duration = float(spec["duration"])
    return {
        "concurrency": spec["concurrency"],
        "duration_s": duration,
        "completed": counts["in_window"],
        "rate": round(counts["in_window"] / duration, 1),
        "started": counts["started"],
        "ok": counts["ok"],
        "errors": dict(errors),
        "latency": summary_ms(latencies),
        "first_event": summary_ms(first_events),
        "client_cpu_cores": round((cpu["end"] - cpu["start"]) / duration, 3),
    }


async def open_loop(spec: Spec) -> dict[str, Any]:
    port: int = spec["port"]
    requests = [
        generation_request(port, p, t, f"Benchmark question {i}: how are you today?")
        for i, (p, t) in enumerate(spec["targets"])
    ]
    rng = random.Random(spec.get("seed", 2))
    rate = float(spec["rate"])
    warmup = float(spec["warmup"])
    duration = float(spec["duration"])
    timeout = float(spec.get("timeout", 30.0))
    max_connections = int(spec.get("max_connections", 1000))
    total = int(rate * (warmup + duration))
    idle: list[Connection] = []
    opened = {"n": 0, "busy_max": 0, "busy": 0}
    errors: Counter[str] = Counter()
    from_schedule: list[float] = []
    from_send: list[float] = []
    first_deltas: list[float] = []
    totals: list[float] = []
    late: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float, measured: bool) -> None:
        conn = idle.pop() if idle else None
        if conn is None or conn.closed:
            if opened["n"] >= max_connections:
                errors["no_connection"] += 1
                return
            try:
                conn = await Connection.open(port)
            except OSError:
                errors["connect"] += 1
                return
            opened["n"] += 1
        opened["busy"] += 1
        opened["busy_max"] = max(opened["busy_max"], opened["busy"])
        try:
            ex = await asyncio.wait_for(conn.request(rng.choice(requests)), timeout)
        except TimeoutError:
            errors["timeout"] += 1
            conn.abort()
            return
        finally:
            opened["busy"] -= 1
        if not conn.closed:
            idle.append(conn)
        if not classify(ex, errors) or not measured:
            return
        assert ex.first_event_at is not None and ex.ended_at is not None
        from_schedule.append(ex.first_event_at - scheduled)
        from_send.append(ex.first_event_at - ex.sent)
        late.append(ex.sent - scheduled)
        totals.append(ex.ended_at - scheduled)
        if ex.first_delta_at is not None:
            first_deltas.append(ex.first_delta_at - scheduled)

    t0 = time.perf_counter() + 0.05
    cpu_start = 0.0
    measuring = False
    for i in range(total):
        scheduled = t0 + i / rate
        measured = scheduled >= t0 + warmup
        if measured and not measuring:
            measuring = True
            cpu_start = time.process_time()
            emit({"phase": "measure_start"})
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled, measured))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(set(tasks), timeout=timeout + 5)
    cpu_end = time.process_time()
    emit({"phase": "measure_end"})
    for conn in idle:
        conn.close()
    return {
        "rate": rate,
        "duration_s": duration,
        "measured": len(from_schedule),
        "errors": dict(errors),
        "connections_opened": opened["n"],
        "in_flight_max": opened["busy_max"],
        "first_event": summary_ms(from_schedule),
        "first_event_from_send": summary_ms(from_send),
        "first_delta": summary_ms(first_deltas),
        "complete": summary_ms(totals),
        "send_lateness": summary_ms(late),
        "client_cpu_cores": round((cpu_end - cpu_start) / duration, 3),
    }


async def listeners(spec: Spec) -> dict[str, Any]:
    port: int = spec["port"]
    items = [(path, token) for path, token in spec["paths"]]
    timeout = float(spec.get("timeout", 30.0))
    gate = asyncio.Semaphore(int(spec.get("batch", 200)))
    conns: list[Connection] = []
    errors: Counter[str] = Counter()
    first_events: list[float] = []

    async def attach(path: str, token: str) -> None:
        async with gate:
            try:
                conn = await asyncio.wait_for(Connection.open(port), timeout)
            except (OSError, TimeoutError):
                errors["connect"] += 1
                return
            raw = request_bytes("GET", path, port, token=token, headers=SSE)
            done = conn.request(raw)
            try:
                await asyncio.wait_for(conn.first_event(), timeout)
            except TimeoutError:
                errors["first_event_timeout"] += 1
                conn.abort()
                return
            ex = conn.current
            if ex is None:  # ended already: not a listener any more
                result = done.result() if done.done() else None
                errors[f"ended_{result.status if result else 0}"] += 1
                conn.close()
                return
            if ex.first_event_at is not None:
                first_events.append(ex.first_event_at - ex.sent)
            conns.append(conn)

    started = time.perf_counter()
    await asyncio.gather(*(attach(p, t) for p, t in items))
    attach_seconds = time.perf_counter() - started
    emit({"phase": "connected", "open": len(conns), "errors": dict(errors)})
    await asyncio.sleep(float(spec.get("settle", 2.0)))

    def pings() -> int:
        return sum(ex.pings for c in conns if (ex := c.current) is not None)

    def still_open() -> int:
        return sum(1 for c in conns if not c.closed and c.current is not None)

    cpu_start, pings_start = time.process_time(), pings()
    emit({"phase": "idle_start", "open": still_open()})
    idle = float(spec["idle"])
    await asyncio.sleep(idle)
    cpu_end, pings_end = time.process_time(), pings()
    emit({"phase": "idle_end", "open": still_open()})
    open_at_end = still_open()
    linger = float(spec.get("linger", 0.0))
    if linger > 0:  # the streams stay open a while longer (the harness profiles the server)
        await asyncio.sleep(linger)
    for conn in conns:
        conn.abort()
    return {
        "requested": len(items),
        "attached": len(conns),
        "open_after_idle": open_at_end,
        "errors": dict(errors),
        "attach_seconds": round(attach_seconds, 2),
        "first_event": summary_ms(first_events),
        "idle_seconds": idle,
        "pings_received": pings_end - pings_start,
        "client_cpu_cores_idle": round((cpu_end - cpu_start) / idle, 4),
        "client_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


async def history(spec: Spec) -> dict[str, Any]:
    port: int = spec["port"]
    raw = request_bytes("GET", spec["path"], port, token=spec["token"])
    deadline = time.perf_counter() + float(spec["max_seconds"])
    conn = await Connection.open(port)
    first = await conn.request(raw, keep_body=True)
    page = json.loads(bytes(first.body)) if first.status == 200 else {}
    messages = page.get("messages", [])
    check = {
        "status": first.status,
        "messages": len(messages),
        "has_more": page.get("has_more"),
        "last_sequence": messages[-1]["sequence"] if messages else None,
        "bytes": len(first.body),
    }
    for _ in range(int(spec.get("warmup", 20))):
        await conn.request(raw)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    cpu_start = time.process_time()
    started = time.perf_counter()
    for _ in range(int(spec["requests"])):
        if time.perf_counter() > deadline:
            break
        if conn.closed:
            conn = await Connection.open(port)
        ex = await asyncio.wait_for(conn.request(raw), 30)
        if ex.ok:
            assert ex.ended_at is not None
            latencies.append(ex.ended_at - ex.sent)
        else:
            errors[f"http_{ex.status}" if ex.error is None else "connection"] += 1
    elapsed = time.perf_counter() - started
    conn.close()
    return {
        "check": check,
        "latency": summary_ms(latencies),
        "errors": dict(errors),
        "requests_per_second": round(len(latencies) / elapsed, 1) if elapsed else None,
        "client_cpu_cores": round((time.process_time() - cpu_start) / elapsed, 3)
        if elapsed
        else None,
    }


async def resume(spec: Spec) -> dict[str, Any]:
    port_a: int = spec["port_a"]
    port_b: int = spec["port_b"]
    token: str = spec["token"]
    project: str = spec["project"]
    cut = int(spec["cut_after"])
    gap = float(spec["gap"])
    timeout = float(spec.get("timeout", 30.0))
    deadline = time.perf_counter() + float(spec["max_seconds"])
    gate = asyncio.Semaphore(int(spec.get("concurrency", 4)))
    results: dict[str, list[float]] = {"other_worker": [], "same_worker": []}
    errors: Counter[str] = Counter()

    async def sample(i: int) -> None:
        async with gate:
            if time.perf_counter() > deadline:
                errors["skipped_deadline"] += 1
                return
            where = "other_worker" if i % 4 else "same_worker"
            a = await Connection.open(port_a)
            raw = generation_request(port_a, project, token, f"Resume sample {i}, please.")
            first = await asyncio.wait_for(a.request(raw, stop_after_id=cut), timeout)
            a.abort()
            if not first.cut or first.start_data is None:
                errors["not_cut"] += 1
                return
            message_id = json.loads(first.start_data)["assistant_message"]["id"]
            await asyncio.sleep(gap)
            port = port_b if where == "other_worker" else port_a
            path = f"/api/projects/{project}/messages/{message_id}/events"
            headers = {**SSE, "Last-Event-ID": str(cut)}
            again = request_bytes("GET", path, port, token=token, headers=headers)
            t0 = time.perf_counter()
            b = await Connection.open(port)
            ex = await asyncio.wait_for(b.request(again), timeout)
            b.close()
            if (
                not ex.ok
                or ex.first_event_at is None
                or ex.first_event_id != cut + 1
                or not ex.contiguous
                or ex.terminal != "done"
            ):
                errors["bad_resume"] += 1
                return
            results[where].append(ex.first_event_at - t0)

    await asyncio.gather(*(sample(i) for i in range(int(spec["samples"]))))
    return {
        "cut_after_event": cut,
        "gap_s": gap,
        "other_worker": summary_ms(results["other_worker"]),
        "same_worker": summary_ms(results["same_worker"]),
        "errors": dict(errors),
    }


MODES: dict[str, Callable[[Spec], Coroutine[Any, Any, dict[str, Any]]]] = {
    "closed": closed_loop,
    "open": open_loop,
    "listeners": listeners,
    "history": history,
    "resume": resume,
}


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _run(main: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    async def wrapped() -> dict[str, Any]:
        return await main

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(wrapped())
    return uvloop.run(wrapped())


def main() -> int:
    spec: Spec = json.loads(sys.stdin.read())
    _raise_nofile()
    result = _run(MODES[spec["mode"]](spec))
    emit({"phase": "result", **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
