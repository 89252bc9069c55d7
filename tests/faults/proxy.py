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
- ``stall_sending(statement)``: the open connections that have sent a statement containing that
  text stop forwarding anything, either way, and are never closed: a half-open connection, which
  no error ever ends (connections opened later are not stalled).
- ``stall(fraction, seconds)``: that share of the open connections stops forwarding, both ways,
  without closing (a half-open connection: a partition without a reset); a statement sent on
  one waits for an answer that does not come. After ``seconds`` the proxy resets them, as a peer
  that comes back and has forgotten the connection would (or a TCP keepalive would find). The
  other connections, and new ones, work all along.

Each server process connects through a port of its own (``url_base_for(origin)``), so that the
proxy knows whose connection is whose: it keeps, per process, the moments at which a reply from
PostgreSQL reached it (``gaps``: the stretches of more than ``GAP_SECONDS`` without one), which
is when that process could not reach the database, whatever the fault.

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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.faults.wire import READY_FOR_QUERY, REQUEST_ENDS, Framer, Message

CHUNK = 65536
# A worker with work renews its heartbeat every second here, so a healthy process never goes
# this long without a reply; shorter silences are not worth remembering.
GAP_SECONDS = 1.0


@dataclass
class ProxyStats:
    connections: int = 0
    refused: int = 0  # reset on accept while refusing
    upstream_down: int = 0  # reset because PostgreSQL did not answer the connect
    cut: int = 0  # reset by ``cut``
    replies_lost: int = 0  # the request ran; its reply was swallowed
    requests_cut: int = 0  # reset right after the request was forwarded
    delayed: int = 0  # reply chunks held back by ``reply_delay``
    stalled: int = 0  # left half-open by ``stall`` (then reset) or ``stall_sending``
    blips: int = 0  # ``blip_on`` that met their statement


@dataclass
class ReplyLog:
    """When replies (ReadyForQuery) reached one server process: the silences longer than
    ``GAP_SECONDS``, as (from, to) in wall-clock seconds (``time.time()``, the clock PostgreSQL's
    timestamps use on this machine)."""

    last: float | None = None
    gaps: list[tuple[float, float]] = field(default_factory=list)

    def replied(self, now: float) -> None:
        if self.last is not None and now - self.last > GAP_SECONDS:
            self.gaps.append((self.last, now))
        self.last = now

    def silences(self, until: float) -> list[tuple[float, float]]:
        """The gaps, and the silence still going on at ``until``."""
        open_gap = [(self.last, until)] if self.last is not None and until - self.last > 0 else []
        return [*self.gaps, *open_gap]


