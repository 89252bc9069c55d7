"""The runner owns this worker's generations: it starts them, and they outlive their requests.

A request asks the runner for a generation and then only listens to it; a client that goes away
detaches its listener, while the generation runs on and is finalised by the flusher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from uuid import UUID

from server import metrics
from server.errors import (
    Conflict,
    Draining,
    DuplicateRequest,
    NotFound,
    ServiceUnavailable,
)
from server.eventlog import MessageLog
from server.events import Event
from server.flusher import Flusher, FlushPolicy
from server.generators.base import (
    Delta,
    Finish,
    GenerationContext,
    Generator,
    GeneratorError,
    Reasoning,
    ToolCallDelta,
)
from server.history import HISTORY_UNAVAILABLE, HistoryLoader
from server.models import ErrorInfo, GenerateRequest, Message, RegenerateRequest, ToolResult
from server.store import Pair, Reservation, Store, StoredMessage

logger = logging.getLogger(__name__)

# Unwritten events a generation may hold before it waits for the flusher (the database may be
# away): this bounds the memory of every running generation.
MAX_UNWRITTEN_EVENTS = 10_000
# A stop reason meaning "someone else finished this message": end without writing anything.
ABANDONED = ("abandoned", None)
# Rounds of cancel-then-delete before a project's delete gives up (409). No answer starts in the
# project during a round; one is left running only if its cancel kept losing to its writer.
DELETE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Submission:
    pair: Pair
    created: bool


class Runner:
    def __init__(
        self,
        store: Store,
        generator: Generator,
        *,
        flush_store: Store | None = None,
        worker: Callable[[], UUID],
        flush_policy: FlushPolicy,
        max_running_per_user: int = 10,
        history_messages: int = 10,
        on_running: str = "concurrent",
        on_queued: Callable[[UUID, UUID], None] = lambda _owner, _project: None,
        on_deleting: Callable[[list[StoredMessage]], None] = lambda _ended: None,
    ) -> None:
        self.store = store
        self.generator = generator
        self.worker = worker  # the identity this worker writes under (its heartbeat's)
        self.max_running_per_user = max_running_per_user
        self.history_messages = history_messages
        self.on_running = on_running  # the policy of requests that do not say
        self.on_queued = on_queued  # an answer of this project was queued (server/queue.py)
        # These answers just ended, and their rows are about to be deleted (Notifier.deleting)
        self.on_deleting = on_deleting
        self.flusher = Flusher(flush_store or store, worker, flush_policy, on_lost=self.abandon)
        self.tasks: dict[UUID, asyncio.Task[None]] = {}
        self._stop_reasons: dict[UUID, tuple[str, ErrorInfo | None]] = {}
        self._noting: list[set[UUID]] = []  # see noting_starts
        # A project's delete holds one pooled connection while it needs a second (its cancel):
        # one at a time per worker, so that deletes can never hold every connection waiting.
        self._deleting = asyncio.Lock()
        self.draining = False

    async def submit(self, user_id: UUID, project_id: UUID, request: GenerateRequest) -> Submission:
        """Reserve the pair and start its generation (or queue it), or find the pair of a
        repeated request. The request's ``on_running`` policy is applied by the reservation
        (reject, enqueue) or right after it (interrupt); a repeat is found first, whatever the
        policy."""
        if self.draining:
            raise Draining()
        policy = request.on_running or self.on_running
        try:
            reservation = await self.store.reserve_pair(
                project_id=project_id,
                owner_id=user_id,
                content=request.message,
                image_urls=request.image_urls,
                client_request_id=request.client_request_id,
                lease_owner=self.worker(),
                running_cap=self.max_running_per_user,
                on_running=policy,
                tool_results=request.tool_results_json(),
                tools=request.tools_json(),
                tool_choice=request.tool_choice_json(),
            )
        except DuplicateRequest:
            assert request.client_request_id is not None
            existing = await self._existing(user_id, project_id, request)
            if policy == "interrupt":
                # The first attempt may have been answered 503 because the earlier answers could
                # not be cancelled: a repeat cancels those that still run (none, if it had).
                await self._interrupt(existing, user_id)
            return Submission(existing, created=False)
        if reservation is None:
            raise NotFound("no such project")
        return await self._begin(reservation, user_id, policy)

    async def regenerate(
        self, user_id: UUID, project_id: UUID, message_id: UUID, request: RegenerateRequest
    ) -> Submission:
        """Reserve a new variant of the project's latest answer (``message_id``, any variant of
        it) and start it (or queue it), as ``submit`` does a pair; or find the variant of a
        repeated request."""
        if self.draining:
            raise Draining()
        policy = request.on_running or self.on_running
        try:
            reservation = await self.store.regenerate(
                project_id=project_id,
                owner_id=user_id,
                message_id=message_id,
                client_request_id=request.client_request_id,
                lease_owner=self.worker(),
                running_cap=self.max_running_per_user,
                on_running=policy,
            )
        except DuplicateRequest:
            assert request.client_request_id is not None
            existing = await self._existing_variant(
                user_id, project_id, message_id, request.client_request_id
            )
            if policy == "interrupt":
                await self._interrupt(existing, user_id)
            return Submission(existing, created=False)
        if reservation is None:
            raise NotFound(f"no answer with id '{message_id}' in project '{project_id}'")
        return await self._begin(reservation, user_id, policy)

    async def _begin(self, reservation: Reservation, user_id: UUID, policy: str) -> Submission:
        """Start what was just reserved, or leave it to the queue."""
        metrics.GENERATIONS_STARTED.inc()
        pair = reservation.pair
        if reservation.queued:  # any worker starts it when its turn comes
            metrics.GENERATIONS_QUEUED.inc()
            assistant = pair.assistant.message
            self.on_queued(user_id, assistant.project_id)
            return Submission(pair, created=True)
        if policy == "interrupt":
            try:
                await self._interrupt(pair, user_id)
            finally:  # whatever happened there, the new answer runs
                self.start(pair)
        else:
            self.start(pair)
        return Submission(pair, created=True)

    async def _interrupt(self, pair: Pair, user_id: UUID) -> None:
        """Cancel the answers that run before ``pair``, before it starts: an answer that starts
        first may end before the last of them is cancelled (regression: a short answer outlived
        nothing it interrupted only by luck). If they cannot be cancelled (the database is away),
        the request fails (503) rather than report an interruption that did not happen; its
        answer runs all the same, and a repeat of the request (same client_request_id) cancels
        them."""
        assistant = pair.assistant.message
        try:
            closed = await self.store.interrupt(
                assistant.project_id, assistant.sequence, user_id, assistant.variant
            )
        except ServiceUnavailable:
            logger.warning("on_running interrupt: the running answers could not be cancelled")
            raise
        self.cancelled([stored.message.id for stored in closed])

    def cancelled(self, message_ids: list[UUID]) -> None:
        """These answers were just cancelled in the database (by a cancel request, or by an
        interrupting one): stop those this worker runs now rather than on the NOTIFY, and count
        them."""
        for message_id in message_ids:
            self.abandon(message_id)
        metrics.CANCELS.inc(len(message_ids))
        metrics.GENERATIONS_FINISHED.labels("cancelled").inc(len(message_ids))

    async def delete_project(self, project_id: UUID, owner_id: UUID) -> bool:
        """Delete a project: its running answers end ``cancelled`` the way the cancel endpoint
        ends one, and this worker's listeners get that terminal event from memory; then
        everything of the project is deleted (``Store.delete_project``). False: not the
        owner's."""
        for _attempt in range(DELETE_ATTEMPTS):
            async with self._deleting:
                deleted = await self.store.delete_project(
                    project_id, owner_id, ended=self.ended_elsewhere
                )
            if deleted is None:
                return False
            if deleted:
                return True
        raise Conflict("the project's answers could not all be cancelled; try again")

    def ended_elsewhere(self, closed: list[StoredMessage]) -> None:
        """Like ``cancelled``, for answers whose rows are about to be deleted: this worker's
        listeners get the terminal event from memory, not from the table."""
        for stored in closed:
            log = self.flusher.logs.get(stored.message.id)
            if log is not None:
                log.end_with(stored.message, stored.last_event_id)
        self.on_deleting(closed)  # and those that read the table, once the rows are gone
        self.cancelled([stored.message.id for stored in closed])

    async def _existing(self, user_id: UUID, project_id: UUID, request: GenerateRequest) -> Pair:
        assert request.client_request_id is not None
        pair = await self.store.pair_by_request_id(project_id, user_id, request.client_request_id)
        if pair is None:  # the key's pair is in a project that is not the caller's
            raise NotFound("no such project")
        if pair.user.message.content != request.message or _dumped(
            pair.user.message.tool_results
        ) != _dumped(request.tool_results):
            raise Conflict(
                "this client_request_id was already used with a different message",
                code="idempotency_key_reused",
            )
        return pair

    async def _existing_variant(
        self, user_id: UUID, project_id: UUID, message_id: UUID, key: str
    ) -> Pair:
        """The variant a regenerate with ``key`` made, if it is a variant of ``message_id``'s
        sequence; else the key was used for something else (409)."""
        pair = await self.store.variant_by_request_id(project_id, user_id, key)
        target = await self.store.get_message(project_id, message_id, user_id)
        if target is None:
            raise NotFound(f"no answer with id '{message_id}' in project '{project_id}'")
        if pair is None or pair.assistant.message.sequence != target.message.sequence:
            raise Conflict(
                "this client_request_id was already used for another request",
                code="idempotency_key_reused",
            )
        return pair

    def local_log(self, message_id: UUID) -> MessageLog | None:
        return self.flusher.logs.get(message_id)

    @contextlib.contextmanager
    def noting_starts(self) -> Iterator[set[UUID]]:
        """The ids of the generations started while the block runs. ``start`` de-duplicates
        only while a log is in memory; one that started and already finished is known here
        (the queue's sweep of lost replies: ``Queue._resume_claims``). Bounded: only starts
        during the block are kept."""
        started: set[UUID] = set()
        self._noting.append(started)
        try:
            yield started
        finally:
            self._noting.remove(started)

    def start(self, pair: Pair, stored: list[Event] | None = None) -> None:
        """Start ``pair``'s generation, once: the queue's sweep and a late reply of the same
        reservation may both ask (both run in this event loop, so the check is atomic)."""
        if pair.assistant.message.id in self.flusher.logs:
            return
        for started in self._noting:
            started.add(pair.assistant.message.id)
        log = MessageLog(pair, stored or ())
        self.flusher.register(log)
        user = pair.user.message

        async def recent_history() -> list[Message]:
            return await self.store.recent_history(
                user.created_by,
                user.project_id,
                user.sequence,
                self.history_messages,
                tool_turn=user.role == "tool",
            )

        history = HistoryLoader(recent_history, pair.assistant.message.id)
        context = GenerationContext(
            user_message=user,
            assistant_message=pair.assistant.message,
            load_history=history,
            tools=pair.user.tools,
            tool_choice=pair.user.tool_choice,
        )
        task = asyncio.create_task(
            self._run(log, context, history), name=f"generation {log.placeholder.id}"
        )
        self.tasks[log.placeholder.id] = task

    async def _run(
        self, log: MessageLog, context: GenerationContext, history: HistoryLoader
    ) -> None:
        message_id = log.placeholder.id
        metrics.GENERATIONS_RUNNING.inc()
        try:
            finish = await self._produce(log, context)
            log.finish("success", usage=finish.usage, finish_reason=finish.finish_reason)
        except asyncio.CancelledError:
            reason = self._stop_reasons.pop(message_id, None)
            if reason is None:
                raise
            if reason is ABANDONED:
                return
            log.finish(*reason)
        except GeneratorError as exc:
            log.finish("error", ErrorInfo(code=exc.code, message=exc.message))
        except Exception as exc:
            if history.failed_with(exc):  # the history load gave up: the database's failure
                error = ErrorInfo(code="database_unavailable", message=HISTORY_UNAVAILABLE)
            else:
                logger.exception("generator failed for message %s", message_id)
                error = ErrorInfo(code="generator_failed", message="the generator failed")
            log.finish("error", error)
        finally:
            metrics.GENERATIONS_RUNNING.dec()
            self.tasks.pop(message_id, None)
            self.flusher.mark_dirty(log)

    async def _produce(self, log: MessageLog, context: GenerationContext) -> Finish:
        """Run the generator into the log; its ``Finish`` (an empty one if it reported none)."""
        finish = Finish()
        items = self.generator(context)
        async with contextlib.aclosing(items):  # type: ignore[type-var]
            async for item in items:
                if isinstance(item, Finish):
                    finish = item
                    continue
                if isinstance(item, Delta):
                    if not item.text:
                        continue
                    log.add_delta(item.text)
                elif isinstance(item, Reasoning):
                    if not item.text:
                        continue
                    log.add_reasoning(item.text)
                elif isinstance(item, ToolCallDelta):
                    log.add_tool_call(item.index, item.id, item.name, item.arguments)
                else:
                    log.add_progress(item.stage, item.message, item.percent)
                self.flusher.mark_dirty(log)
                while log.unwritten >= MAX_UNWRITTEN_EVENTS:
                    await log.changed()
        return finish

    def stop(self, message_id: UUID, status: str, error: ErrorInfo | None = None) -> bool:
        """Stop a running generation; it ends with ``status``. False if it is not running here."""
        task = self.tasks.get(message_id)
        if task is None or task.done():
            return False
        self._stop_reasons.setdefault(message_id, (status, error))
        _cancel_once(task)
        return True

    def abandon(self, message_id: UUID) -> None:
        """The database says another actor (cancel, the reaper) ended this message: stop
        producing it and let its listeners read the outcome from the table."""
        log = self.flusher.logs.get(message_id)
        if log is not None:
            self.flusher.forget(log)
            log.mark_lost()
        task = self.tasks.get(message_id)
        if task is not None and not task.done():
            self._stop_reasons[message_id] = ABANDONED
            _cancel_once(task)

    async def abandon_ended(self) -> None:
        """Stop the answers this worker runs that someone else ended (a cancel, the reaper)
        while their NOTIFY could not reach it: its LISTEN connection was down. A writer with
        news would find out at its next flush; one waiting for its next token would not."""
        # Only those still generating: an ended one has no generator to stop, and its terminal
        # write may be in flight (committed, not yet answered): it would read as ended here.
        logs = [log for log in self.flusher.logs.values() if log.final_status is None]
        if not logs:
            return
        held = await self.store.held_among(self.worker(), [log.placeholder for log in logs])
        for log in logs:
            message_id = log.placeholder.id
            if message_id not in held and self.flusher.logs.get(message_id) is log:
                logger.warning("answer %s was ended elsewhere; stopping it", message_id)
                self.abandon(message_id)

    def abandon_all(self) -> None:
        """This worker's heartbeat expired: every answer it was writing is another's to close."""
        for message_id in {*self.flusher.logs, *self.tasks}:
            self.abandon(message_id)

    async def shutdown(self, grace: float) -> None:
        """Refuse new work, give running generations ``grace`` seconds, then end the rest."""
        self.draining = True
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=grace)
        shutdown = ErrorInfo(code="server_shutdown", message="the server shut down")
        for message_id in list(self.tasks):
            self.stop(message_id, "error", shutdown)
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=5)


def _dumped(results: list[ToolResult] | None) -> list[dict[str, str]] | None:
    return None if results is None else [r.model_dump() for r in results]


def _cancel_once(task: asyncio.Task[None]) -> None:
    """Cancel a generation's task unless a cancellation is already on its way.

    Regression: cancel, its NOTIFY and the fenced flush can each ask within milliseconds; a second
    cancel would land inside the generator's cleanup and cut it short (the OpenAI generator's
    upstream connection stayed open until shutdown)."""
    if not task.cancelling():
        task.cancel()
