"""A database blip as an answer starts is the database's, never the generator's.

An answer's history (``recent_history``) is read once it starts, from inside the generator. The
app reaches PostgreSQL through the fault proxy (``tests/faults/proxy.py``), which takes the
database away for a moment at the very request that runs the history query: every connection is
reset and new ones are refused. A blip is ridden out; a longer outage ends the answer with
``database_unavailable``. The model server is the scripted one of ``test_openai_generator``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from server.generators.base import Delta, GenerationContext, Item
from server.history import HISTORY_RETRY_SECONDS
from tests.faults.proxy import FaultProxy
from tests.integration.test_openai_generator import (
    SYSTEM_PROMPT,
    FakeModel,
    Outcome,
    answer,
    openai_settings,
)
from tests.support import create_project, create_user, generate, running_server, settings_for

# Only recent_history's text holds this (sql/queries.sql).
HISTORY_QUERY = b"WITH turns AS ("
BLIP_SECONDS = 1.0


async def test_a_database_blip_as_an_openai_answer_starts_is_ridden_out(
    database_url: str, proxy: FaultProxy
) -> None:
    """Regression: the history query's connection was cut and the answer ended
    ``generator_failed`` at once; and the wait for the database counted against the model's
    first token (``upstream_timeout``)."""
    token = await create_user(database_url, "alice")
    async with FakeModel([answer("First."), answer("Second.")]) as model:
        settings = openai_settings(proxy.url_for(database_url), model.base_url)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            first = Outcome(await generate(client, project, "One?"))
            assert first.terminal.event == "done", first.terminal.data
            proxy.blip_on(HISTORY_QUERY, BLIP_SECONDS)
            second = Outcome(await generate(client, project, "Two?"))
            await model.settled(2.0)
    assert proxy.stats.blips == 1, "the blip met the history query"
    assert second.terminal.event == "done", second.terminal.data
    assert (second.message["status"], second.message["content"]) == ("success", "Second.")
    # The history was read after all: the model got the first turn.
    assert model.requests[1].body["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": "First."},
        {"role": "user", "content": "Two?"},
    ]


async def test_an_outage_longer_than_the_retries_ends_database_unavailable(
    database_url: str, proxy: FaultProxy
) -> None:
    """Regression: it ended ``generator_failed``, as if the model server or our code were at
    fault."""
    token = await create_user(database_url, "alice")
    async with FakeModel([answer("Never sent.")]) as model:
        settings = openai_settings(proxy.url_for(database_url), model.base_url)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            proxy.blip_on(HISTORY_QUERY, HISTORY_RETRY_SECONDS + 3)
            outcome = Outcome(await generate(client, project, "Hello?"))
    assert proxy.stats.blips == 1, "the blip met the history query"
    assert outcome.error["code"] == "database_unavailable"
    assert (outcome.message["status"], outcome.message["content"]) == ("error", "")
    assert outcome.message["error"]["code"] == "database_unavailable"
    assert model.requests == [], "the model was never asked"


class HistoryCounter:
    """A generator of someone else's, which reads the conversation too."""

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        history = await context.load_history()
        yield Delta(f"{len(history)} earlier messages")


class WrapsHistoryErrors:
    """A generator that reports a failed history load in words of its own."""

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        try:
            await context.load_history()
        except Exception as exc:
            raise RuntimeError("no conversation, no answer") from exc
        yield Delta("never")


class BrokenAfterHistory:
    """A generator with a bug of its own, once it has the conversation."""

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        await context.load_history()
        yield Delta("so far so good; ")
        raise RuntimeError("a bug of the generator's own")


async def test_a_database_blip_is_ridden_out_whatever_the_generator(
    database_url: str, proxy: FaultProxy
) -> None:
    """Regression: as with the openai generator, any generator that reads the history ended
    ``generator_failed``."""
    token = await create_user(database_url, "alice")
    settings = settings_for(proxy.url_for(database_url))
    async with (
        running_server(settings, generator=HistoryCounter()) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        first = Outcome(await generate(client, project, "One?"))
        proxy.blip_on(HISTORY_QUERY, BLIP_SECONDS)
        second = Outcome(await generate(client, project, "Two?"))
    assert proxy.stats.blips == 1, "the blip met the history query"
    assert (first.terminal.event, first.deltas) == ("done", "0 earlier messages")
    assert (second.terminal.event, second.deltas) == ("done", "2 earlier messages")


async def test_an_outage_is_database_unavailable_even_when_the_generator_wraps_it(
    database_url: str, proxy: FaultProxy
) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(proxy.url_for(database_url))
    async with (
        running_server(settings, generator=WrapsHistoryErrors()) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        proxy.blip_on(HISTORY_QUERY, HISTORY_RETRY_SECONDS + 3)
        outcome = Outcome(await generate(client, project, "Hello?"))
    assert proxy.stats.blips == 1, "the blip met the history query"
    assert outcome.error["code"] == "database_unavailable"


async def test_a_generators_own_bug_after_a_blip_is_still_generator_failed(
    database_url: str, proxy: FaultProxy
) -> None:
    """The blip was ridden out: what failed after it is the generator, and says so."""
    token = await create_user(database_url, "alice")
    settings = settings_for(proxy.url_for(database_url))
    async with (
        running_server(settings, generator=BrokenAfterHistory()) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        proxy.blip_on(HISTORY_QUERY, BLIP_SECONDS)
        outcome = Outcome(await generate(client, project, "Hello?"))
    assert proxy.stats.blips == 1, "the blip met the history query"
    assert outcome.error["code"] == "generator_failed"
    assert outcome.message["content"] == "so far so good; "
