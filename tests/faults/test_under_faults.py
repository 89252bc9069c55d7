"""Fault injection: every invariant of API.md holds after PostgreSQL and the network misbehave.

Two ``python -m server`` processes reach PostgreSQL (the suite's own, so that stopping it harms
no other test) only through the fault proxy: their pools and their LISTEN connections. While the
seed's fault schedule runs (``schedule.py``), the seed's clients (``script.py``) start
generations on both processes, hang up, resume on the other one, cancel and walk away. When the
faults have healed, the checks of ``invariants.py`` run, and each process must still answer.

Every third seed runs with ``GENERATOR=openai`` against a fake model server
(``upstream.py``), so that the history loads of the answers' starts meet the faults too.

A failure names its seed; ``FAULT_SEED=<seed> make test PYTEST_ARGS=tests/faults`` reruns the
same schedule and the same script (the timing, and so the exact interleaving, differs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.embedded import EmbeddedPostgres
from server.generators.demo import demo_answer
from server.heartbeat import renewal_interval
from tests.citus_cluster import CitusNode
from tests.fake_openai import FakeModel
from tests.faults import invariants
from tests.faults.clients import RETRYABLE, Client, ClientRecord, read_stream
from tests.faults.conftest import fault_window
from tests.faults.proxy import FaultProxy
from tests.faults.report import (
    Run,
    failure_message,
    rerun_command,
    save_evidence,
    summary,
    write_report,
)
from tests.faults.schedule import (
    LEASE_SECONDS,
    LONG_OUTAGE,
    FaultRunner,
    Restartable,
    fault_schedule,
)
from tests.faults.script import PROJECTS_PER_USER, USERS, client_script
from tests.faults.upstream import demo_like
from tests.faults.watch import Watcher, check_counts, counts
from tests.processes import ServerProcess, Spawn
from tests.support import create_project, create_user

pytestmark = pytest.mark.slow

DEMO_DELTAS, DEMO_DELTA_MS = 30, 50
QUEUE_POLL_SECONDS = 5.0  # the default, pinned: the bound on a queued answer's wait uses it
SERVER_SETTINGS = {
    "lease_seconds": LEASE_SECONDS,
    "demo_deltas": DEMO_DELTAS,
    "demo_delta_ms": DEMO_DELTA_MS,
    "ping_seconds": 1,
    "shutdown_grace_seconds": 1,
    "max_running_per_user": 1000,
    "max_streams_per_user": 100_000,
    "rate_per_minute": 100_000,
    "rate_burst": 100_000,
    "queue_poll_seconds": QUEUE_POLL_SECONDS,
}
OPENAI_SETTINGS = {
    "generator": "openai",
    "openai_model": "test-model",
    "openai_first_token_seconds": 10,
    "openai_idle_seconds": 10,
    "openai_total_seconds": 60,
}
# An answer may end ``interrupted`` only if its worker lost it: went without any reply from
# PostgreSQL (the proxy's reply log) for longer than this while the answer ran. The heartbeat
# expires LEASE_SECONDS after its last renewal, and a worker that reaches the database renews
# it every renewal interval, so the last renewal before a silence may precede the silence's
# start by up to one interval: a silence of LEASE_SECONDS minus that interval can cost a lease;
# a shorter one cannot.
LOST_AFTER = LEASE_SECONDS - renewal_interval(LEASE_SECONDS)
# After the long outage, a burst answer's start is refused (503, Retry-After) at most this long:
# the pools reconnect and each worker registers a fresh heartbeat at once. It bounds waiting.
BURST_ACCEPTED_WITHIN = 6.0
# A queued answer whose turn has come is taken by a worker at the latest at the queue's next
# poll (QUEUE_POLL_SECONDS), if every notification was lost; unless the database is away then:
# the longest outage of the schedule (LONG_OUTAGE), and a slack for a slow shared machine. It
# bounds waiting, it measures no speed.
QUEUE_TURN_BOUND = QUEUE_POLL_SECONDS + LONG_OUTAGE + 3.0
# How soon after the faults heal every message must be terminal. A message that its worker runs
# finishes within the rest of its generation (DEMO_DELTAS x DEMO_DELTA_MS = 1.5 s) and the
# flusher's backoff (at most 2 s). A message that no worker runs any more (the reply to its
# reservation was lost, or its worker lost its lease in an outage) must be closed by a reaper:
# whatever lease it had was last renewed before the heal, so it runs out within LEASE_SECONDS,
# and a reaper looks at least every min(LEASE_SECONDS / 3, 5) seconds (server/reaper.py). The
# slack covers those few seconds of work, the pools reconnecting and a slow shared machine: it
# bounds waiting, it measures no speed.
REAP_INTERVAL = min(LEASE_SECONDS / 3, 5.0)
SLACK_SECONDS = 12.0
TERMINAL_BOUND = LEASE_SECONDS + REAP_INTERVAL + SLACK_SECONDS
CLIENT_GRACE = 20.0  # then, for the clients to read their streams' ends
FRESH_TIMEOUT = 30.0  # for a new generation on each process, once everything is over
STARTUP_TIMEOUT = 60.0  # for a server process to answer /healthz


async def test_invariants_hold_under_faults(
    fault_seed: int,
    fault_postgres: EmbeddedPostgres | CitusNode,
    fault_database: str,
    postgres_logs: list[Path],
    spawn: Spawn,
) -> None:
    window = fault_window()
    print(f"rerun: {rerun_command(fault_seed, window)}")
    tokens = [await create_user(fault_database, f"user{u}") for u in range(USERS)]
    database = fault_database.rsplit("/", 1)[1]
    generator = generator_for(fault_seed)
    logs_from = {log: log.stat().st_size if log.exists() else 0 for log in postgres_logs}
    model_problems: list[str] = []
    model = FakeModel([demo_like(DEMO_DELTAS, DEMO_DELTA_MS / 1000, model_problems)])
    async with model, FaultProxy(fault_postgres.port, seed=fault_seed, origins=2) as proxy:
        settings: dict[str, Any] = dict(SERVER_SETTINGS)
        if generator == "openai":
            settings |= OPENAI_SETTINGS | {"openai_base_url": model.base_url}
        servers = [
            spawn(f"P{i}", f"{proxy.url_base_for(i)}/{database}", **settings) for i in (0, 1)
        ]
        for server in servers:
            server.start()
        await asyncio.gather(*(server.wait_ready(STARTUP_TIMEOUT) for server in servers))
        async with http_clients(servers, tokens) as http:
            run = Run(fault_seed, window, await create_projects(http), stats=proxy.stats)
            run.generator = generator
            watcher = Watcher(fault_database, time.monotonic())
            watching = asyncio.create_task(watcher.run())
            try:
                await faults_and_clients(run, proxy, fault_postgres, http, fault_database)
                run.violations += await check_everything(run, http, fault_database)
            finally:
                watcher.stop()
                await watching
            run.violations += watcher.violations()
            run.violations += watcher.starved(QUEUE_TURN_BOUND)
            run.violations += await check_interrupted(run, proxy, servers, watcher, fault_database)
            run.violations += model_problems
            run.model_requests = len(model.requests)
    run.violations += [f"{s.name} exited: {s.log_tail(500)}" for s in servers if not s.running]
    for server in servers:
        lines = server.log_path.read_text(errors="replace").splitlines()
        run.violations += invariants.check_log_lines(server.name, lines)
    postgres_says = ""
    for path, start in logs_from.items():  # this run's part: a deadlock is logged there
        with path.open("rb") as log:
            log.seek(start)
            postgres_says += log.read().decode(errors="replace")
    run.violations += invariants.check_log_lines("PostgreSQL", postgres_says.splitlines())
    print(summary(run))
    write_report(run)
    if run.violations or os.environ.get("FAULT_EVIDENCE"):
        rows = await invariants.message_rows(fault_database)
        save_evidence(run, servers, rows, postgres_says)
    assert run.stats.cut + run.stats.replies_lost + run.stats.refused > 0, "no fault hit"
    assert not run.violations, failure_message(run)


@contextlib.asynccontextmanager
async def http_clients(
    servers: Sequence[ServerProcess], tokens: Sequence[str]
) -> AsyncIterator[list[list[httpx.AsyncClient]]]:
    """``http[user][process]``: each user's client of each process."""
    timeout = httpx.Timeout(30.0, connect=10.0)
    # Idle connections expire before uvicorn's keep-alive (5 s) closes them (tests/support.py).
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=2.0)
    async with contextlib.AsyncExitStack() as stack:
        yield [
            [
                await stack.enter_async_context(
                    server.client(token, timeout=timeout, limits=limits)
                )
                for server in servers
            ]
            for token in tokens
        ]


