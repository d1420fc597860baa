"""`waiqin-poller backfill`: re-poll a past range through the same pipeline."""

from __future__ import annotations

from datetime import date

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from poller import app
from poller.config import Settings
from poller.fetch import Page, WaiqinClient
from poller.http import HealthState
from poller.loop import Poller
from poller.models import Window
from poller.pages import ScanStats
from poller.publish import KafkaPublisher
from poller.store import open_store
from poller.window import days

# How long to wait for a running daemon to release the store before giving up.
LEADERSHIP_WAIT_S = 15.0
# Nobody probes a one-shot command; these only satisfy HealthState.
UNPROBED_S = 24 * 3600.0


async def run(settings: Settings, start: date, end: date, *, days_per_request: int) -> ScanStats:
    """Scan [start, end] in sub-windows, emitting only real changes against the store."""
    console = Console(stderr=True)
    win = Window(modify_from=start, modify_to=end)
    store = open_store(settings.store)
    publisher = KafkaPublisher(settings.kafka, settings.topics)
    await store.start()
    try:
        await publisher.start()
        try:
            async with WaiqinClient(settings.waiqin) as client:
                poller = Poller(settings.poll, client=client, store=store, publisher=publisher,
                                health=HealthState(stuck_after_s=UNPROBED_S, ready_window_s=UNPROBED_S),
                                source=app.event_source(settings), limits=app.api_limits(settings),
                                max_message_bytes=settings.kafka.max_message_bytes,
                                state_topic=settings.topics.state_enabled)
                stats = await _scan_with_progress(poller, win, console, days_per_request)
        finally:
            await publisher.stop()
    finally:
        await store.stop()
    console.print(f"backfill {start} → {end}: {stats.pages} pages, {stats.tasks} tasks read, "
                  f"{stats.changed} changed, {stats.events} events, "
                  f"{stats.dead_letters} dead letters, {stats.repeats} repeats")
    return stats


async def _scan_with_progress(poller: Poller, win: Window, console: Console,
                              days_per_request: int) -> ScanStats:
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} days"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("backfill", total=days(win))

        def on_page(page: Page, stats: ScanStats) -> None:
            assert page.window.modify_from is not None and win.modify_from is not None
            progress.update(bar, completed=(page.window.modify_from - win.modify_from).days,
                            description=f"{page.window.modify_from} page {page.number}: "
                                        f"{stats.tasks} tasks, {stats.events} events")

        stats = await poller.backfill(win, split_days=days_per_request,
                                      wait_s=LEADERSHIP_WAIT_S, on_page=on_page)
        progress.update(bar, completed=days(win))
    return stats
