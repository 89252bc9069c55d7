"""The fault proxy itself: it forwards faithfully, and each fault does what it says.

These run against the session's PostgreSQL (a fresh database per test) and take a second or two;
the suite that uses the proxy against real server processes is ``test_under_faults.py``.
"""

from __future__ import annotations

import asyncio
import struct
import time
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.faults.proxy import GAP_SECONDS, FaultProxy
from tests.faults.wire import SSL_REQUEST, Framer


async def _direct_count(database_url: str) -> int:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM proxy_probe")
        return count
    finally:
        await conn.close()


def test_framer_finds_boundaries_whatever_the_chunks() -> None:
    ssl = struct.pack("!II", 8, SSL_REQUEST)
    startup = struct.pack("!II", 9 + 8, 196608) + b"user\0me\0\0"
    sync = b"S" + struct.pack("!I", 4)
    query = b"Q" + struct.pack("!I", 4 + 9) + b"SELECT 1\0"
    stream = ssl + startup + query + sync
    framer = Framer(client_side=True)
    kinds = [m.kind for i in range(len(stream)) for m in framer.feed(stream[i : i + 1])]
    assert kinds == ["negotiate", "startup", "Q", "S"]

    replies = Framer(client_side=False)
    replies.expect_single_byte()
    ready = b"Z" + struct.pack("!I", 5) + b"I"
    found = replies.feed(b"N" + ready[:3]) + replies.feed(ready[3:])
    assert [(m.kind, m.raw) for m in found] == [("byte", b"N"), ("Z", ready)]


async def test_forwards_queries_and_notifications(proxy: FaultProxy, database_url: str) -> None:
    conn = await asyncpg.connect(proxy.url_for(database_url), timeout=10)
    try:
        received: asyncio.Queue[str] = asyncio.Queue()
        await conn.add_listener("probe", lambda *args: received.put_nowait(args[-1]))
        assert await conn.fetchval("SELECT $1::text || 'b'", "a") == "ab"
        await conn.execute("NOTIFY probe, 'hello'")
        assert await asyncio.wait_for(received.get(), 10) == "hello"
    finally:
        await conn.close()
    assert proxy.stats.connections == 1


async def test_a_lost_reply_after_commit(proxy: FaultProxy, database_url: str) -> None:
    conn = await asyncpg.connect(database_url, timeout=10)
    await conn.execute("CREATE TABLE proxy_probe (n integer PRIMARY KEY)")
    await conn.close()
    conn = await asyncpg.connect(proxy.url_for(database_url), timeout=10)
    proxy.lose_rate, proxy.cut_after_send_share = 1.0, 0.0
    with pytest.raises((asyncpg.ConnectionDoesNotExistError, ConnectionError)):
        await conn.execute("INSERT INTO proxy_probe VALUES (1)")
    conn.terminate()
    # The server never heard back, but the row is there: the retry a server would send now
    # is exactly the one that must be harmless.
    assert await _direct_count(database_url) == 1
    assert proxy.stats.replies_lost == 1


async def test_cut_refuse_and_delay(proxy: FaultProxy, database_url: str) -> None:
    url = proxy.url_for(database_url)
    conn = await asyncpg.connect(url, timeout=10)
    assert proxy.cut(1.0) == 1
    with pytest.raises((asyncpg.ConnectionDoesNotExistError, ConnectionError)):
        await conn.fetchval("SELECT 1")
    conn.terminate()

    proxy.refusing = True
    with pytest.raises((ConnectionError, asyncpg.PostgresConnectionError, OSError)):
        await asyncpg.connect(url, timeout=10)
    assert proxy.stats.refused == 1

    proxy.heal()
    proxy.reply_delay = 0.3
    conn = await asyncpg.connect(url, timeout=10)
    try:
        started = time.monotonic()
        assert await conn.fetchval("SELECT 1") == 1
        assert time.monotonic() - started >= 0.3  # a lower bound: never too fast
    finally:
        await conn.close()


