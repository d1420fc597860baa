"""The page shell: fetch a page, plan it, commit it with the records it produces, send them.

Every read of the API goes through here, whatever asked for it (the window, the first run,
the sweep, a backfill): a scan of a whole window, or a read resumed page by page over cycles.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol

import structlog

from poller import metrics, plan
from poller.config import DEFAULT_MAX_MESSAGE_BYTES
from poller.fetch import Page
from poller.http import HealthState
from poller.models import Window
from poller.outbox import Outbox
from poller.store.base import Leadership, SnapshotStore
from poller.task_types import TaskTypeCatalog

log = structlog.get_logger(__name__)


class TaskSource(Protocol):
    """The API client as the poller sees it."""

    @property
    def requests(self) -> Mapping[str, int]:
        """HTTP requests sent since start, by endpoint."""

    def iter_pages(self, window: Window, *, split_days: int | None = None, start_page: int = 1,
                   max_pages: int | None = None) -> AsyncGenerator[Page, None]:
        """The queryTask pages of `window` from `start_page`, at most `max_pages` of them."""

    async def query_task_types(self, type_ids: Sequence[str]) -> list[Any]:
        """Raw task type records."""


@dataclass
class ScanStats:
    """What a scan saw; `repeats` > 0 means pagination drift (its days stay in the window)."""

    pages: int = 0
    tasks: int = 0
    full_pages: int = 0
    repeats: int = 0
    unchanged: int = 0
    changed: int = 0
    events: int = 0
    dead_letters: int = 0

    @property
    def is_drift_free(self) -> bool:
        return self.repeats == 0

    def add(self, counts: plan.PageCounts, *, is_last: bool) -> None:
        """Count one more page."""
        self.pages += 1
        self.tasks += counts.records
        self.full_pages += not is_last
        self.repeats += counts.repeats
        self.unchanged += counts.unchanged
        self.changed += counts.changed
        self.events += counts.events
        self.dead_letters += sum(counts.dead_letters.values())


@dataclass
class Read:
    """A scan of one window that may take several cycles: where it stands, and what it saw."""

    window: Window
    stats: ScanStats = field(default_factory=ScanStats)
    seen: set[str] = field(default_factory=set)  # task_ids read so far (the repeat check)
    is_complete: bool = False  # its short last page was read

    @property
    def next_page(self) -> int:
        return self.stats.pages + 1


@dataclass(frozen=True, slots=True)
class ReadMode:
    """How a read's pages are planned."""

    silent_new: bool = False  # baseline: record unseen tasks without events
    previous_scan: datetime | None = None  # the window's previous scan, to spot healed skips
    sweep_window_from: date | None = None  # the sweep: why did the window miss a change?


