"""Clients that carry out the script (``tests/faults/script.py``) and record what they received.

A client retries what the contract says to retry: a 503 or 429 (after ``Retry-After``, capped; one
without it is a problem),
and a stream that ends without its terminal event (it resumes with ``Last-Event-ID`` on the other
process). Every piece of every stream is kept, so that the checks can tell whether an event came
twice, out of order, or not at all. Anything the contract does not allow (a 500, a 204 before
the client has the terminal event, a malformed frame, a 503 or 429 without ``Retry-After``) is
written down as a problem and the client carries on, so that one problem does not hide the
others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx

from tests.faults.script import Plan
from tests.support import events_only, parse_frames

TERMINAL = frozenset({"done", "error", "cancelled"})
RETRYABLE = frozenset({429, 503})
MAX_RETRY_WAIT = 1.0
RECONNECT_PAUSE = 0.2


@dataclass(frozen=True, slots=True)
class Received:
    """One event as it came over the wire."""

    id: int
    event: str
    data: str  # the exact data line


@dataclass
class Reply:
    status: int  # 0: no response at all
    events: list[Received]
    retry_after: float = 0.0
    detail: str = ""  # what went wrong, if anything
    broken: bool = False  # the connection failed in the middle of the stream
    has_retry_after: bool = True  # a 429 or 503 said when to retry
    first_at: float | None = None  # monotonic: when its first event came


@dataclass
class ClientRecord:
    plan: Plan
    project_id: str
    message_id: str | None = None
    pieces: list[list[Received]] = field(default_factory=list)  # one per stream read
    starts: list[int] = field(default_factory=list)  # statuses of the start requests
    cancels: list[int] = field(default_factory=list)  # statuses of the cancel requests
    problems: list[str] = field(default_factory=list)  # what the contract does not allow
    notes: list[str] = field(default_factory=list)  # allowed, but worth counting
    retries: int = 0
    last_request_at: float = 0.0  # monotonic: its generation exists by then, if at all
    first_request_at: float | None = None  # monotonic: its first start request
    accepted_at: float | None = None  # monotonic: when a start request was accepted
    finished: bool = False

    @property
    def events(self) -> list[Received]:
        return [event for piece in self.pieces for event in piece]

    @property
    def cursor(self) -> int:
        events = self.events
        return events[-1].id if events else 0

    @property
    def has_terminal(self) -> bool:
        return any(event.event in TERMINAL for event in self.events)

    @property
    def cancel_accepted(self) -> bool:
        return 202 in self.cancels


async def read_stream(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    stop_after: int | None,
    into: list[Received] | None = None,
    **kwargs: Any,
) -> Reply:
    """One request; for a 200, its events until the stream ends or ``stop_after`` (hang up).
    Events are appended to ``into`` as they arrive (what was received stays received, even if
    the read is cancelled)."""
    events: list[Received] = [] if into is None else into
    status = 0
    first_at = None
    try:
        async with client.stream(method, url, **kwargs) as response:
            status = response.status_code
            if status != 200:
                body = (await response.aread()).decode(errors="replace")
                return _reply_of(response, body)
            buffer = b""
            async for chunk in response.aiter_raw():
                buffer += chunk
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    events.extend(_received(block + b"\n\n"))
                    if first_at is None and events:
                        first_at = time.monotonic()
                    if stop_after is not None and len(events) >= stop_after:
                        return Reply(200, events, first_at=first_at)
            detail = f"a partial frame at the end: {buffer[:100]!r}" if buffer else ""
            return Reply(200, events, detail=detail, first_at=first_at)
    except httpx.TransportError as exc:
        detail = f"{type(exc).__name__}: {exc}"
        return Reply(status, events, MAX_RETRY_WAIT, detail, broken=True, first_at=first_at)


def _received(block: bytes) -> list[Received]:
    found = []
    for frame in events_only(parse_frames(block)):
        assert frame.id is not None and frame.event is not None, frame
        assert len(frame.data_lines) == 1, f"expected one data line: {frame}"
        found.append(Received(frame.id, frame.event, frame.data_lines[0]))
    return found


def _reply_of(response: httpx.Response, body: str | None = None) -> Reply:
    text = response.text if body is None else body
    return Reply(
        response.status_code,
        [],
        _retry_after(response),
        text[:200],
        has_retry_after="retry-after" in response.headers,
    )


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", "0.5")), MAX_RETRY_WAIT)
    except ValueError:
        return MAX_RETRY_WAIT


class Client:
    """One plan, carried out against the two processes (``servers[i]`` is process i's client)."""

    def __init__(
        self,
        record: ClientRecord,
        servers: Sequence[httpx.AsyncClient],
        began: float,
        outage_over: asyncio.Event,
    ) -> None:
        """``outage_over``: set when the long outage has ended (a burst's signal to start)."""
        self.record = record
        self.plan = record.plan
        self.servers = servers
        self.began = began
        self.outage_over = outage_over

    async def run(self) -> None:
        if self.plan.style == "burst":
            await self.outage_over.wait()
        else:
            await asyncio.sleep(max(0.0, self.began + self.plan.at - time.monotonic()))
        style = self.plan.style
        if style == "detach":
            await self._detach()
        else:
            first = self.plan.reads[0] if self.plan.reads else None
            if await self._start(self.plan.server, first):
                await self._after_start()
        self.record.finished = True

    async def _after_start(self) -> None:
        other = 1 - self.plan.server
        if self.plan.style == "hop":
            for count in self.plan.reads[1:]:
                if self.record.has_terminal:
                    return
                await self._resume(other, count)
                other = 1 - other
        elif self.plan.style == "cancel":
            await self._cancel(self.plan.cancel_on)
        elif self.plan.style == "abandon":
            return
        await self._follow_to_end(other)

    async def _detach(self) -> None:
        plan = self.plan
        body = self._body
        headers = {"Accept": "application/json"}
        while True:
            self._requesting()
            try:
                response = await self.servers[plan.server].post(
                    self._generations_url, json=body, headers=headers
                )
            except httpx.TransportError as exc:
                await self._note_then_wait(f"POST (json) on {plan.server}: {exc!r}")
                continue
            self.record.starts.append(response.status_code)
            if response.status_code == 202:
                self.record.message_id = response.json()["assistant_message"]["id"]
                self.record.accepted_at = time.monotonic()
                break
            await self._refused(f"POST (json) on {plan.server}", _reply_of(response))
        if plan.attach_after is not None:
            await asyncio.sleep(plan.attach_after)
            await self._follow_to_end(1 - plan.server)

    async def _start(self, server: int, stop_after: int | None) -> bool:
        """Start (or find, on a retry) the generation and read its stream; False: never did."""
        while True:
            self._requesting()
            method, url, kwargs = self._start_request()
            with self._piece() as piece:
                reply = await read_stream(
                    self.servers[server], method, url, stop_after=stop_after, into=piece, **kwargs
                )
            self.record.starts.append(reply.status)
            if reply.status == 200 and reply.events:
                self._take(reply, f"start on {server}")
                start = reply.events[0]
                if start.event != "start" or start.id != 1:
                    self.record.problems.append(f"the first event is not start 1: {start}")
                    return False
                self.record.message_id = _assistant_id(start)
                self.record.accepted_at = reply.first_at
                return True
            if reply.status == 200:
                self.record.problems.append(f"start on {server}: a stream without events")
            await self._refused(f"start on {server}", reply)

    def _start_request(self) -> tuple[str, str, dict[str, Any]]:
        plan = self.plan
        if plan.eventsource:
            return "GET", self._eventsource_url, {}
        return "POST", self._generations_url, {"json": self._body}

    @property
    def _body(self) -> dict[str, str]:
        plan = self.plan
        return {
            "message": plan.prompt,
            "client_request_id": plan.key,
            "on_running": plan.on_running,
        }

    def _requesting(self) -> None:
        now = time.monotonic()
        self.record.last_request_at = now
        if self.record.first_request_at is None:
            self.record.first_request_at = now

    async def _resume(self, server: int, stop_after: int | None) -> bool:
        """One reconnection from the cursor; False when there is nothing more to read."""
        while True:
            cursor = self.record.cursor
            kwargs = {"headers": {"Last-Event-ID": str(cursor)}}
            url = self._eventsource_url if self.plan.eventsource else self._events_url
            with self._piece() as piece:
                reply = await read_stream(
                    self.servers[server], "GET", url, stop_after=stop_after, into=piece, **kwargs
                )
            if reply.status == 200:
                self._take(reply, f"resume on {server} from {cursor}")
                if self.record.cursor == cursor:
                    await asyncio.sleep(RECONNECT_PAUSE)  # an empty stream: do not spin
                return True
            if reply.status == 204:
                if not self.record.has_terminal:
                    self.record.problems.append(
                        f"204 on {server} from Last-Event-ID {cursor} before the terminal event"
                    )
                return False
            await self._refused(f"resume on {server} from {cursor}", reply)

    async def _follow_to_end(self, server: int) -> None:
        """Reconnect, alternating processes, until the terminal event has come."""
        while not self.record.has_terminal:
            if not await self._resume(server, None):
                return
            server = 1 - server

    async def _cancel(self, server: int) -> None:
        url = f"/api/projects/{self.record.project_id}/messages/{self.record.message_id}/cancel"
        while True:
            try:
                response = await self.servers[server].post(url)
            except httpx.TransportError as exc:
                await self._note_then_wait(f"cancel on {server}: {exc!r}")
                continue
            self.record.cancels.append(response.status_code)
            if response.status_code in (202, 409):
                return
            await self._refused(f"cancel on {server}", _reply_of(response))

    @contextlib.contextmanager
    def _piece(self) -> Iterator[list[Received]]:
        """A new piece of the record, filled as events arrive; dropped if it stays empty."""
        piece: list[Received] = []
        self.record.pieces.append(piece)
        try:
            yield piece
        finally:
            if not piece:
                self.record.pieces.remove(piece)

    def _take(self, reply: Reply, where: str) -> None:
        """A stream that answered 200: say how it ended if not cleanly."""
        if reply.broken:
            self.record.notes.append(f"{where}: the stream broke: {reply.detail}")
        elif reply.detail:
            self.record.problems.append(f"{where}: {reply.detail}")

    async def _refused(self, what: str, reply: Reply) -> None:
        """Not the answer hoped for: wait and let the caller try again (a 503 or 429 is the
        contract's way of saying so; anything else is a problem, or a note when no response
        came at all)."""
        if reply.status in RETRYABLE:
            self.record.retries += 1
            if not reply.has_retry_after:
                self.record.problems.append(f"{what}: {reply.status} without Retry-After")
            await asyncio.sleep(reply.retry_after)
        elif reply.status == 0:
            await self._note_then_wait(f"{what}: no response: {reply.detail}")
        else:
            self.record.problems.append(f"{what}: {reply.status} {reply.detail}")
            await asyncio.sleep(MAX_RETRY_WAIT)

    async def _note_then_wait(self, note: str) -> None:
        self.record.notes.append(note)
        await asyncio.sleep(MAX_RETRY_WAIT)

    @property
    def _generations_url(self) -> str:
        return f"/api/projects/{self.record.project_id}/generations"

    @property
    def _events_url(self) -> str:
        return f"/api/projects/{self.record.project_id}/messages/{self.record.message_id}/events"

    @property
    def _eventsource_url(self) -> str:
        query = {
            "projectId": self.record.project_id,
            "message": self.plan.prompt,
            "clientRequestId": self.plan.key,
            "onRunning": self.plan.on_running,
        }
        return f"/api/generate-stream?{urlencode(query)}"


def _assistant_id(start: Received) -> str:
    found: str = json.loads(start.data)["assistant_message"]["id"]
    return found