def generator_for(seed: int) -> str:
    """Every third seed (3 among the CI seeds) runs with the openai generator."""
    return "openai" if seed % 3 == 0 else "demo"


async def create_projects(http: list[list[httpx.AsyncClient]]) -> list[list[str]]:
    """``projects[user][i]``: the script's projects, the burst's, and one more each for the
    last checks."""
    projects = []
    for user, clients in enumerate(http):
        ids = []
        for i in range(PROJECTS_PER_USER + 2):
            ids.append(await create_project(clients[0], f"u{user} p{i}"))
        projects.append(ids)
    return projects


async def faults_and_clients(
    run: Run,
    proxy: FaultProxy,
    postgres: Restartable,
    http: list[list[httpx.AsyncClient]],
    database_url: str,
) -> None:
    """The schedule and the clients together; then wait for every answer to end."""
    run.records = [
        ClientRecord(plan, run.projects[plan.user][plan.project])
        for plan in client_script(run.seed, run.window)
    ]
    began = time.monotonic()
    faults = FaultRunner(proxy, postgres, began)
    tasks = [
        asyncio.create_task(Client(r, http[r.plan.user], began, faults.outage_over).run())
        for r in run.records
    ]
    try:
        await faults.run(fault_schedule(run.seed, run.window))
        healed = time.monotonic()
        run.healed_after, run.fault_log = healed - began, faults.log
        # Exact at any moment, answers still running or not (watch.py says why).
        run.violations += check_counts(await counts(database_url), "at the heal", all_ended=False)
        run.violations += await wait_until_terminal(run, database_url, healed)
        if run.terminal_after is not None:
            ended = await counts(database_url)
            run.violations += check_counts(ended, "once every answer ended", all_ended=True)
        await asyncio.wait(tasks, timeout=CLIENT_GRACE)
    finally:
        run.outage_ended = faults.outage_ended
        run.fault_log = faults.log
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task, record in zip(tasks, run.records, strict=True):
        if not task.cancelled() and task.exception() is not None:
            record.problems.append(f"the client failed: {task.exception()!r}")