async def test_a_blip_on_a_statement(proxy: FaultProxy, database_url: str) -> None:
    url = proxy.url_for(database_url)
    conn = await asyncpg.connect(url, timeout=10)
    other = await asyncpg.connect(url, timeout=10)
    # Prepared before the blip is armed: from then on it runs by name (Bind), without its text.
    assert await conn.fetchval("SELECT 'marked'::text") == "marked"
    proxy.blip_on(b"'marked'", 0.5)
    assert await conn.fetchval("SELECT 'unmarked'::text") == "unmarked"
    assert proxy.stats.blips == 0
    with pytest.raises((asyncpg.ConnectionDoesNotExistError, ConnectionError)):
        await conn.fetchval("SELECT 'marked'::text")
    conn.terminate()
    assert proxy.stats.blips == 1
    closed = (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, ConnectionError)
    with pytest.raises(closed):
        await other.fetchval("SELECT 1")  # every connection went
    other.terminate()
    with pytest.raises((ConnectionError, asyncpg.PostgresConnectionError, OSError)):
        await asyncpg.connect(url, timeout=10)  # and new ones are refused, for a while
    await asyncio.wait_for(proxy.blip_over.wait(), 10)
    conn = await asyncpg.connect(url, timeout=10)
    try:  # once: the same statement passes now
        assert await conn.fetchval("SELECT 'marked'::text") == "marked"
    finally:
        await conn.close()


async def test_stall_makes_the_connections_that_sent_a_statement_half_open(
    proxy: FaultProxy, database_url: str
) -> None:
    url = proxy.url_for(database_url)
    stalled = await asyncpg.connect(url, timeout=10)
    other = await asyncpg.connect(url, timeout=10)
    try:
        assert await stalled.fetchval("SELECT 'marked'") == "marked"
        assert proxy.stall_sending("'marked'") == 1
        # Nothing comes back, and nothing says the connection is gone: only a timeout ends it.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stalled.fetchval("SELECT 1"), 1.0)
        assert not stalled.is_closed()
        assert await other.fetchval("SELECT 2") == 2
        # A connection opened later is not stalled.
        fresh = await asyncpg.connect(url, timeout=10)
        assert await fresh.fetchval("SELECT 'marked'") == "marked"
        await fresh.close()
    finally:
        stalled.terminate()
        await other.close()
    assert proxy.stats.stalled == 1


async def test_a_stall_leaves_connections_half_open_then_resets_them(
    proxy: FaultProxy, database_url: str
) -> None:
    url = proxy.url_for(database_url)
    stalled = await asyncpg.connect(url, timeout=10)
    assert proxy.stall(1.0, 5.0) == 1
    healthy = await asyncpg.connect(url, timeout=10)  # new connections work all along
    try:
        query = asyncio.ensure_future(stalled.fetchval("SELECT 1"))
        assert await healthy.fetchval("SELECT 2") == 2
        assert not query.done()  # no answer, and no reset either: half-open
        with pytest.raises((asyncpg.ConnectionDoesNotExistError, ConnectionError)):
            await asyncio.wait_for(query, 15)  # until the stall ends with a reset
    finally:
        stalled.terminate()
        await healthy.close()
    assert proxy.stats.stalled == 1


async def test_the_reply_log_keeps_each_process_silences(database_url: str) -> None:
    port = urlsplit(database_url).port
    assert port is not None
    async with FaultProxy(port, seed=1, origins=2) as proxy:
        path = urlsplit(database_url).path
        first = await asyncpg.connect(f"{proxy.url_base_for(0)}{path}", timeout=10)
        second = await asyncpg.connect(f"{proxy.url_base_for(1)}{path}", timeout=10)
        try:
            await first.fetchval("SELECT 1")
            await asyncio.sleep(GAP_SECONDS + 0.2)  # a silence of origin 0, on purpose
            await first.fetchval("SELECT 1")
        finally:
            await first.close()
            await second.close()
        assert [b - a > GAP_SECONDS for a, b in proxy.replies[0].gaps] == [True]
        assert proxy.replies[1].gaps == []  # its connect's replies came together
