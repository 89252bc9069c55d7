"""A TCP proxy between the server processes and PostgreSQL that injects faults when told to.

Every connection of a server (its pool and its LISTEN connection) goes through the proxy, which
forwards whole wire messages (``tests/faults/wire.py``) and, on command:

- ``cut(fraction)``: resets that share of the open connections at once, wherever they are (in the
  middle of a request, of a reply, or idle);
- ``lose_rate``: each request (a Sync or a simple Query) is, with that probability, forwarded and
  then either its reply is swallowed and both sides are reset when the reply is complete (so
  the statement ran, and committed if it was a write, but the server never hears of it: the
  reply lost after COMMIT), or, one time in four, both sides are reset right after forwarding
  it (it may or may not have run);
- ``reply_delay``: every reply reaches the server that much later (latency, not throughput);
- ``refusing``: new connections are reset as soon as they are accepted;
- ``blip_on(marker, seconds)``: when a request next runs a statement whose text holds ``marker``,
  the database goes away for a moment, as that statement reaches it: every open connection is
  reset (that request is never forwarded) and new ones are refused for ``seconds``.
- ``stall(statement)``: the open connections that have sent a statement containing that text
  stop forwarding anything, either way, and are never closed: a half-open connection, which no
  error ever ends (connections opened later are not stalled).

A connection to PostgreSQL that fails (it is stopped) resets the server's connection the same way.
The proxy's coin flips come from a seeded generator, but which request meets which flip depends on
timing: a seed reproduces the fault schedule, not every byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import struct
from dataclasses import dataclass

from tests.faults.wire import READY_FOR_QUERY, REQUEST_ENDS, Framer, Message

CHUNK = 65536


@dataclass
class ProxyStats:
    connections: int = 0
    refused: int = 0  # reset on accept while refusing
    upstream_down: int = 0  # reset because PostgreSQL did not answer the connect
    cut: int = 0  # reset by ``cut``
    stalled: int = 0  # made half-open by ``stall``
    replies_lost: int = 0  # the request ran; its reply was swallowed
    requests_cut: int = 0  # reset right after the request was forwarded
    delayed: int = 0  # reply chunks held back by ``reply_delay``
    blips: int = 0  # ``blip_on`` that met their statement


class Link:
    """One server connection and its own connection to PostgreSQL."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client_reader, self.client_writer = client
        self.upstream_reader, self.upstream_writer = upstream
        self.reply_framer = Framer(client_side=False)
        self.swallowing = False  # drop the reply in progress, then reset
        self.stalled = False  # forward nothing more, either way, and never close
        self.closed = False
        # Prepared statements by name: a cached statement is run by name (Bind), without its text.
        self.statements: dict[bytes, bytes] = {}

    def reset(self) -> None:
        """Both sides, now, with a TCP reset: nothing queued is delivered."""
        if not self.closed:
            self.closed = True
            _reset(self.client_writer)
            _reset(self.upstream_writer)

    def close(self) -> None:
        """Both sides, gracefully (one of them has already ended)."""
        if not self.closed:
            self.closed = True
            self.client_writer.close()
            self.upstream_writer.close()