async def wait_until_terminal(run: Run, database_url: str, healed: float) -> list[str]:
    """Poll until every generation asked for exists and is terminal, or the bound has passed
    (from the heal, or from a client's last request if that came later)."""
    while True:
        late = max((r.last_request_at for r in run.records), default=healed)
        deadline = max(healed, min(late, healed + CLIENT_GRACE)) + TERMINAL_BOUND
        stuck = await invariants.unfinished(database_url)
        started = all(r.message_id is not None or r.finished for r in run.records)
        if not stuck and started:
            run.terminal_after = time.monotonic() - healed
            return []
        if time.monotonic() > deadline:
            if not stuck:
                return []  # a client that never got its generation says so itself
            rows = "\n  ".join(str(row) for row in stuck[:20])
            return [
                f"{len(stuck)} message(s) not terminal {TERMINAL_BOUND:g}s after the faults "
                f"healed (LEASE_SECONDS {LEASE_SECONDS:g} + reaper tick {REAP_INTERVAL:g} + "
                f"slack {SLACK_SECONDS:g}):\n  {rows}"
            ]
        await asyncio.sleep(0.25)


async def check_everything(
    run: Run, http: list[list[httpx.AsyncClient]], database_url: str
) -> list[str]:
    found = []
    for i in range(2):
        found += await fresh_generation(http[0][i], run.fresh_project, f"P{i}")
    found += check_counts(await counts(database_url), "after the fresh answers", all_ended=True)
    rows = await invariants.message_rows(database_url)
    found += invariants.check_sequences(rows)
    scripted = [row for row in rows if row.project_id != run.fresh_project]
    found += invariants.check_pairs_match_clients(scripted, run.records)
    status = {row.id: row.status for row in rows}
    for user, clients in enumerate(http):
        user_rows = [row for row in rows if row.project_id in run.projects[user]]
        messages, replays, problems = await invariants.read_back(clients, user_rows)
        found += problems
        for message_id, message in messages.items():
            found += invariants.check_log(message, replays[message_id], status[message_id])
            if message["project_id"] != run.fresh_project:
                run.outcomes[invariants.outcome(message)] += 1
        for record in (r for r in run.records if r.plan.user == user):
            message_id = record.message_id or ""
            found += invariants.check_client(
                record, messages.get(message_id), replays.get(message_id)
            )
            if record.plan.style == "burst":
                found += check_burst(run, record, messages.get(message_id))
    return found


