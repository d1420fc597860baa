"""`waiqin-poller backfill`: re-poll a past range through the same pipeline."""

from __future__ import annotations

import asyncio
from datetime import date

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from poller import app
from poller.config import Settings
from poller.errors import StoreConflict
from poller.fetch import Page, WaiqinClient
from poller.http import HealthState
from poller.loop import Poller, ScanStats
from poller.models import Window
from poller.publish import KafkaPublisher
from poller.store import open_store
from poller.window import days

# How long to wait for a running daemon to release the store before giving up.
LEADERSHIP_WAIT_S = 15.0


async def run(settings: Settings, start: date, end: date, *, days_per_request: int) -> ScanStats:
    """Scan [start, end] in sub-windows, emitting only real changes against the store.

    Holds the store's leadership while it runs, so it never races the daemon's commits: stop
    the daemon (or scale it to 0) first, or wait for it to release.
    """
    console = Console(stderr=True)
    win = Window(modify_from=start, modify_to=end)
    store = open_store(settings.store)
    publisher = KafkaPublisher(settings.kafka, settings.topics)
    await store.start()
    try:
        await publisher.start()
        try:
            async with WaiqinClient(settings.waiqin) as client:
                return await _scan(settings, console, win, store, publisher, client, days_per_request)
        finally:
            await publisher.stop()
    finally:
        await store.stop()


async def _scan(settings: Settings, console: Console, win: Window, store: object,
                publisher: KafkaPublisher, client: WaiqinClient, days_per_request: int) -> ScanStats:
    poller = Poller(settings.poll, client=client, store=store,  # type: ignore[arg-type]
                    publisher=publisher, health=HealthState(stuck_after_s=3600, ready_window_s=3600),
                    source=app.event_source(settings))
    leadership = store.leadership()  # type: ignore[attr-defined]
    try:
        await asyncio.wait_for(leadership.acquire(asyncio.Event()), LEADERSHIP_WAIT_S)
    except TimeoutError:
        raise StoreConflict(
            "another poller holds the store; stop the daemon (or scale it to 0) during the backfill"
        ) from None
    poller._leadership = leadership  # the scan checks it before each commit
    try:
        await poller.types.load()
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} days"),
                      TimeElapsedColumn(), console=console) as progress:
            bar = progress.add_task("backfill", total=days(win))

            def on_page(page: Page, stats: ScanStats) -> None:
                assert page.window.modify_from is not None and win.modify_from is not None
                progress.update(bar, completed=(page.window.modify_from - win.modify_from).days,
                                description=f"page {page.number} of {page.window.modify_from}: "
                                            f"{stats.tasks} tasks, {stats.events} events")

            stats = await poller.scan(win, split_days=days_per_request, on_page=on_page)
            progress.update(bar, completed=days(win))
    finally:
        await leadership.release()
    console.print(f"backfill {win.modify_from} → {win.modify_to}: {stats.pages} pages, "
                  f"{stats.tasks} tasks read, {stats.changed} changed, {stats.events} events, "
                  f"{stats.dead_letters} dead letters, {stats.repeats} repeats")
    return stats
