"""`waiqin-poller check`: validate the configuration and reach the API, the store and Kafka."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import click

from poller.config import Settings
from poller.errors import PollerError, SourceAuthError
from poller.fetch import WaiqinClient
from poller.models import Window, beijing_now
from poller.publish import KafkaPublisher
from poller.store import open_store
from poller.window import beijing_date

PASS, WARN, FAIL = "✓", "!", "✗"


async def run(settings: Settings) -> bool:
    """Print one verdict line per item; True when nothing failed (warnings allowed)."""
    _line(PASS, "configuration", "every variable is valid")
    if settings.waiqin.is_cleartext_remote:
        _line(WARN, "configuration",
              "WAIQIN_BASE_URL is plain http to a remote host: the digest and task data travel in clear")
    verdicts = [
        await _check("store", lambda: _store(settings)),
        await _check("API queryTask", lambda: _query_task(settings)),
        await _query_task_type(settings),
        await _check("Kafka", lambda: _kafka(settings)),
    ]
    return all(verdicts)


async def _check(item: str, probe: Callable[[], Awaitable[str]]) -> bool:
    try:
        detail = await probe()
    except PollerError as exc:
        _line(FAIL, item, f"{type(exc).__name__}: {exc}")
        return False
    _line(PASS, item, detail)
    return True


async def _store(settings: Settings) -> str:
    store = open_store(settings.store)
    try:
        await store.start()
        return f"{settings.store.backend} store holds {await store.count_tasks()} tasks"
    finally:
        await store.stop()


async def _query_task(settings: Settings) -> str:
    today = beijing_date(beijing_now())
    # One row of today's window: a signed request that costs the API almost nothing.
    async with WaiqinClient(settings.waiqin.model_copy(update={"page_rows": 1})) as client:
        async with contextlib.aclosing(client.iter_pages(Window(modify_from=today, modify_to=today))) as pages:
            first = await anext(pages)
    return f"signed request accepted by {settings.waiqin.base_url} ({len(first.records)} record)"


async def _query_task_type(settings: Settings) -> bool:
    """A refused queryTaskType is a warning: task events flow without type names."""
    item = "API queryTaskType"
    try:
        async with WaiqinClient(settings.waiqin) as client:
            await client.query_task_types(["0"])
    except SourceAuthError as exc:
        _line(WARN, item, f"refused, task events will carry no type names: {exc}")
        return True
    except PollerError as exc:
        _line(FAIL, item, f"{type(exc).__name__}: {exc}")
        return False
    _line(PASS, item, "granted")
    return True


async def _kafka(settings: Settings) -> str:
    publisher = KafkaPublisher(settings.kafka, settings.topics)
    try:
        await publisher.start()
        await publisher.ping()
    finally:
        await publisher.stop()
    names = ", ".join((settings.topics.tasks, settings.topics.task_types, settings.topics.dead_letter))
    return f"{settings.kafka.bootstrap_servers} reachable; topics {names}"


def _line(mark: str, item: str, detail: str) -> None:
    colour = {PASS: "green", WARN: "yellow", FAIL: "red"}[mark]
    click.echo(f"{click.style(mark, fg=colour)} {item}: {detail}")
