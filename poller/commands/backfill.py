"""`waiqin-poller backfill`: a past modify-date range through the same pipeline, live.

With a daemon holding the store, the range becomes a request in the store that the leader runs
in its page budget (docs/design.md §3.1), and the command shows its progress until it is done;
with none, the command runs the range itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from poller import app
from poller.config import Settings
from poller.errors import PollerError, StoreConflict
from poller.fetch import Page, WaiqinClient
from poller.http import HealthState
from poller.loop import Poller
from poller.models import Backfill, Window, beijing_now
from poller.pages import ScanStats
from poller.publish import KafkaPublisher
from poller.store import open_store
from poller.store.base import SnapshotStore
from poller.window import days

# How long to wait for a running daemon to release the store before giving up (self-run).
LEADERSHIP_WAIT_S = 15.0
# How long to try the store's lock to learn whether a daemon holds it: one attempt on either
# backend (a PostgreSQL retry comes after a second).
PROBE_S = 1.0
FOLLOW_EVERY_S = 1.0  # how often the request's progress is read from the store
# Nobody probes a one-shot command; these only satisfy HealthState.
UNPROBED_S = 24 * 3600.0


async def run(settings: Settings, start: date, end: date, *, days_per_request: int,
              detach: bool = False) -> Backfill | ScanStats:
    """Request the range from the daemon (and follow it unless `detach`), or run it here."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)  # a line stays a line when piped
    store = open_store(settings.store)
    await store.start()
    try:
        if detach or await daemon_holds(store):
            if days_per_request != 1:
                console.print("note: --days-per-request only applies when no daemon runs; "
                              "the daemon reads the range day by day")
            return await _request(store, start, end, console, detach=detach)
        return await _self_run(settings, store, Window(modify_from=start, modify_to=end), console,
                               days_per_request)
    finally:
        await store.stop()


async def daemon_holds(store: SnapshotStore) -> bool:
    """Whether another process leads the store: try its lock briefly, release it if we got it."""
    lease = store.leadership()
    gave_up = asyncio.Event()
    timer = asyncio.get_running_loop().call_later(PROBE_S, gave_up.set)
    try:
        return not await lease.acquire(gave_up)
    finally:
        timer.cancel()
        await lease.release()


async def _request(store: SnapshotStore, start: date, end: date, console: Console, *,
                   detach: bool) -> Backfill:
    request = await store.request_backfill(start, end, beijing_now())
    if detach:
        click.echo(request.id)  # stdout, for scripts: `id=$(waiqin-poller backfill --detach …)`
        console.print(f"backfill #{request.id} {start} → {end} requested; the daemon leading the "
                      "store runs it (the next one to lead, if none does now); "
                      "`waiqin-poller status` shows its progress")
        return request
    console.print(f"backfill #{request.id} {start} → {end} requested from the daemon leading "
                  "the store; following its progress (Ctrl-C stops following, not the backfill)")
    if not (await store.load_state()).baseline_complete:
        console.print("note: the daemon is in its first run; backfills start once it is complete")
    done = await follow(store, request.id, console)
    console.print(f"backfill #{done.id} {start} → {end} done by the daemon: {done.pages:,} pages, "
                  f"{done.tasks:,} tasks read, {done.events:,} events")
    return done


async def follow(store: SnapshotStore, request_id: int, console: Console, *,
                 every_s: float = FOLLOW_EVERY_S) -> Backfill:
    """Show a request's progress until the daemon finished it: a bar on a terminal, a plain
    line per change when piped. Raises PollerError when the daemon reports it failed."""
    show = _Bar(console) if console.is_terminal else _Lines(console)
    with show as update:
        try:
            while True:
                request = await _read(store, request_id)
                update(request)
                if request.state == "failed":
                    raise PollerError(f"backfill #{request_id} failed in the daemon: {request.error}")
                if request.state == "done":
                    return request
                await asyncio.sleep(every_s)  # the store has no change notification to await
        except asyncio.CancelledError:  # Ctrl-C: the request stays with the daemon
            console.print(f"stopped following; backfill #{request_id} goes on in the daemon "
                          "(`waiqin-poller status` shows it)")
            raise


async def _read(store: SnapshotStore, request_id: int) -> Backfill:
    for request in await store.backfills(active_only=False):
        if request.id == request_id:
            return request
    raise StoreConflict(f"backfill request #{request_id} is no longer in the store")


def describe(request: Backfill) -> str:
    """One plain line of a request's progress."""
    return (f"backfill #{request.id}: {request.state}, {request.days_done}/{request.days} days, "
            f"{request.pages:,} pages, {request.tasks:,} tasks, {request.events:,} events")


class _Lines:
    """Plain progress lines, one whenever the request moved (for logs and pipes)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._last = ""

    def __enter__(self) -> Callable[[Backfill], None]:
        return self._update

    def __exit__(self, *exc: object) -> None:
        pass

    def _update(self, request: Backfill) -> None:
        line = describe(request)
        if line != self._last:
            self._console.print(line)
            self._last = line


class _Bar:
    """A rich progress bar over the request's days (for a person at a terminal)."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  TextColumn("{task.completed}/{task.total} days"),
                                  TimeElapsedColumn(), console=console)
        self._bar: TaskID | None = None

    def __enter__(self) -> Callable[[Backfill], None]:
        self._progress.start()
        return self._update

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _update(self, request: Backfill) -> None:
        if self._bar is None:
            self._bar = self._progress.add_task("", total=request.days)
        self._progress.update(self._bar, completed=request.days_done, description=(
            f"#{request.id} {request.state}: {request.pages:,} pages, {request.tasks:,} tasks, "
            f"{request.events:,} events"))


async def _self_run(settings: Settings, store: SnapshotStore, win: Window, console: Console,
                    days_per_request: int) -> ScanStats:
    """Scan the window here, emitting only real changes against the store."""
    publisher = KafkaPublisher(settings.kafka, settings.topics)
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
    console.print(f"backfill {win.modify_from} → {win.modify_to}: {stats.pages} pages, "
                  f"{stats.tasks} tasks read, {stats.changed} changed, {stats.events} events, "
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
