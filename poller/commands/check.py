"""`waiqin-poller check`: validate the configuration and reach the API, the store and Kafka, fast."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import click

from poller import logs
from poller.commands import budget, hints
from poller.config import Settings
from poller.errors import PollerError, SourceAuthError
from poller.fetch import WaiqinClient
from poller.models import Window, beijing_now
from poller.publish import KafkaPublisher
from poller.redact import Redactor, describe_store_url
from poller.store import open_store
from poller.window import beijing_date

PASS, WARN, FAIL = "✓", "!", "✗"
# check answers in seconds, not in the daemon's minutes: one attempt plus one retry, each
# bounded by a short timeout, and a deadline per item whatever happens underneath.
REQUEST_TIMEOUT_S = 5.0
ATTEMPTS = 2
RETRY_WAIT_S = 0.5
KAFKA_TIMEOUT_MS = 5_000
ITEM_DEADLINE_S = 15.0

Probe = Callable[[], Awaitable[str]]
"""Reaches one dependency; returns the ✓ line's detail or raises."""


async def run(settings: Settings, redactor: Redactor) -> bool:
    """Print one verdict line per item on stdout; True when nothing failed (warnings allowed)."""
    say = _Printer(redactor)
    say(PASS, "configuration", "every variable is valid")
    if settings.waiqin.is_cleartext_remote:
        say(WARN, "configuration",
            "WAIQIN_BASE_URL is plain http to a remote host: the digest and task data travel in clear")
    api = hints.api_address(settings)
    store_ok = await _check(say, f"store ({describe_store_url(settings.store.url)})",
                            lambda: _store(settings))
    if store_ok:
        await _requests(say, settings)
    api_ok = await _check(say, f"API queryTask ({api})", lambda: _query_task(settings),
                          cause=lambda exc: hints.network_cause(exc, api))
    if api_ok:
        types_ok = await _query_task_type(say, settings, api)
    else:
        say(WARN, f"API queryTaskType ({api})", "not tried: queryTask failed")
        types_ok = True  # the failure is already counted once
    with logs.quiet("aiokafka"):
        kafka_ok = await _check(say, f"Kafka ({settings.kafka.bootstrap_servers})",
                                lambda: _kafka(settings),
                                cause=lambda exc: hints.kafka_cause(exc, settings))
    return all((store_ok, api_ok, types_ok, kafka_ok))


class _Printer:
    """Writes verdict lines, redacted (error messages may quote what was configured)."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def __call__(self, mark: str, item: str, detail: str) -> None:
        colour = {PASS: "green", WARN: "yellow", FAIL: "red"}[mark]
        click.echo(f"{click.style(mark, fg=colour)} {item}: {self._redactor.text(detail)}")


async def _check(say: _Printer, item: str, probe: Probe,
                 cause: Callable[[BaseException], str | None] | None = None) -> bool:
    try:
        async with asyncio.timeout(ITEM_DEADLINE_S):
            detail = await probe()
    except TimeoutError:
        say(FAIL, item, f"no answer within {ITEM_DEADLINE_S:.0f} s")
        return False
    except PollerError as exc:
        why = cause(exc) if cause else None
        say(FAIL, item, f"{type(exc).__name__}: {exc}" + (f" — {why}" if why else ""))
        return False
    say(PASS, item, detail)
    return True


def _client(settings: Settings, **update: object) -> WaiqinClient:
    quick = settings.waiqin.model_copy(update={
        "request_timeout_s": REQUEST_TIMEOUT_S, "max_attempts": ATTEMPTS, **update,
    })
    return WaiqinClient(quick, backoff_base_s=RETRY_WAIT_S, backoff_max_s=RETRY_WAIT_S)


async def _store(settings: Settings) -> str:
    store = open_store(settings.store)
    try:
        await store.start()
        return f"{settings.store.backend} store holds {await store.count_tasks()} tasks"
    finally:
        await store.stop()


async def _requests(say: _Printer, settings: Settings) -> None:
    """The projected requests a day; over the budget is a warning (the daemon stretches its
    interval, it does not fail)."""
    item = "API requests"
    store = open_store(settings.store)
    try:
        async with asyncio.timeout(ITEM_DEADLINE_S):
            await store.start()
            projection = await budget.project(store, settings, beijing_date(beijing_now()))
    except (TimeoutError, PollerError) as exc:  # the store's own line says what is wrong
        say(WARN, item, f"no projection: {type(exc).__name__}: {exc}")
        return
    finally:
        await store.stop()
    say(WARN if projection.is_over_budget else PASS, item, projection.describe())


async def _query_task(settings: Settings) -> str:
    today = beijing_date(beijing_now())
    # One row of today's window: a signed request that costs the API almost nothing.
    async with _client(settings, page_rows=1) as client:
        async with contextlib.aclosing(client.iter_pages(Window(modify_from=today, modify_to=today))) as pages:
            first = await anext(pages)
    return f"signed request accepted by {settings.waiqin.base_url} ({len(first.records)} record)"


async def _query_task_type(say: _Printer, settings: Settings, api: str) -> bool:
    """A refused queryTaskType is a warning: task events flow without type names."""
    item = f"API queryTaskType ({api})"
    try:
        async with asyncio.timeout(ITEM_DEADLINE_S), _client(settings) as client:
            await client.query_task_types(["0"])
    except TimeoutError:
        say(FAIL, item, f"no answer within {ITEM_DEADLINE_S:.0f} s")
        return False
    except SourceAuthError as exc:
        say(WARN, item, f"refused, task events will carry no type names: {exc}")
        return True
    except PollerError as exc:
        why = hints.network_cause(exc, api)
        say(FAIL, item, f"{type(exc).__name__}: {exc}" + (f" — {why}" if why else ""))
        return False
    say(PASS, item, "granted")
    return True


async def _kafka(settings: Settings) -> str:
    kafka = settings.kafka.model_copy(update={"request_timeout_ms": KAFKA_TIMEOUT_MS})
    publisher = KafkaPublisher(kafka, settings.topics)
    try:
        await publisher.start()
        await publisher.ping()
    finally:
        await publisher.stop()
    names = ", ".join((settings.topics.tasks, settings.topics.task_types, settings.topics.dead_letter))
    return f"reachable; topics {names}"
