"""The model-pace load client in Python (asyncio protocol on uvloop): the fallback of
``client.c`` when no C compiler is there, and the yardstick the report compares it with.
``python -m bench.pace.client SPEC``; SPEC (the answers, their slots, the stop time and the
window) is described in ``bench/pace/spec.py``. Each slot runs its answers one after another,
each read to its terminal event, the next started as soon as the previous ends; the lags and
counts of what arrives in the window are kept apart. A *delta* below is any piece of an answer
streamed at the model's pace: a ``delta`` event, or a ``reasoning`` one. Output, on stdout,
times in microseconds from the client's start (-1: never), C the client's CPU time (user +
system) so far:

- ``measure_start C`` when the first stream is about to connect; ``window_start T C`` and
  ``window_end T C`` when the window's edges are crossed (the harness measures CPU and WAL
  between them); ``measure_end T C`` when every answer has ended (or the timeout passed). Then
  it waits for a line on stdin (the harness measures its CPU while it is still there);
- per answer ``A j status error terminal start sent first_event first_delta last_delta ended
  deltas events bytes contiguous window_deltas`` (error: 0 none, 1 connect, 2 read, 3 end of
  stream without a terminal event, 4 HTTP status, 5 bad response, 6 timeout, 7 write, 8 unused:
  never sent, its slot had stopped; window_deltas: its deltas that arrived in the window);
- ``H phase lag_us count``: the delivery lag of every delta after the first, its arrival minus
  the stream's first delta plus ``k * delta_us``, in 100 us buckets (the bucket's lower edge;
  -1 s and 120 s take the ends), by when it arrived: phase 0 before the window, 1 in it, 2 after;
- ``S second lag_us count``: the same lags by the second (from the start) in which they arrived,
  in coarser buckets: below 0 (edge -1000), 1 ms steps to 1 s, 100 ms steps to 120 s;
- ``W events deltas``: the events and the deltas that arrived in the window;
- ``R cpu_us peak_rss_kib``: the client's CPU (user + system) and peak memory at the end.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from bench.pace.spec import Spec, read_spec

E_OK, E_CONNECT, E_READ, E_EOF, E_HTTP, E_BAD, E_TIMEOUT, E_WRITE, E_UNUSED = range(9)
LAG_STEP_US = 100
LAG_MIN_US = -1_000_000
LAG_MAX_US = LAG_MIN_US + (1_210_000 - 1) * LAG_STEP_US  # the client.c histogram's ends
SECONDS = 600  # the lag by the second of arrival; the last second takes the rest
TERMINAL = {b"done": "done", b"error": "error", b"cancelled": "cancelled"}
# The pieces of an answer, each at the model's pace: its text, and its reasoning before it.
PIECES = (b"delta", b"reasoning")


@dataclass(slots=True)
class Stream:
    status: int = 0
    error: int = E_OK
    terminal: str = "-"
    start: int = -1
    sent: int = -1
    first_event: int = -1
    first_delta: int = -1
    last_delta: int = -1
    ended: int = -1
    deltas: int = 0
    events: int = 0
    bytes: int = 0
    contiguous: int = 1
    window_deltas: int = 0
    last_id: int = -1

    def line(self, i: int) -> str:
        return (
            f"A {i} {self.status} {self.error} {self.terminal} {self.start} {self.sent} "
            f"{self.first_event} {self.first_delta} {self.last_delta} {self.ended} {self.deltas} "
            f"{self.events} {self.bytes} {self.contiguous} {self.window_deltas}"
        )


def coarse_edge(lag: int) -> int:
    """The lower edge of a lag's bucket in the lags by second (as client.c has them)."""
    if lag < 0:
        return -1000
    if lag < 1_000_000:
        return lag // 1000 * 1000
    return 1_000_000 + min((lag - 1_000_000) // 100_000, 1189) * 100_000


@dataclass
class Tally:
    """What every stream adds to: the lags by phase and by second of arrival, the window's
    counts. Phase 0: before the window, 1: in it, 2: after it."""

    window_start: int
    window_end: int
    lags: list[Counter[int]] = field(default_factory=lambda: [Counter() for _ in range(3)])
    by_second: Counter[tuple[int, int]] = field(default_factory=Counter)
    window_events: int = 0
    window_deltas: int = 0

    def phase(self, now: int) -> int:
        if now < self.window_start:
            return 0
        return 1 if self.window_end < 0 or now < self.window_end else 2

    def lag(self, lag: int, now: int, phase: int) -> None:
        edge = min(max(lag // LAG_STEP_US * LAG_STEP_US, LAG_MIN_US), LAG_MAX_US)
        self.lags[phase][edge] += 1
        self.by_second[min(now // 1_000_000, SECONDS - 1), coarse_edge(lag)] += 1

    def lines(self) -> list[str]:
        out = [f"H {p} {lag} {n}" for p, c in enumerate(self.lags) for lag, n in sorted(c.items())]
        out += [f"S {t} {lag} {n}" for (t, lag), n in sorted(self.by_second.items())]
        out.append(f"W {self.window_events} {self.window_deltas}")
        return out


@dataclass
class Reader(asyncio.Protocol):
    """One stream: the head, the chunked body, and the SSE frames' ``id:``/``event:`` lines."""

    stream: Stream
    request: bytes
    clock: Clock
    tally: Tally
    delta_us: int
    ended: asyncio.Future[None]
    transport: asyncio.Transport | None = None
    buf: bytearray = field(default_factory=bytearray)
    sse: bytearray = field(default_factory=bytearray)
    in_head: bool = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.stream.sent = self.clock.now()
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish(E_READ if exc else E_EOF)

    def data_received(self, data: bytes) -> None:
        now = self.clock.now()
        self.stream.bytes += len(data)
        self.buf += data
        if self.in_head and not self.head(now):
            return
        self.chunks(now)

    def head(self, now: int) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buf[:end]).lower()
        del self.buf[: end + 4]
        self.in_head = False
        self.stream.status = int(head[9:12]) if head.startswith(b"http/1.") else 0
        if self.stream.status != 200:
            self.finish(E_HTTP if self.stream.status else E_BAD)
            return False
        if b"\ntransfer-encoding: chunked" not in head:
            self.finish(E_BAD)
            return False
        return True

    def chunks(self, now: int) -> None:
        buf, pos = self.buf, 0
        while self.stream.ended < 0:
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(buf[pos:nl].split(b";", 1)[0], 16)
            if size == 0:
                self.finish(E_EOF)
                return
            if len(buf) < nl + 2 + size + 2:
                break
            self.sse += buf[nl + 2 : nl + 2 + size]
            pos = nl + 2 + size + 2
            self.frames(now)
        del buf[:pos]

    def frames(self, now: int) -> None:
        sse, pos = self.sse, 0
        while self.stream.ended < 0:
            end = sse.find(b"\n\n", pos)
            if end < 0:
                break
            event_id, name = -1, b""
            while pos < end:  # the frame's lines, in any order; comments and retry: skipped
                nl = sse.find(b"\n", pos, end)
                nl = end if nl < 0 else nl
                if sse.startswith(b"id: ", pos):
                    event_id = int(sse[pos + 4 : nl])
                elif sse.startswith(b"event: ", pos):
                    name = bytes(sse[pos + 7 : nl])
                pos = nl + 1
            if event_id >= 0:
                self.event(event_id, name, now)
            pos = end + 2
        del sse[:pos]

    def event(self, event_id: int, name: bytes, now: int) -> None:
        s = self.stream
        if s.events == 0:
            s.first_event = now
            s.contiguous = int(event_id == 1)
        elif event_id != s.last_id + 1:
            s.contiguous = 0
        s.last_id = event_id
        s.events += 1
        phase = self.tally.phase(now)
        self.tally.window_events += phase == 1
        if name in PIECES:
            if s.deltas == 0:
                s.first_delta = now
            else:
                self.tally.lag(now - (s.first_delta + s.deltas * self.delta_us), now, phase)
            s.deltas += 1
            s.window_deltas += phase == 1
            self.tally.window_deltas += phase == 1
            s.last_delta = now
        elif name in TERMINAL:
            s.terminal = TERMINAL[name]
            self.finish(E_OK)

    def finish(self, error: int) -> None:
        if self.stream.ended >= 0:
            return
        self.stream.error = error
        self.stream.ended = self.clock.now()
        if self.transport is not None:
            self.transport.close()
        if not self.ended.done():
            self.ended.set_result(None)


class Clock:
    def __init__(self) -> None:
        self.t0 = time.perf_counter_ns()

    def now(self) -> int:
        return (time.perf_counter_ns() - self.t0) // 1000


class Edges:
    """Says when the window's edges are crossed (``window_start``, ``window_end``)."""

    def __init__(self, spec: Spec, clock: Clock) -> None:
        self.spec, self.clock, self.said = spec, clock, 0

    async def run(self) -> None:
        await self.at(self.spec.window_start_us)
        self.say()
        if self.spec.window_end_us >= 0:
            await self.at(self.spec.window_end_us)
            self.say()

    async def at(self, due_us: int) -> None:
        await asyncio.sleep(max(0.0, (due_us - self.clock.now()) / 1e6))

    def say(self) -> None:
        name = ("window_start", "window_end")[self.said]
        print(f"{name} {self.clock.now()} {cpu_us()}", flush=True)
        self.said += 1

    def finish(self) -> None:
        while self.said < 2:
            self.say()


async def run(spec: Spec) -> tuple[list[Stream], Tally]:
    loop = asyncio.get_running_loop()
    clock = Clock()
    tally = Tally(spec.window_start_us, spec.window_end_us)
    streams = [Stream() for _ in spec.requests]
    count, slots = len(spec.requests), spec.slot_count
    print(f"measure_start {cpu_us()}", flush=True)
    edges = Edges(spec, clock)
    edges_task = asyncio.ensure_future(edges.run())

    async def one(j: int) -> None:
        stream = streams[j]
        stream.start = clock.now()
        ended: asyncio.Future[None] = loop.create_future()
        try:
            await loop.create_connection(
                lambda: Reader(stream, spec.requests[j], clock, tally, spec.delta_us, ended),
                spec.host,
                spec.port,
            )
        except OSError:
            stream.error, stream.ended = E_CONNECT, clock.now()
            return
        await ended

    async def slot(i: int) -> None:
        await asyncio.sleep(max(0.0, (spec.spread_us * i / slots - clock.now()) / 1e6))
        for j in range(i, count, slots):
            if j != i and 0 <= spec.stop_us <= clock.now():
                for k in range(j, count, slots):
                    streams[k].error = E_UNUSED
                return
            await one(j)

    tasks = [asyncio.ensure_future(slot(i)) for i in range(slots)]
    _done, pending = await asyncio.wait(tasks, timeout=spec.timeout_ms / 1000)
    for task in pending:
        task.cancel()
    edges_task.cancel()
    now = clock.now()
    for stream in streams:  # as client.c: an answer never started has no end time
        if stream.ended < 0 and stream.error != E_UNUSED:
            stream.error, stream.ended = E_TIMEOUT, (now if stream.start >= 0 else -1)
    edges.finish()
    print(f"measure_end {now} {cpu_us()}", flush=True)
    return streams, tally


def cpu_us() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round((usage.ru_utime + usage.ru_stime) * 1e6)


def peak_rss_kib() -> int:
    """VmHWM: unlike ru_maxrss, it does not carry the peak of the process that exec'd us."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def main(argv: list[str]) -> int:
    spec = read_spec(Path(argv[1]))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        streams, tally = uvloop.run(run(spec))
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        streams, tally = asyncio.run(run(spec))
    sys.stdin.readline()  # the harness reads our CPU time in /proc before we go
    out = [s.line(i) for i, s in enumerate(streams)]
    out += tally.lines()
    out.append(f"R {cpu_us()} {peak_rss_kib()}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
