"""The queue: answers reserved under ``on_running = enqueue`` wait in the database for their turn.

A queued answer is a ``pending`` row that no worker leases (``lease_owner`` is NULL), with its
``queued`` progress event already stored (``reserve_pair``). It costs nothing while it waits, the
reaper never touches it, and no process holds it: its turn comes when every earlier answer of its
project has ended, and then any worker may claim it (``claim_queued``: ``FOR UPDATE SKIP
LOCKED``, while the worker's heartbeat lives) and start it like an answer of its own.

How a worker learns that a turn came: every statement that ends an answer (the flush, cancel,
the reaper, via ``orderly_queue_hint``) sends ``NOTIFY orderly_queue`` with the projects that have
queued answers; the reserving worker looks at once too; and every ``QUEUE_POLL_SECONDS`` each
worker looks at every project, for whatever a lost notification or a race left behind (on time
however often pokes and notifications wake it meanwhile). The chain
therefore never stalls behind a dead answer: a dead worker's running answer is ended by the
reaper, whose end is one of those statements.

A claim whose reply was lost, or whose answer could not be loaded, is still this worker's: the
poll finds it (``leased_to``) and starts it; so does a reservation whose reply was lost (the
pair was written, leased to this worker, and nothing runs it). A draining worker claims nothing,
and gives back what it claimed and did not start, so queued work stays queued for another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from uuid import UUID

from server import metrics
from server.errors import ServiceUnavailable
from server.models import Message
from server.notifier import ALL
from server.runner import Runner
from server.store import Store

logger = logging.getLogger(__name__)
CLAIM_BATCH = 50
# Chunks read of a claimed answer's log: it holds one (its `queued` event).
STORED_CHUNKS = 16


class Queue:
    def __init__(self, store: Store, runner: Runner, *, poll_seconds: float) -> None:
        self.store = store
        self.runner = runner
        self.poll_seconds = poll_seconds
        # (owner, project) of the projects to look at in the next round
        self._projects: set[tuple[UUID, UUID]] = set()
        self._everywhere = True  # the next round looks at every project (and at our claims)
        self._wakeup = asyncio.Event()
        self._waiting = False  # between rounds, in the wait for a wakeup or the slow poll

    def poke(self, owner_id: UUID, project_id: UUID) -> None:
        """A queued answer of this project (of this owner) may be startable now."""
        self._projects.add((owner_id, project_id))
        self._wakeup.set()

    def on_notify(self, payload: str) -> None:
        """A NOTIFY orderly_queue payload: comma-separated ``owner/project`` ids, or ``*``."""
        if payload == ALL:
            self.wake_all()
            return
        for raw in payload.split(","):
            owner, _, project = raw.partition("/")
            with contextlib.suppress(ValueError):
                self.poke(UUID(owner), UUID(project))

    def wake_all(self) -> None:
        """Look everywhere now (notifications may have been missed)."""
        self._everywhere = True
        self._wakeup.set()

    @property
    def idle(self) -> bool:
        """Between rounds, with nothing asked of the next one before its slow poll."""
        return self._waiting and not self._wakeup.is_set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.1
        self._wakeup.set()  # a worker that starts looks at once (answers may wait already)
        poll_due = loop.time()  # (the first round looks everywhere)
        while True:
            # The slow poll comes every poll_seconds whatever else wakes the queue. Regression:
            # it came only when a wait timed out, and every poke or NOTIFY ends the wait; under
            # steady traffic it never came, and a lost reply's answer stayed pending for good.
            wait = poll_due - loop.time()
            if wait > 0 and not self._wakeup.is_set():
                self._waiting = True
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), wait)
                finally:
                    self._waiting = False
            if loop.time() >= poll_due:
                self._everywhere = True  # the slow poll
            if self._everywhere:
                poll_due = loop.time() + self.poll_seconds
            self._wakeup.clear()
            try:
                await self.round()
                backoff = 0.1
            except Exception as exc:
                if isinstance(exc, ServiceUnavailable):
                    logger.warning("queue: %s; looking again in %.1fs", exc.detail, backoff)
                else:
                    logger.exception("queue: a round failed; looking again in %.1fs", backoff)
                self.wake_all()  # whatever was asked, look at everything next time
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def round(self) -> None:
        """Start the queued answers whose turn came (of the projects asked about, or anywhere)."""
        projects, self._projects = self._projects, set()
        everywhere, self._everywhere = self._everywhere, False
        if self.runner.draining:
            return
        worker = self.runner.worker()
        if everywhere:
            await self._resume_claims(worker)
        while everywhere or projects:
            claims = await self.store.claim_queued(
                worker, None if everywhere else sorted(projects), CLAIM_BATCH
            )
            for claim in claims:
                metrics.QUEUE_WAIT_SECONDS.observe(claim.waited)
                await self._start(worker, claim.assistant.message)
            if len(claims) < CLAIM_BATCH:
                break

    async def _resume_claims(self, worker: UUID) -> None:
        """Start what is leased to this worker and not running: a claim or a reservation whose
        reply was lost, or an answer that could not be loaded then.

        A reservation's late reply may start the answer while this reads, and the answer may
        even finish (its log leaves memory) before this would start it: what was started here
        since the sweep began is never started again. Regression: the sweep read the answer as
        pending, the reply ran it to its end meanwhile, and the sweep started it a second time.
        """
        with self.runner.noting_starts() as started:
            running = {*self.runner.flusher.logs, *self.runner.tasks}
            for stored in await self.store.leased_to(worker):
                if stored.message.id in running or stored.message.id in started:
                    continue
                logger.warning(
                    "starting answer %s, leased to this worker earlier", stored.message.id
                )
                await self._start(worker, stored.message, unless=started)

    async def _start(
        self, worker: UUID, assistant: Message, *, unless: Collection[UUID] = ()
    ) -> None:
        """Start ``assistant`` unless it ended meanwhile, or was started (it is in ``unless``)
        while its pair and log were read."""
        if self.runner.draining:  # queued again, for another worker
            await self.store.release_claims(worker, [assistant])
            return
        pair = await self.store.pair_of(assistant)
        if pair is None or pair.assistant.message.is_terminal:  # cancelled meanwhile
            return
        stored, _more = await self.store.events_after(
            assistant.created_by, assistant.id, 1, STORED_CHUNKS
        )
        if assistant.id in unless:  # (no await from this check to the start)
            return
        self.runner.start(pair, stored)
        metrics.QUEUE_CLAIMS.inc()
