"""One process's share of the service: the runner and its background loops, started and drained.

Draining (SIGTERM, or the app's shutdown): refuse new generations, give running ones the grace
period, end the rest with ``server_shutdown``, write everything, then end every open stream so
that the server can exit (an open SSE response would otherwise hold it forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Coroutine
from types import FrameType
from typing import Any
from uuid import UUID

from server import metrics
from server.config import Settings
from server.db import Database, Listener
from server.errors import ServiceUnavailable
from server.flusher import FlushPolicy
from server.follow import FollowLimits
from server.generators.base import Generator
from server.heartbeat import Heartbeat
from server.limits import StreamGauge
from server.notifier import Notifier
from server.queue import Queue
from server.reaper import Reaper
from server.retention import Retention
from server.runner import Runner
from server.sse import SendWatchdog
from server.store import Store

logger = logging.getLogger(__name__)
# A log with this many unwritten events is written at the next flush (a chunk's target size).
CHUNK_EVENTS = 4

# The flusher's connections: on Citus, the statements of one flush (one per shard) that run at
# once (Store.flush). A flush's statements wait mostly for their node's commit, not the CPU.
FLUSH_CONNECTIONS = 4


@contextlib.asynccontextmanager
async def _timed(step: str) -> AsyncIterator[None]:
    """Log a step of stopping that took longer than a second."""
    began = time.monotonic()
    try:
        yield
    finally:
        took = time.monotonic() - began
        if took > 1.0:
            logger.warning("stopping: %s took %.1fs", step, took)


class Worker:
    def __init__(self, settings: Settings, store: Store, generator: Generator) -> None:
        assert settings.database_url is not None
        self.settings = settings
        self.heartbeat = Heartbeat(
            settings.database_url,
            lease_seconds=settings.lease_seconds,
            on_expired=lambda _expired: self.runner.abandon_all(),
        )
        policy = FlushPolicy(
            interval=settings.flush_interval_ms / 1000,
            max_delay=settings.flush_delay_ms / 1000,
            min_events=CHUNK_EVENTS,
        )
        # The flusher writes on connections of its own: a burst of requests that takes every
        # pooled connection must not hold the running answers' events back. On one PostgreSQL
        # a flush is one statement (one connection); on Citus one per shard, several at once.
        self._flush_db = Database(settings.database_url, min_size=1, max_size=FLUSH_CONNECTIONS)
        self.runner = Runner(
            store,
            generator,
            flush_store=Store(self._flush_db),
            worker=self.heartbeat.current,
            flush_policy=policy,
            max_running_per_user=settings.max_running_per_user,
            history_messages=settings.history_messages,
            on_running=settings.on_running,
            on_queued=lambda owner_id, project_id: self.queue.poke(owner_id, project_id),
            on_deleting=lambda ended: self.notifier.deleting(ended),
        )
        self.queue = Queue(store, self.runner, poll_seconds=settings.queue_poll_seconds)
        self.generator = generator
        self.notifier = Notifier()
        self.reaper = Reaper(
            store,
            worker=lambda: self.heartbeat.id,
            lease_seconds=settings.lease_seconds,
            on_reaped=self.runner.abandon,
        )
        self.retention = Retention(store, retention_seconds=settings.event_retention_hours * 3600)
        self.watchdog = SendWatchdog(settings.send_timeout_seconds)
        self.listener = Listener(
            settings.database_url,
            {
                "orderly_events": self.notifier.on_events,
                "orderly_cancel": self._on_cancel,
                "orderly_queue": self.queue.on_notify,
            },
            on_connect=self._on_listening,
        )
        self.closing = asyncio.Event()
        self.streams = StreamGauge(settings.max_streams_per_worker, settings.max_streams_per_user)
        self._tasks: list[asyncio.Task[None]] = []
        self._drain: asyncio.Task[None] | None = None
        self._recheck: asyncio.Task[None] | None = None  # see _on_listening

    async def open(self) -> None:
        """Connect the flusher and register this worker's heartbeat (before it takes any
        answer); safe to call again after it failed."""
        if not self._flush_db.is_open:
            await self._flush_db.open()
        await self.heartbeat.open()

    def start(self) -> None:
        # What start-up built lives as long as the process: out of the collector's way, so that
        # a full collection walks only what serving creates (its pause holds every stream).
        gc.freeze()
        # A young generation of 10,000 objects instead of 700: at thousands of events a second
        # the default collects every few milliseconds and promotes objects that were about to
        # die (an event's batch, a waiter's future) into the older generations, whose
        # collections are the long pauses.
        gc.set_threshold(10_000, 10, 10)
        metrics.watch_garbage_collections()
        self._spawn(self.runner.flusher.run(), "flusher")
        self._spawn(self.heartbeat.run(), "heartbeat")
        self._spawn(self.reaper.run(), "reaper")
        self._spawn(self.queue.run(), "queue")
        self._spawn(self.retention.run(), "retention")
        self._spawn(self.watchdog.run(), "send watchdog")
        self._spawn(self.listener.run(), "listener")
        self._spawn(self._tick(), "listener ticker")
        self._spawn(self._report_pool(), "pool metrics")

    async def _tick(self) -> None:
        """Wake every listener of this worker's logs now and then, so that each can send its
        ping and notice its stream's end (listeners wait without a timer of their own)."""
        interval = min(1.0, self.settings.ping_seconds / 4)
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            # How late the loop woke us: the event loop's lag, for everything it runs.
            metrics.EVENT_LOOP_LAG_SECONDS.observe(max(0.0, loop.time() - due))
            for log in list(self.runner.flusher.logs.values()):
                log.wake()

    async def _report_pool(self) -> None:
        db = self.runner.store.db
        while True:
            size, in_use, waiting = db.pool_usage()
            metrics.POOL_SIZE.set(size)
            metrics.POOL_IN_USE.set(in_use)
            metrics.POOL_WAITING.set(waiting)
            await asyncio.sleep(1.0)

    def limits(self) -> FollowLimits:
        """The bounds of a stream opened now."""
        deadline = asyncio.get_running_loop().time() + self.settings.max_stream_seconds
        return FollowLimits(self.closing, deadline, self.settings.ping_seconds)

    def _on_listening(self) -> None:
        """(Re)connected: notifications sent meanwhile are lost, so re-read everything, and
        re-check which running answers someone else ended meanwhile (a missed cancel)."""
        self.notifier.wake_all()
        self.queue.wake_all()
        if self._recheck is not None:
            self._recheck.cancel()  # this connect's check covers the earlier one's
        self._recheck = asyncio.get_running_loop().create_task(
            self._abandon_ended(), name="re-check running answers"
        )

    async def _abandon_ended(self) -> None:
        """``Runner.abandon_ended``, until the database answers. Regression: a cancel whose
        NOTIFY came while the LISTEN connection was down was never re-checked, and a writer
        waiting for its next token kept going for as long as it waited (up to a minute)."""
        backoff = 0.1
        while True:
            try:
                await self.runner.abandon_ended()
                return
            except ServiceUnavailable as exc:
                logger.warning("re-check of running answers: %s; again in %.1fs", exc, backoff)
            except Exception:
                logger.exception("re-check of running answers failed")
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _on_cancel(self, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.runner.abandon(UUID(payload))

    def drain_soon(self) -> None:
        """Start draining (idempotent); safe to call from a signal handler via the loop."""
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._drain_now(), name="drain")

    async def drain(self) -> None:
        self.drain_soon()
        assert self._drain is not None
        await asyncio.shield(self._drain)

    async def _drain_now(self) -> None:
        logger.info("draining: %d generation(s) running", len(self.runner.tasks))
        await self.runner.shutdown(self.settings.shutdown_grace_seconds)
        if not await self.runner.flusher.drain(5.0):
            logger.error("draining: some events could not be written; the reapers will end them")
        self.closing.set()
        self.notifier.wake_all()
        for log in list(self.runner.flusher.logs.values()):
            log.mark_lost()

    async def stop(self) -> None:
        """Drain, then stop the loops and close the connections. Every step is bounded (the
        drain by its grace periods, the heartbeat's last word by its renewal interval, each
        pool by ``CLOSE_SECONDS``), so that a stopping server exits even when the database
        does not answer; a step slower than a second is logged, so that a slow exit says why."""
        async with _timed("drain"):
            await self.drain()
        tasks = [*self._tasks, *([self._recheck] if self._recheck is not None else [])]
        for task in tasks:
            task.cancel()
        async with _timed("stopping the background loops"):
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        async with _timed("expiring the heartbeat"):
            await self.heartbeat.close()
        async with _timed("closing the flusher's connections"):
            await self._flush_db.close()
        close = getattr(self.generator, "aclose", None)
        if close is not None:  # a generator holding connections (the openai one)
            async with _timed("closing the generator"):
                await close()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    def drain_on_signals(self) -> None:
        """Chain a drain in front of the server's own SIGTERM/SIGINT handlers (uvicorn's)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(self.drain_soon)
                if callable(previous):
                    previous(signum, frame)

            with contextlib.suppress(ValueError):  # not the main thread: no signals here
                signal.signal(sig, handler)