def _statement_text(link: Link, message: Message) -> bytes | None:
    """The text of the statement that ``message`` prepares or runs, if it does."""
    if message.kind == "Q":  # a simple query: its text, NUL-terminated (kept for ``stall``)
        text = message.raw[5:-1]
        link.statements[b"Q:" + text] = text
        return text
    if message.kind == "P":  # Parse: statement name, text, parameter types
        name, text, _ = message.raw[5:].split(b"\0", 2)
        link.statements[name] = text
        return text
    if message.kind == "B":  # Bind: portal name, statement name, parameters
        _, name, _ = message.raw[5:].split(b"\0", 2)
        return link.statements.get(name)
    return None


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """``async with FaultProxy(postgres_port, seed=...) as proxy``: listens on ``proxy.port``."""

    def __init__(self, upstream_port: int, *, seed: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.rng = random.Random(f"proxy:{seed}")
        self.refusing = False
        self.reply_delay = 0.0
        self.lose_rate = 0.0
        self.cut_after_send_share = 0.25  # of the requests hit by ``lose_rate``
        self.stats = ProxyStats()
        self._blip: tuple[bytes, float] | None = None
        self.blip_over = asyncio.Event()  # set when a blip's refusing ends
        self._numbers = itertools.count(1)
        self._links: dict[int, Link] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links.values()):
            link.reset()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)

    @property
    def url_base(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    @property
    def open_links(self) -> int:
        return len(self._links)

    def heal(self) -> None:
        """No more faults from now on (connections already cut stay cut)."""
        self.refusing = False
        self.reply_delay = 0.0
        self.lose_rate = 0.0

    def cut(self, fraction: float) -> int:
        """Reset ``fraction`` of the open connections (at least one, if any is open)."""
        links = [self._links[n] for n in sorted(self._links)]
        if not links:
            return 0
        chosen = self.rng.sample(links, max(1, round(len(links) * fraction)))
        for link in chosen:
            link.reset()
        self.stats.cut += len(chosen)
        return len(chosen)

    def blip_on(self, marker: bytes, seconds: float) -> None:
        """Arm a blip, once: see the module's docstring."""
        self._blip = (marker, seconds)

    def _blip_now(self, seconds: float) -> None:
        self._blip = None
        self.stats.blips += 1
        self.refusing = True
        for link in list(self._links.values()):
            link.reset()
        asyncio.get_running_loop().call_later(seconds, self._blip_over)

    def _blip_over(self) -> None:
        self.refusing = False
        self.blip_over.set()

    def stall(self, statement: str) -> int:
        """Make the open connections that sent a statement containing ``statement`` (a driver
        sends a statement's text once per connection: when it prepares it) half-open: from now
        on nothing they send reaches PostgreSQL and nothing reaches them, and they stay open."""
        wanted = statement.encode()
        chosen = [
            link
            for link in self._links.values()
            if not link.stalled
            and not link.closed
            and any(wanted in text for text in link.statements.values())
        ]
        for link in chosen:
            link.stalled = True
        self.stats.stalled += len(chosen)
        return len(chosen)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except Exception:  # a connection's end, however it comes, is the proxy's business only
            _reset(writer)
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if self.refusing:
            self.stats.refused += 1
            _reset(writer)
            return
        try:
            upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            self.stats.upstream_down += 1
            _reset(writer)
            return
        number = next(self._numbers)
        link = self._links[number] = Link((reader, writer), upstream)
        replies: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        try:
            await asyncio.gather(
                self._requests(link),
                self._replies(link, replies),
                self._deliver(link, replies),
                return_exceptions=True,
            )
        finally:
            link.close()
            del self._links[number]

    async def _requests(self, link: Link) -> None:
        """Server to PostgreSQL: whole messages; a request may be marked for a fault."""
        framer = Framer(client_side=True)
        try:
            while data := await link.client_reader.read(CHUNK):
                cut_after_send = False
                for message in framer.feed(data):
                    if message.kind == "negotiate":
                        link.reply_framer.expect_single_byte()
                    text = _statement_text(link, message)
                    if self._blip is not None and text is not None and self._blip[0] in text:
                        self._blip_now(self._blip[1])
                        return
                    if link.stalled:
                        continue
                    link.upstream_writer.write(message.raw)
                    if message.kind in REQUEST_ENDS and self._hit():
                        if self.rng.random() < self.cut_after_send_share:
                            cut_after_send = True
                        else:
                            link.swallowing = True
                await link.upstream_writer.drain()
                if cut_after_send:
                    self.stats.requests_cut += 1
                    link.reset()
                    return
        finally:
            link.close()

    def _hit(self) -> bool:
        return self.lose_rate > 0 and self.rng.random() < self.lose_rate

    async def _replies(
        self, link: Link, replies: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        """PostgreSQL to the server: whole messages, held back or swallowed when told to."""
        loop = asyncio.get_running_loop()
        try:
            while data := await link.upstream_reader.read(CHUNK):
                passed = bytearray()
                for message in link.reply_framer.feed(data):
                    if not link.swallowing:
                        passed += message.raw
                    elif message.kind == READY_FOR_QUERY:
                        self.stats.replies_lost += 1
                        link.reset()
                        return
                if passed and not link.stalled:
                    if self.reply_delay:
                        self.stats.delayed += 1
                    replies.put_nowait((loop.time() + self.reply_delay, bytes(passed)))
        finally:
            replies.put_nowait(None)

    async def _deliver(
        self, link: Link, replies: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (item := await replies.get()) is not None:
                due, chunk = item
                await asyncio.sleep(max(0.0, due - loop.time()))
                if link.closed:
                    return
                if link.stalled:
                    continue
                link.client_writer.write(chunk)
                await link.client_writer.drain()
        finally:
            link.close()
