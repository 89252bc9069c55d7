"""The model-pace load client in Python (asyncio protocol on uvloop): the fallback of
``client.c`` when no C compiler is there, and the yardstick the report compares it with.
``python -m bench.pace.client SPEC``.

SPEC is a file: a header line ``host port delta_us ramp_us timeout_ms count``, then ``count``
records, each ``<length>\\n`` and that many bytes of a whole HTTP request. Stream ``i`` is
connected at ``ramp_us * i / (count - 1)`` microseconds after the start and read to its terminal
event. Output, on stdout, times in microseconds from the client's start (-1: never):

- ``measure_start C`` when the first stream is about to connect; ``measure_end T C`` when every
  stream has ended (or the timeout passed); C: the client's CPU time (user + system) so far.
  Then it waits for a line on stdin (the harness measures its CPU while it is still there);
- per stream ``A i status error terminal start sent first_event first_delta last_delta ended
  deltas events bytes contiguous`` (error: 0 none, 1 connect, 2 read, 3 end of stream without a
  terminal event, 4 HTTP status, 5 bad response, 6 timeout, 7 write);
- ``H lag_us count``: the delivery lag of every delta after the first, in 100 us buckets (the
  bucket's lower edge): its arrival minus the stream's first delta plus ``k * delta_us``;
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

E_OK, E_CONNECT, E_READ, E_EOF, E_HTTP, E_BAD, E_TIMEOUT, E_WRITE = range(8)
LAG_STEP_US = 100
TERMINAL = {b"done": "done", b"error": "error", b"cancelled": "cancelled"}


@dataclass(frozen=True, slots=True)
class Spec:
    host: str
    port: int
    delta_us: int
    ramp_us: int
    timeout_ms: int
    requests: list[bytes]


def read_spec(path: Path) -> Spec:
    data = path.read_bytes()
    header, _, rest = data.partition(b"\n")
    host, port, delta_us, ramp_us, timeout_ms, count = header.split()
    requests, pos = [], 0
    for _ in range(int(count)):
        nl = rest.index(b"\n", pos)
        size = int(rest[pos:nl])
        requests.append(rest[nl + 1 : nl + 1 + size])
        pos = nl + 1 + size
    return Spec(host.decode(), int(port), int(delta_us), int(ramp_us), int(timeout_ms), requests)


def write_spec(path: Path, spec: Spec) -> None:
    header = (
        f"{spec.host} {spec.port} {spec.delta_us} {spec.ramp_us} {spec.timeout_ms} "
        f"{len(spec.requests)}\n"
    )
    with path.open("wb") as out:
        out.write(header.encode())
        for raw in spec.requests:
            out.write(f"{len(raw)}\n".encode())
            out.write(raw)


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
    last_id: int = -1

    def line(self, i: int) -> str:
        return (
            f"A {i} {self.status} {self.error} {self.terminal} {self.start} {self.sent} "
            f"{self.first_event} {self.first_delta} {self.last_delta} {self.ended} {self.deltas} "
            f"{self.events} {self.bytes} {self.contiguous}"
        )


@dataclass
class Reader(asyncio.Protocol):
    """One stream: the head, the chunked body, and the SSE frames' ``id:``/``event:`` lines."""

    stream: Stream
    request: bytes
    clock: Clock
    lags: Counter[int]
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
        if name == b"delta":
            if s.deltas == 0:
                s.first_delta = now
            else:
                lag = now - (s.first_delta + s.deltas * self.delta_us)
                self.lags[lag // LAG_STEP_US * LAG_STEP_US] += 1
            s.deltas += 1
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


async def run(spec: Spec) -> tuple[list[Stream], Counter[int]]:
    loop = asyncio.get_running_loop()
    clock = Clock()
    lags: Counter[int] = Counter()
    streams = [Stream() for _ in spec.requests]
    count = len(spec.requests)
    print(f"measure_start {cpu_us()}", flush=True)

    async def one(i: int) -> None:
        due = spec.ramp_us * i / (count - 1) if count > 1 else 0
        await asyncio.sleep(max(0.0, (due - clock.now()) / 1e6))
        stream = streams[i]
        stream.start = clock.now()
        ended: asyncio.Future[None] = loop.create_future()
        try:
            await loop.create_connection(
                lambda: Reader(stream, spec.requests[i], clock, lags, spec.delta_us, ended),
                spec.host,
                spec.port,
            )
        except OSError:
            stream.error, stream.ended = E_CONNECT, clock.now()
            return
        await ended

    tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
    _done, pending = await asyncio.wait(tasks, timeout=spec.timeout_ms / 1000)
    for task in pending:
        task.cancel()
    now = clock.now()
    for stream in streams:
        if stream.ended < 0:
            stream.error, stream.ended = E_TIMEOUT, now
    print(f"measure_end {now} {cpu_us()}", flush=True)
    return streams, lags


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

        streams, lags = uvloop.run(run(spec))
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        streams, lags = asyncio.run(run(spec))
    sys.stdin.readline()  # the harness reads our CPU time in /proc before we go
    out = [s.line(i) for i, s in enumerate(streams)]
    out += [f"H {lag} {n}" for lag, n in sorted(lags.items())]
    out.append(f"R {cpu_us()} {peak_rss_kib()}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