class Link:
    """One server connection and its own connection to PostgreSQL."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client_reader, self.client_writer = client
        self.upstream_reader, self.upstream_writer = upstream
        self.stalled = asyncio.Event()  # set: forward nothing more, either way
        self.gone = asyncio.Event()  # set when closed or reset
        self.reply_framer = Framer(client_side=False)
        self.swallowing = False  # drop the reply in progress, then reset
        self.closed = False
        # Prepared statements by name: a cached statement is run by name (Bind), without its text.
        self.statements: dict[bytes, bytes] = {}

    def reset(self) -> None:
        """Both sides, now, with a TCP reset: nothing queued is delivered."""
        if not self.closed:
            self.closed = True
            self.gone.set()
            _reset(self.client_writer)
            _reset(self.upstream_writer)

    def close(self) -> None:
        """Both sides, gracefully (one of them has already ended)."""
        if not self.closed:
            self.closed = True
            self.gone.set()
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
    """``async with FaultProxy(postgres_port, seed=...) as proxy``: listens on ``proxy.port``
    (and, with ``origins=n``, on one port per server process: ``proxy.ports``)."""

    def __init__(self, upstream_port: int, *, seed: int, origins: int = 1) -> None:
        self.upstream_port = upstream_port
        self.ports: list[int] = []
        self.origins = origins
        self.replies = [ReplyLog() for _ in range(origins)]
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
        self._servers: list[asyncio.Server] = []

    async def __aenter__(self) -> FaultProxy:
        for origin in range(self.origins):
            server = await asyncio.start_server(self._handler(origin), "127.0.0.1", 0)
            self._servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *_exc: object) -> None:
        for server in self._servers:
            server.close()
        for link in list(self._links.values()):
            link.reset()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def url_base(self) -> str:
        return self.url_base_for(0)

    def url_for(self, database_url: str) -> str:
        """``database_url``'s database, reached through this proxy."""
        return f"{self.url_base}{urlsplit(database_url).path}"

    def url_base_for(self, origin: int) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports[origin]}"

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

    def stall_sending(self, statement: str) -> int:
        """Make the open connections that sent a statement containing ``statement`` (a driver
        sends a statement's text once per connection: when it prepares it) half-open: from now
        on nothing they send reaches PostgreSQL and nothing reaches them, and they stay open."""
        wanted = statement.encode()
        chosen = [
            link
            for link in self._links.values()
            if not link.stalled.is_set()
            and not link.closed
            and any(wanted in text for text in link.statements.values())
        ]
        for link in chosen:
            link.stalled.set()
        self.stats.stalled += len(chosen)
        return len(chosen)

    def stall(self, fraction: float, seconds: float) -> int:
        """Leave ``fraction`` of the open connections (at least one) half-open for ``seconds``,
        then reset them (in the background: other faults may come meanwhile)."""
        links = [self._links[n] for n in sorted(self._links) if not self._links[n].closed]
        if not links:
            return 0
        chosen = self.rng.sample(links, max(1, round(len(links) * fraction)))
        for link in chosen:
            link.stalled.set()
        self.stats.stalled += len(chosen)
        asyncio.get_running_loop().call_later(seconds, _reset_all, chosen)
        return len(chosen)

    def _handler(
        self, origin: int
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._handle(origin, reader, writer)

        return handle

    async def _handle(
        self, origin: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(origin, reader, writer)
        except Exception:  # a connection's end, however it comes, is the proxy's business only
            _reset(writer)
        finally:
            self._handlers.discard(task)

    async def _serve(
        self, origin: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
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
        replies: asyncio.Queue[tuple[float, bytes, bool] | None] = asyncio.Queue()
        try:
            await asyncio.gather(
                self._requests(link),
                self._replies(link, replies),
                self._deliver(link, replies, self.replies[origin]),
                return_exceptions=True,
            )
        finally:
            link.close()
            del self._links[number]

    async def _requests(self, link: Link) -> None:
        """Server to PostgreSQL: whole messages; a request may be marked for a fault."""
        framer = Framer(client_side=True)
        try:
            while data := await _unless_stalled(link, link.client_reader.read(CHUNK)):
                cut_after_send = False
                for message in framer.feed(data):
                    if message.kind == "negotiate":
                        # The proxy reads the wire, so it declines encryption itself ('N'), as a
                        # server without TLS would; PostgreSQL never sees the request (a Citus
                        # node turns TLS on, and the client would go on in TLS past the proxy).
                        link.client_writer.write(b"N")
                        continue
                    text = _statement_text(link, message)
                    if self._blip is not None and text is not None and self._blip[0] in text:
                        self._blip_now(self._blip[1])
                        return
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
        self, link: Link, replies: asyncio.Queue[tuple[float, bytes, bool] | None]
    ) -> None:
        """PostgreSQL to the server: whole messages, held back or swallowed when told to."""
        loop = asyncio.get_running_loop()
        try:
            while data := await _unless_stalled(link, link.upstream_reader.read(CHUNK)):
                passed = bytearray()
                ready = False
                for message in link.reply_framer.feed(data):
                    if not link.swallowing:
                        passed += message.raw
                        ready = ready or message.kind == READY_FOR_QUERY
                    elif message.kind == READY_FOR_QUERY:
                        self.stats.replies_lost += 1
                        link.reset()
                        return
                if passed:
                    if self.reply_delay:
                        self.stats.delayed += 1
                    replies.put_nowait((loop.time() + self.reply_delay, bytes(passed), ready))
        finally:
            replies.put_nowait(None)

    async def _deliver(
        self,
        link: Link,
        replies: asyncio.Queue[tuple[float, bytes, bool] | None],
        log: ReplyLog,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (item := await replies.get()) is not None:
                due, chunk, ready = item
                await asyncio.sleep(max(0.0, due - loop.time()))
                if link.stalled.is_set():
                    await link.gone.wait()  # half-open: hold on until ``stall`` resets it
                if link.closed:
                    return
                link.client_writer.write(chunk)
                await link.client_writer.drain()
                if ready:
                    log.replied(time.time())
        finally:
            link.close()


def _reset_all(links: list[Link]) -> None:
    for link in links:
        link.reset()


async def _unless_stalled(link: Link, read: Awaitable[bytes]) -> bytes:
    """What ``read`` gives; once the link is stalled, nothing ever again: what comes is dropped
    and the pump waits until ``stall`` resets the link (b"" then ends it)."""
    data = await read
    if link.stalled.is_set():
        await link.gone.wait()
        return b""
    return data
