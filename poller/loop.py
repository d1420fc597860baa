"""Poller: lead the store, then cycle: drain the outbox, read pages, plan, commit, send."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from poller import metrics, plan, window
from poller.config import DEFAULT_MAX_MESSAGE_BYTES, PollSettings
from poller.errors import LeadershipLost, PollerError
from poller.fetch import Page
from poller.http import HealthState
from poller.models import Commit, PollState, Window, beijing_now
from poller.outbox import Outbox
from poller.publish import Publisher
from poller.store.base import Leadership, SnapshotStore
from poller.task_types import TaskTypeCatalog

log = structlog.get_logger(__name__)

# A first run whose full-history pass keeps seeing repeats (heavy churn) is accepted after this
# many passes; the tasks it may have skipped are still found later, when they next change.
MAX_FIRST_RUN_PASSES = 3


class TaskSource(Protocol):
    """The API client as the loop sees it."""

    def iter_pages(self, window: Window, *, split_days: int | None = None
                   ) -> AsyncGenerator[Page, None]:
        """Every page of a queryTask scan of `window`."""

    async def query_task_types(self, type_ids: Sequence[str]) -> list[Any]:
        """Raw task type records."""


@dataclass
class ScanStats:
    """What one scan saw; `repeats` > 0 means pagination drift (the window stays open)."""

    pages: int = 0
    tasks: int = 0
    repeats: int = 0
    unchanged: int = 0
    changed: int = 0
    events: int = 0
    dead_letters: int = 0

    @property
    def is_drift_free(self) -> bool:
        return self.repeats == 0

    def add(self, counts: plan.PageCounts) -> None:
        """Count one more page."""
        self.pages += 1
        self.tasks += counts.records
        self.repeats += counts.repeats
        self.unchanged += counts.unchanged
        self.changed += counts.changed
        self.events += counts.events
        self.dead_letters += sum(counts.dead_letters.values())


@dataclass
class Backoff:
    """Waits between failed attempts: the interval doubled per failure in a row, capped."""

    base_s: float
    max_s: float
    failures: int = 0

    def failed(self) -> float:
        """Count a failure; how long to wait before the next attempt."""
        self.failures += 1
        return min(self.max_s, max(self.base_s, 1.0) * 2.0 ** (self.failures - 1))

    def succeeded(self) -> None:
        """Start over after a success."""
        self.failures = 0


class Poller:
    """Polls while it is the store's leader, one cycle per interval, until `stop()`."""

    def __init__(self, settings: PollSettings, *, client: TaskSource, store: SnapshotStore,
                 publisher: Publisher, health: HealthState, source: str,
                 clock: Callable[[], datetime] = beijing_now,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, state_topic: bool = True) -> None:
        self._settings = settings
        self._max_message_bytes = max_message_bytes
        self._state_topic = state_topic
        self._client = client
        self._store = store
        self._health = health
        self._source = source
        self._clock = clock
        self._stop = asyncio.Event()
        self._last_success: datetime | None = None
        self._is_leading = False
        self._cycle_number = 0
        self._outbox = Outbox(store, publisher)
        self.types = TaskTypeCatalog(client, store, self._outbox, refresh_s=settings.type_refresh_s,
                                     source=source, clock=clock, max_message_bytes=max_message_bytes)
        metrics.LAG.set_function(self._lag_s)

    def stop(self) -> None:
        """Ask the loop to finish its current cycle and return."""
        self._stop.set()

    @property
    def should_exit(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> None:
        """Poll until stopped. Every failure is logged, counted and backed off, never raised:
        a failed cycle, a store that refuses, a lost leadership (then re-acquired)."""
        backoff = Backoff(self._settings.poll_interval_s, self._settings.max_backoff_s)
        while not self.should_exit:
            lease = self._store.leadership()
            try:
                await self._lead(lease, backoff)
                continue  # stopped
            except LeadershipLost:
                pass  # logged and counted as a failed cycle already
            except PollerError as exc:
                log.warning("leadership_unavailable", error=str(exc), error_type=type(exc).__name__)
            finally:
                await lease.release()
            await self._wait(backoff.failed())

    async def _lead(self, lease: Leadership, backoff: Backoff) -> None:
        """Wait for leadership, then cycle under it until stopped; raises LeadershipLost."""
        self._health.set_standby(True)
        if not await lease.acquire(self._stop):
            return
        self._health.set_standby(False)
        self._is_leading = True
        metrics.IS_LEADER.set(1)
        self.types.reset()  # another leader may have changed the stored types meanwhile
        try:
            while not self.should_exit:
                started = time.monotonic()
                try:
                    await self.run_cycle(lease)
                except Exception as exc:  # a bug must not kill an always-on daemon; it is logged
                    self._cycle_failed(exc)
                    if isinstance(exc, LeadershipLost):
                        raise
                    delay = backoff.failed()
                else:
                    backoff.succeeded()
                    delay = self._settings.poll_interval_s - (time.monotonic() - started)
                await self._wait(delay)
        finally:
            self._is_leading = False
            metrics.IS_LEADER.set(0)

    async def _wait(self, delay: float) -> None:
        # Waiting on the stop event (not sleeping) makes stop() take effect at once.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=max(delay, 0.0))

    def _cycle_failed(self, exc: Exception) -> None:
        metrics.CYCLES.labels("failure").inc()
        self._health.cycle_failed(exc)
        if isinstance(exc, PollerError):
            log.error("cycle_failed", error=str(exc), error_type=type(exc).__name__)
        else:
            log.exception("cycle_crashed", error_type=type(exc).__name__)

    async def backfill(self, win: Window, *, split_days: int, wait_s: float,
                       on_page: Callable[[Page, ScanStats], None] | None = None) -> ScanStats:
        """Scan one past window as the store's leader (`waiqin-poller backfill`).

        Holding leadership means it never races a daemon's commits; raises LeadershipLost when
        another poller keeps the store for longer than `wait_s`.
        """
        lease = self._store.leadership()
        try:
            try:
                acquired = await asyncio.wait_for(lease.acquire(self._stop), wait_s)
            except TimeoutError:
                acquired = False
            if not acquired:
                raise LeadershipLost("another poller holds the store; stop the daemon (or scale "
                                     "it to 0) for the backfill")
            await self._outbox.drain(lease)
            await self.types.refresh(lease)
            return await self.scan(win, lease, split_days=split_days, on_page=on_page)
        finally:
            await lease.release()

    async def run_cycle(self, lease: Leadership) -> ScanStats:
        """One cycle under `lease`: the first run until it completes, then the open window."""
        self._cycle_number += 1
        with structlog.contextvars.bound_contextvars(cycle=self._cycle_number):
            return await self._run_cycle(lease)

    async def _run_cycle(self, lease: Leadership) -> ScanStats:
        started = self._clock()
        self._health.cycle_started()
        with metrics.CYCLE_DURATION.time():
            # What an earlier cycle committed but could not send goes out before anything new
            # is read, so every diff below is against what consumers have been told.
            await self._outbox.drain(lease)
            state = await self._store.load_state()
            if self._last_success is None:
                self._last_success = state.last_success_started_at
            await self.types.refresh(lease)
            if state.baseline_complete:
                stats, state = await self._steady_cycle(state, started, lease)
            else:
                metrics.FIRST_RUN_ACTIVE.set(1)
                stats, state = await self._first_run_cycle(state, started, lease)
            metrics.FIRST_RUN_ACTIVE.set(0 if state.baseline_complete else 1)
            metrics.FIRST_RUN_PROGRESS.set(1 if state.baseline_complete else 0)
            await self._store.commit(Commit(state=state), lease)
        self._last_success = started
        metrics.CYCLES.labels("success").inc()
        metrics.STORE_TASKS.set(await self._store.count_tasks())
        self._health.cycle_succeeded(self._clock())
        log.info("cycle_completed", pages=stats.pages, tasks=stats.tasks, changed=stats.changed,
                 events=stats.events, repeats=stats.repeats, dead_letters=stats.dead_letters,
                 window_from=state.window_from.isoformat() if state.window_from else None)
        return stats

    async def _steady_cycle(self, state: PollState, started: datetime, lease: Leadership
                            ) -> tuple[ScanStats, PollState]:
        win = window.cycle(state, started, lookback=self._lookback)
        metrics.WINDOW_DAYS.set(window.days(win))
        stats = await self.scan(win, lease, previous_scan=state.last_success_started_at)
        if not stats.is_drift_free:
            metrics.WINDOW_HELD.inc()
        return stats, window.advance(state, started_at=started, lookback=self._lookback,
                                     drift_free=stats.is_drift_free)

    async def _first_run_cycle(self, state: PollState, started: datetime, lease: Leadership
                               ) -> tuple[ScanStats, PollState]:
        mode = self._settings.start_mode
        # baseline: record unseen tasks silently so a task first seen later really is new;
        # replay: emit every task's events as if each were new. Tasks already stored (an
        # interrupted first run) are diffed as usual, so a change meanwhile is not lost.
        win = window.first_run(self._settings.start_date, started)
        log.info("first_run_pass", mode=mode, passes=state.first_run_passes, **win.describe())
        stats = await self.scan(win, lease, silent_new=mode == "baseline")
        passes = state.first_run_passes + 1
        state = state.model_copy(update={"start_mode": mode, "first_run_passes": passes})
        if not stats.is_drift_free and passes < MAX_FIRST_RUN_PASSES:
            metrics.WINDOW_HELD.inc()
            return stats, state
        state = state.model_copy(update={"baseline_complete": True})
        return stats, window.advance(state, started_at=started, lookback=self._lookback, drift_free=True)

    async def scan(self, win: Window, lease: Leadership, *, silent_new: bool = False,
                   split_days: int | None = None, previous_scan: datetime | None = None,
                   on_page: Callable[[Page, ScanStats], None] | None = None) -> ScanStats:
        """Page through `win` under `lease`, committing and sending page by page.

        Raises the source, publish and store errors of the page that failed; everything
        committed before it stays committed (the window is simply scanned again).
        """
        stats = ScanStats()
        seen: set[str] = set()
        # aclosing: a failed page closes the scan (and drops its read-ahead request) at once.
        async with contextlib.aclosing(self._client.iter_pages(win, split_days=split_days)) as pages:
            async for page in pages:
                self._health.beat()
                context = plan.PageContext(self._source, page.window, page.number,
                                           max_message_bytes=self._max_message_bytes,
                                           state_topic=self._state_topic,
                                           silent_new=silent_new, previous_scan=previous_scan)
                structlog.contextvars.bind_contextvars(page=page.number, **page.window.describe())
                try:
                    counts = await self._process_page(page, seen, context, lease)
                finally:
                    structlog.contextvars.unbind_contextvars(
                        "page", "modify_date_from", "modify_date_to")
                stats.add(counts)
                if on_page is not None:
                    on_page(page, stats)
        return stats

    async def _process_page(self, page: Page, seen: set[str], context: plan.PageContext,
                            lease: Leadership) -> plan.PageCounts:
        received = plan.receive(page.records)
        stored = await self._store.read_hashes(received.readable_ids)
        observed = plan.observe(received, stored)
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
        names = await self.types.names_for(observed.type_ids, lease)
        return plan.Known(snapshots, dead_lettered, names)

    @property
    def _lookback(self) -> timedelta:
        return timedelta(minutes=self._settings.lookback_minutes)

    def _lag_s(self) -> float | None:
        """How stale the stream may be: absent while unknown (no success yet, or a standby)."""
        if self._last_success is None or not self._is_leading:
            return None
        return max(0.0, (self._clock() - self._last_success).total_seconds())


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