class PageReader:
    """Reads pages through the page shell under the lease it is given."""

    def __init__(self, *, client: TaskSource, store: SnapshotStore, outbox: Outbox,
                 types: TaskTypeCatalog, health: HealthState, source: str,
                 clock: Callable[[], datetime], rows: int,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, state_topic: bool = True) -> None:
        self._client = client
        self._store = store
        self._outbox = outbox
        self._types = types
        self._health = health
        self._source = source
        self._clock = clock
        self.rows = rows
        self._max_message_bytes = max_message_bytes
        self._state_topic = state_topic

    async def scan(self, win: Window, lease: Leadership, *, mode: ReadMode = ReadMode(),
                   split_days: int | None = None,
                   on_page: Callable[[Page, ScanStats], None] | None = None) -> ScanStats:
        """Page through all of `win`, committing and sending page by page.

        Raises the source, publish and store errors of the page that failed; everything
        committed before it stays committed (the window is simply scanned again).
        """
        read = Read(win)
        await self._pages(read, lease, mode, self._client.iter_pages(win, split_days=split_days),
                          on_page)
        return read.stats

    async def read(self, read: Read, lease: Leadership, *, pages: int, mode: ReadMode = ReadMode(),
                   stop_after_full: int | None = None) -> int:
        """Read up to `pages` more pages of `read`; how many were read.

        Stops early at the short last page (`read.is_complete`) or once more than
        `stop_after_full` pages were full (an over-full slice, to be split by the caller).
        """
        if pages <= 0 or read.is_complete:
            return 0
        before = read.stats.pages
        limit = pages
        if stop_after_full is not None:
            limit = min(pages, stop_after_full + 1 - read.stats.full_pages)
        source = self._client.iter_pages(read.window, start_page=read.next_page, max_pages=max(1, limit))
        await self._pages(read, lease, mode, source, None)
        return read.stats.pages - before

    async def _pages(self, read: Read, lease: Leadership, mode: ReadMode,
                     source: AsyncGenerator[Page, None],
                     on_page: Callable[[Page, ScanStats], None] | None) -> None:
        # aclosing: a failed page closes the scan (and drops its read-ahead request) at once.
        async with contextlib.aclosing(source) as pages:
            async for page in pages:
                self._health.beat()
                context = plan.PageContext(
                    self._source, page.window, page.number, max_message_bytes=self._max_message_bytes,
                    state_topic=self._state_topic, silent_new=mode.silent_new,
                    previous_scan=mode.previous_scan, sweep_window_from=mode.sweep_window_from)
                structlog.contextvars.bind_contextvars(page=page.number, **page.window.describe())
                try:
                    counts = await self._process_page(page, read.seen, context, lease)
                finally:
                    structlog.contextvars.unbind_contextvars(
                        "page", "modify_date_from", "modify_date_to")
                read.stats.add(counts, is_last=page.is_last)
                read.is_complete = page.is_last
                if on_page is not None:
                    on_page(page, read.stats)

    async def _process_page(self, page: Page, seen: set[str], context: plan.PageContext,
                            lease: Leadership) -> plan.PageCounts:
        received = plan.receive(page.records)
        stored = await self._store.read_hashes(received.readable_ids)
        # A fresh sample per page: which re-rendered tasks write their rendering back (plan).
        observed = plan.observe(received, stored, sample=random.getrandbits(64))
        known = await self._known(observed, lease)
        page_plan = plan.plan_page(observed, known, received=received, seen_in_scan=seen,
                                   ctx=context, now=self._clock())
        seen.update(received.readable_ids)
        # Commit, then publish, through the outbox: a page's snapshots and the records derived
        # from them are written in one transaction before anything is sent, so the store never
        # runs ahead of or behind what consumers are told. A crash before the send leaves the
        # records in the outbox (sent first thing next cycle); a failed commit sends nothing.
        # Publishing first would lose the reverse of a change that is undone while the commit
        # keeps failing. Shielded: a shutdown must not leave a commit half-done.
        last_id = await asyncio.shield(self._store.commit(page_plan.commit, lease))
        await self._outbox.send(page_plan.commit.records, last_id, lease)
        _count(page_plan.counts)
        return page_plan.counts

    async def _known(self, observed: plan.Observed, lease: Leadership) -> plan.Known:
        """What the store and the type catalog know about the page's changed and bad records."""
        if not (observed.tasks or observed.rejects):
            return plan.Known()
        snapshots = await self._store.read_snapshots(observed.changed_ids) if observed.tasks else {}
        dead_lettered = (await self._store.seen_dead_letters(observed.fingerprints)
                         if observed.rejects else set())
        names = await self._types.names_for(observed.type_ids, lease)
        return plan.Known(snapshots, dead_lettered, names)

    def context(self, window: Window) -> plan.PageContext:
        """A page context for records made outside a page (vanished tasks)."""
        return plan.PageContext(self._source, window, 0, max_message_bytes=self._max_message_bytes,
                                state_topic=self._state_topic)


def _count(counts: plan.PageCounts) -> None:
    """The metrics of one committed and sent page."""
    metrics.TASKS_FETCHED.inc(counts.records)
    metrics.TASKS_CHANGED.inc(counts.changed)
    if counts.repeats:
        metrics.SCAN_REPEATS.inc(counts.repeats)
    if counts.skips_healed:
        metrics.SKIPS_HEALED.inc(counts.skips_healed)
    for kind, number in counts.dead_letters.items():
        metrics.DEAD_LETTERS.labels(kind).inc(number)
    for cause, number in counts.missed_by_window.items():
        metrics.SWEEP_FOUND.labels(cause).inc(number)
    for seconds in counts.lateness_s:
        metrics.SOURCE_LATENESS.observe(seconds)