def check_burst(run: Run, record: ClientRecord, message: dict[str, Any] | None) -> list[str]:
    """A new answer right after the long outage: refused only with 503s (``Retry-After``: the
    clients check it) and only for a few seconds, then accepted; and it does not fail (it may
    end ``interrupted`` only if a later fault cut its worker off: ``check_interrupted``)."""
    key = f"{record.plan.key} (burst, {record.plan.on_running})"
    found = []
    refused = [status for status in record.starts if status not in (200, 202)]
    if any(status not in (0, 503) for status in refused):
        found.append(f"{key}: its starts were answered {record.starts}")
    if record.accepted_at is None or run.outage_ended is None:
        return [*found, f"{key}: never accepted (starts: {record.starts})"]
    waited = record.accepted_at - run.outage_ended
    if waited > BURST_ACCEPTED_WITHIN:
        found.append(
            f"{key}: accepted {waited:.1f}s after the long outage ended (refusals: "
            f"{record.starts}), not within {BURST_ACCEPTED_WITHIN:g}s"
        )
    if message is not None and invariants.outcome(message) not in ("success", "error/interrupted"):
        found.append(f"{key}: accepted after the outage, yet ended {invariants.outcome(message)}")
    return found


async def check_interrupted(
    run: Run,
    proxy: FaultProxy,
    servers: Sequence[ServerProcess],
    watcher: Watcher,
    database_url: str,
) -> list[str]:
    """Every answer that ended ``interrupted`` had a worker that lost the database for longer
    than ``LOST_AFTER`` while it ran (no process stops in this suite)."""
    now = time.time()
    silences = {
        server.pid: proxy.replies[i].silences(until=now) for i, server in enumerate(servers)
    }
    answers = await invariants.interrupted_answers(database_url)
    holders = {answer.id: watcher.pids_of(answer.id) for answer in answers}
    run.silences = {
        server.name: [round(b - a, 1) for a, b in silences[server.pid] if b - a > LOST_AFTER]
        for server in servers
    }
    began = time.time() - (time.monotonic() - watcher.began)
    return invariants.check_interrupted(answers, silences, holders, LOST_AFTER, began)


async def fresh_generation(client: httpx.AsyncClient, project: str, name: str) -> list[str]:
    """A new answer on a process, once everything is over: it must end with ``done``."""
    prompt = f"A fresh answer on {name} after the faults"
    body = {"message": prompt, "client_request_id": f"fresh-{name}"}
    url = f"/api/projects/{project}/generations"
    deadline = time.monotonic() + FRESH_TIMEOUT
    while time.monotonic() < deadline:
        try:
            reply = await asyncio.wait_for(
                read_stream(client, "POST", url, stop_after=None, json=body), FRESH_TIMEOUT
            )
        except TimeoutError:
            return [f"fresh answer on {name}: no end within {FRESH_TIMEOUT:g}s"]
        if reply.status in RETRYABLE:
            await asyncio.sleep(reply.retry_after)
            continue
        names = [e.event for e in reply.events]
        content = invariants.joined_deltas(reply.events)
        if reply.status != 200 or not names or names[-1] != "done" or reply.detail:
            return [f"fresh answer on {name}: {reply.status} {names[-3:]} {reply.detail}"]
        if content != demo_answer(prompt):
            return [f"fresh answer on {name}: content {content!r}"]
        return []
    return [f"fresh answer on {name}: still refused after {FRESH_TIMEOUT:g}s"]
