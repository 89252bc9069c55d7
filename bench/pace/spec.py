"""The model-pace client's spec, one file read by both clients (``client.c``, ``client.py``):
a header line ``host port delta_us spread_us timeout_ms slots stop_us window_start_us
window_end_us count``, then ``count`` records (answers), each ``<length>\\n`` and that many bytes
of a whole HTTP request.

Answer ``j`` belongs to slot ``j % slots``, whose answers run one after another. Slot ``i``
starts its first answer at ``spread_us * i / slots`` microseconds after the start, and starts no
further answer at or after ``stop_us`` (-1: each slot runs all of its answers; those left are
*unused*). The window, ``[window_start_us, window_end_us)`` (-1: until every answer has ended),
is where the harness measures. ``delta_us`` is the generator's pace (the lag's schedule);
``timeout_ms`` ends the run whatever is still open.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Spec:
    host: str
    port: int
    delta_us: int
    spread_us: int
    timeout_ms: int
    requests: list[bytes]
    slots: int = 0  # 0: one answer per slot
    stop_us: int = -1
    window_start_us: int = 0
    window_end_us: int = -1

    @property
    def slot_count(self) -> int:
        return self.slots or len(self.requests)


def read_spec(path: Path) -> Spec:
    data = path.read_bytes()
    header, _, rest = data.partition(b"\n")
    host, *numbers = header.split()
    port, delta_us, spread_us, timeout_ms, slots, stop_us, w_start, w_end, count = map(int, numbers)
    requests, pos = [], 0
    for _ in range(count):
        nl = rest.index(b"\n", pos)
        size = int(rest[pos:nl])
        requests.append(rest[nl + 1 : nl + 1 + size])
        pos = nl + 1 + size
    return Spec(
        host.decode(),
        port,
        delta_us,
        spread_us,
        timeout_ms,
        requests,
        slots,
        stop_us,
        w_start,
        w_end,
    )


def write_spec(path: Path, spec: Spec) -> None:
    header = (
        f"{spec.host} {spec.port} {spec.delta_us} {spec.spread_us} {spec.timeout_ms} "
        f"{spec.slot_count} {spec.stop_us} {spec.window_start_us} {spec.window_end_us} "
        f"{len(spec.requests)}\n"
    )
    with path.open("wb") as out:
        out.write(header.encode())
        for raw in spec.requests:
            out.write(f"{len(raw)}\n".encode())
            out.write(raw)
