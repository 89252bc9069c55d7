"""The model-pace load clients (C and Python) read the same streams the same way: chunks and
frames cut at awkward places, pings and the retry line skipped, a refusal, a stream cut short;
and they run slots the same way: answers back to back, none started after the stop time, the
lags of what arrived in the window kept apart."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.pace.run import Client, ClientRun, build, parse
from bench.pace.spec import Spec, write_spec

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
DELTAS = 5
REPO_ROOT = Path(__file__).resolve().parents[2]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def stream(terminal: bool) -> bytes:
    frames = [b"retry: 2000\n\n", b'id: 1\nevent: start\ndata: {"a":1}\n\n', b": ping\n\n"]
    frames += [b'id: %d\nevent: delta\ndata: {"text":"abcde"}\n\n' % (i + 2) for i in range(DELTAS)]
    if terminal:
        frames.append(b'id: %d\nevent: done\ndata: {"message":{}}\n\n' % (DELTAS + 2))
    # Two frames in one chunk, then one frame split over two chunks.
    chunks = [chunk(frames[0] + frames[1]), *(chunk(f) for f in frames[2:])]
    half = len(frames[-1]) // 2
    chunks[-1:] = [chunk(frames[-1][:half]), chunk(frames[-1][half:])]
    return HEAD + b"".join(chunks) + (b"0\r\n\r\n" if terminal else b"")


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readuntil(b"\r\n\r\n")
    if request.startswith(b"GET /busy"):
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}")
    else:
        data = stream(terminal=not request.startswith(b"GET /cut"))
        for i in range(0, len(data), 7):  # 7 bytes at a time: every boundary gets cut somewhere
            writer.write(data[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0.001)
    await writer.drain()
    writer.close()


@pytest.fixture
async def server() -> AsyncIterator[int]:
    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()


def requests(*paths: str) -> list[bytes]:
    return [f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in paths]


async def run(client: Client, port: int, tmp_path: Path, spec: Spec | None = None) -> ClientRun:
    spec = spec or Spec("127.0.0.1", port, 1000, 0, 20_000, requests("/ok", "/busy", "/cut", "/ok"))
    path = tmp_path / f"{client.kind}.spec"
    write_spec(path, spec)
    proc = await asyncio.create_subprocess_exec(
        *client.argv,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(b"go\n"), 30)
    assert proc.returncode == 0
    result = ClientRun()
    parse(out.decode().splitlines(), result)
    return result


def client_of(kind: str, tmp_path: Path) -> Client:
    if kind == "c" and not (shutil.which("gcc") or shutil.which("cc")):
        pytest.skip("no C compiler: the harness uses the Python client then")
    return build(tmp_path, kind)


@pytest.mark.parametrize("kind", ["c", "python"])
async def test_the_clients_read_frames_cut_anywhere(kind: str, server: int, tmp_path: Path) -> None:
    client = client_of(kind, tmp_path)
    result = await run(client, server, tmp_path)
    ok, busy, cut, again = result.answers
    for answer in (ok, again):
        assert (answer.status, answer.error, answer.terminal) == (200, "ok", "done")
        assert (answer.events, answer.deltas, answer.contiguous) == (DELTAS + 2, DELTAS, True)
        assert answer.start <= answer.sent <= answer.first_event <= answer.first_delta
        assert answer.first_delta <= answer.last_delta <= answer.ended
    assert (busy.status, busy.error, busy.events) == (503, "http", 0)
    assert (cut.error, cut.terminal, cut.deltas) == ("eof", "-", DELTAS)
    # One lag per delta after the first, of the streams that had deltas; the window is the
    # whole run by default, so every one of them arrived in it.
    lags = 3 * (DELTAS - 1)
    assert sum(result.lags_us.values()) == sum(result.lags_by_phase[1].values()) == lags
    assert sum(sum(b.values()) for b in result.lags_by_second.values()) == lags
    assert result.window_events == result.events and result.window_deltas == 3 * DELTAS
    assert [a.window_deltas for a in result.answers] == [DELTAS, 0, DELTAS, DELTAS]
    assert result.window_us > 0 and result.window_cpu_us >= 0


@pytest.mark.parametrize("kind", ["c", "python"])
async def test_a_slot_runs_its_answers_one_after_another(
    kind: str, server: int, tmp_path: Path
) -> None:
    client = client_of(kind, tmp_path)
    spec = Spec("127.0.0.1", server, 1000, 0, 20_000, requests(*["/ok"] * 6), slots=2)
    result = await run(client, server, tmp_path, spec)
    assert [a.terminal for a in result.answers] == ["done"] * 6
    for j in range(2, 6):  # answer j is slot j % 2's; it starts once the one before has ended
        before, after = result.answers[j - 2], result.answers[j]
        assert after.start >= before.ended


@pytest.mark.parametrize("kind", ["c", "python"])
async def test_no_answer_starts_after_the_stop_and_the_window_keeps_its_lags_apart(
    kind: str, server: int, tmp_path: Path
) -> None:
    client = client_of(kind, tmp_path)
    # The window starts after the stream has ended: every lag arrived before it.
    raw = requests(*["/ok"] * 6)
    spec = Spec("127.0.0.1", server, 1000, 0, 20_000, raw, 2, 0, 60_000_000, -1)
    result = await run(client, server, tmp_path, spec)
    first, unused = result.answers[:2], result.answers[2:]
    assert [a.terminal for a in first] == ["done", "done"]
    assert {(a.error, a.start, a.events) for a in unused} == {("unused", -1, 0)}
    assert not any(a.started for a in unused)
    assert sum(result.lags_by_phase[0].values()) == 2 * (DELTAS - 1)
    assert 1 not in result.lags_by_phase and result.window_events == 0
