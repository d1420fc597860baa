"""Poller: one cycle = fetch → normalise → diff → publish → commit, page by page."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from poller import diff, events, metrics, normalise, window
from poller.config import PollSettings
from poller.errors import NormaliseError, PollerError, StoreConflict
from poller.fetch import Page
from poller.http import HealthState
from poller.models import (
    DeadLetterMark,
    NormalisedTask,
    OutboundRecord,
    PollState,
    Snapshot,
    Window,
    beijing_now,
)
from poller.publish import Publisher
from poller.store.base import Leadership, SnapshotStore
from poller.task_types import TaskTypeCatalog

log = structlog.get_logger(__name__)

# A first run whose full-history pass keeps seeing repeats (heavy churn) is accepted after this
# many passes; the tasks it may have skipped are still found later, when they next change.
MAX_FIRST_RUN_PASSES = 3
# modify_time has minute precision: a change stamped in the minute a scan started may be missed
# by it without any skip having happened.
MODIFY_TIME_PRECISION = timedelta(minutes=1)


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
    changed: int = 0
    events: int = 0
    dead_letters: int = 0

    @property
    def is_drift_free(self) -> bool:
        return self.repeats == 0


class Poller:
    """Polls while it is the store's leader, one cycle per interval, until `stop()`."""

    def __init__(self, settings: PollSettings, *, client: TaskSource, store: SnapshotStore,
                 publisher: Publisher, health: HealthState, source: str,
                 clock: Callable[[], datetime] = beijing_now) -> None:
        self._settings = settings
        self._client = client
        self._store = store
        self._publisher = publisher
        self._health = health
        self._source = source
        self._clock = clock
        self._stop = asyncio.Event()
        self._leadership: Leadership | None = None
        self._last_success: datetime | None = None
        self._cycle_number = 0
        self.types = TaskTypeCatalog(client, store, refresh_s=settings.type_refresh_s,
                                     source=source, clock=clock)
        metrics.SECONDS_BEHIND.set_function(self._seconds_behind)

    def stop(self) -> None:
        """Ask the loop to finish its current cycle and return."""
        self._stop.set()

    @property
    def should_exit(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> None:
        """Poll until stopped; failures are logged, counted and backed off, never raised."""
        while not self.should_exit:
            self._leadership = self._store.leadership()
            self._health.set_standby(True)
            try:
                if not await self._leadership.acquire(self._stop):
                    break
            except PollerError as exc:
                log.warning("leadership_unavailable", error=str(exc))
                await self._wait(self._settings.poll_interval_s)
                continue
            self._health.set_standby(False)
            metrics.IS_LEADER.set(1)
            try:
                await self._poll_while_leader()
            finally:
                metrics.IS_LEADER.set(0)
                await self._leadership.release()

    async def _poll_while_leader(self) -> None:
        self.types.reset()  # another leader may have changed the stored types meanwhile
        failures = 0
        while not self.should_exit:
            started = time.monotonic()
            self._health.beat()
            try:
                await self.run_cycle()
                failures = 0
                delay = self._settings.poll_interval_s - (time.monotonic() - started)
            except StoreConflict as exc:
                self._cycle_failed(exc)
                return  # leadership lost: go back to waiting for it
            except Exception as exc:  # a bug must not kill an always-on daemon; it is logged
                failures += 1
                self._cycle_failed(exc)
                delay = min(self._settings.max_backoff_s,
                            max(self._settings.poll_interval_s, 1.0) * 2 ** (failures - 1))
            await self._wait(delay)

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

        Holding leadership means it never races a daemon's commits; raises StoreConflict when
        another poller keeps the store for longer than `wait_s`.
        """
        leadership = self._store.leadership()
        try:
            acquired = await asyncio.wait_for(leadership.acquire(self._stop), wait_s)
        except TimeoutError:
            acquired = False
        if not acquired:
            await leadership.release()
            raise StoreConflict("another poller holds the store; stop the daemon (or scale it "
                                "to 0) for the backfill")
        self._leadership = leadership
        try:
            await self.types.load_once()
            return await self.scan(win, split_days=split_days, on_page=on_page)
        finally:
            await leadership.release()

    async def run_cycle(self) -> ScanStats:
        """One cycle: the first run until it completes, then the open window; commits state."""
        self._cycle_number += 1
        with structlog.contextvars.bound_contextvars(cycle=self._cycle_number):
            return await self._run_cycle()

    async def _run_cycle(self) -> ScanStats:
        started = self._clock()
        self._health.cycle_started()
        with metrics.CYCLE_DURATION.time():
            state = await self._store.load_state()
            if self._last_success is None:
                self._last_success = state.last_success_started_at
            await self.types.load_once()
            await self.types.refresh_if_due(self._publish)
            if state.baseline_complete:
                stats, state = await self._steady_cycle(state, started)
            else:
                stats, state = await self._first_run_cycle(state, started)
            await self._store.save_state(state)
        self._last_success = started
        metrics.CYCLES.labels("success").inc()
        metrics.STORE_TASKS.set(await self._store.count_tasks())
        self._health.cycle_succeeded(self._clock())
        log.info("cycle_completed", pages=stats.pages, tasks=stats.tasks, changed=stats.changed,
                 events=stats.events, repeats=stats.repeats, dead_letters=stats.dead_letters,
                 window_from=state.window_from.isoformat() if state.window_from else None)
        return stats

    async def _steady_cycle(self, state: PollState, started: datetime) -> tuple[ScanStats, PollState]:
        win = window.cycle(state, started)
        metrics.WINDOW_DAYS.set(window.days(win))
        stats = await self.scan(win, previous_scan=state.last_success_started_at)
        if not stats.is_drift_free:
            metrics.WINDOW_HELD.inc()
        return stats, window.advance(state, started_at=started, lookback=self._lookback,
                                     drift_free=stats.is_drift_free)

    async def _first_run_cycle(self, state: PollState, started: datetime) -> tuple[ScanStats, PollState]:
        mode = self._settings.start_mode
        # baseline: record unseen tasks silently so a task first seen later really is new;
        # replay: emit every task's events as if each were new. Tasks already stored (an
        # interrupted first run) are diffed as usual, so a change meanwhile is not lost.
        win = window.first_run(self._settings.start_date, started)
        log.info("first_run_pass", mode=mode, passes=state.first_run_passes, **win.describe())
        stats = await self.scan(win, silent_new=mode == "baseline")
        passes = state.first_run_passes + 1
        state = state.model_copy(update={"start_mode": mode, "first_run_passes": passes})
        if not stats.is_drift_free and passes < MAX_FIRST_RUN_PASSES:
            metrics.WINDOW_HELD.inc()
            return stats, state
        state = state.model_copy(update={"baseline_complete": True})
        return stats, window.advance(state, started_at=started, lookback=self._lookback, drift_free=True)

    async def scan(self, win: Window, *, silent_new: bool = False, split_days: int | None = None,
                   previous_scan: datetime | None = None,
                   on_page: Callable[[Page, ScanStats], None] | None = None) -> ScanStats:
        """Page through `win`, publishing and committing page by page.

        Raises the source, publish and store errors of the page that failed; everything
        committed before it stays committed (the window is simply scanned again).
        """
        stats = ScanStats()
        seen: set[str] = set()
        # aclosing: a failed page closes the scan (and drops its read-ahead request) at once.
        async with contextlib.aclosing(self._client.iter_pages(win, split_days=split_days)) as pages:
            async for page in pages:
                self._health.beat()
                structlog.contextvars.bind_contextvars(page=page.number, **page.window.describe())
                try:
                    await self._process_page(page, stats, seen, silent_new=silent_new,
                                             previous_scan=previous_scan)
                finally:
                    structlog.contextvars.unbind_contextvars(
                        "page", "modify_date_from", "modify_date_to")
                if on_page is not None:
                    on_page(page, stats)
        return stats

    async def _process_page(self, page: Page, stats: ScanStats, seen: set[str], *,
                            silent_new: bool, previous_scan: datetime | None) -> None:
        tasks, rejects = self._normalise_page(page, stats, seen)
        observed_at = self._clock()
        # The fast path: an unchanged task costs one hash compare; only the others are read
        # in full and diffed field by field.
        stored = await self._store.get_hashes(list(tasks))
        different = [t for t in tasks.values() if stored.get(t.task_id) != t.hash]
        previous = await self._store.get_snapshots([t.task_id for t in different if t.task_id in stored])
        names = await self.types.names_for({t.type_id for t in different if t.type_id})
        writes: list[Snapshot] = []
        records: list[OutboundRecord] = []
        changed = 0
        for task in different:
            before = previous.get(task.task_id)
            observation = diff.observe(
                before, task, observed_at=observed_at,
                type_name=names.get(task.type_id) if task.type_id else None,
                silent=silent_new and before is None,
            )
            if observation.snapshot is not None:
                writes.append(observation.snapshot)
            if observation.events:
                changed += 1
                records.extend(events.encode(e, source=self._source) for e in observation.events)
                if _was_skipped(before, task, previous_scan):
                    metrics.SKIPS_HEALED.inc()
        marks, dead, reasons = await self._dead_letters(rejects, page)
        # Publish, then commit. Once publish() returns, Kafka has acknowledged every record
        # (acks=all); a crash before the commit below replays this page next cycle and re-emits
        # the same events with the same ce_ids (at-least-once). The other order loses events.
        await self._publish(records + dead)
        if writes or marks:
            assert self._leadership is not None
            await self._leadership.ensure()
            # Shielded: cancellation (shutdown) must not leave a page half-committed.
            await asyncio.shield(self._store.commit_page(writes, marks))
        stats.changed += changed
        stats.events += len(records)
        stats.dead_letters += len(marks)
        metrics.TASKS_CHANGED.inc(changed)
        for reason in reasons:
            metrics.DEAD_LETTERS.labels(reason).inc()

    def _normalise_page(self, page: Page, stats: ScanStats, seen: set[str]
                        ) -> tuple[dict[str, NormalisedTask], list[tuple[Any, NormaliseError]]]:
        tasks: dict[str, NormalisedTask] = {}
        rejects: list[tuple[Any, NormaliseError]] = []
        for raw in page.records:
            try:
                task = normalise.task(raw)
            except NormaliseError as exc:
                rejects.append((raw, exc))
                continue
            if task.task_id in seen or task.task_id in tasks:
                # Offset paging over a changing set: harmless (the diff is idempotent) but it
                # means this scan may also have skipped a task, so the window stays open.
                stats.repeats += 1
                metrics.SCAN_REPEATS.inc()
            tasks[task.task_id] = task  # within one page the last rendering wins
        seen.update(tasks)
        stats.pages += 1
        stats.tasks += len(page.records)
        metrics.TASKS_FETCHED.inc(len(page.records))
        return tasks, rejects

    async def _dead_letters(self, rejects: list[tuple[Any, NormaliseError]], page: Page
                            ) -> tuple[list[DeadLetterMark], list[OutboundRecord], list[str]]:
        """Dead letters for records not sent before: once per distinct content, not per cycle."""
        if not rejects:
            return [], [], []
        by_fingerprint = {normalise.fingerprint(raw): (raw, exc) for raw, exc in rejects}
        already = await self._store.seen_dead_letters(list(by_fingerprint))
        marks: list[DeadLetterMark] = []
        records: list[OutboundRecord] = []
        reasons: list[str] = []
        observed_at = self._clock()
        for fingerprint, (raw, exc) in by_fingerprint.items():
            if fingerprint in already:
                continue
            log.warning("record_dead_lettered", reason=exc.reason, task_id=exc.task_id)
            marks.append(DeadLetterMark(fingerprint=fingerprint, task_id=exc.task_id))
            records.append(events.dead_letter(
                raw, reason=exc.reason, task_id=exc.task_id, window=page.window.describe(),
                page=page.number, source=self._source, observed_at=observed_at))
            reasons.append(exc.kind)
        return marks, records, reasons

    async def _publish(self, records: Sequence[OutboundRecord]) -> None:
        if records:
            await self._publisher.publish(records)

    @property
    def _lookback(self) -> timedelta:
        return timedelta(minutes=self._settings.lookback_minutes)

    def _seconds_behind(self) -> float:
        if self._last_success is None:
            return 0.0
        return max(0.0, (self._clock() - self._last_success).total_seconds())


def _was_skipped(before: Snapshot | None, task: NormalisedTask, previous_scan: datetime | None) -> bool:
    """A change stamped well before the previous scan started should have been seen by it."""
    if before is None or previous_scan is None or task.modify_time is None:
        return False
    return task.modify_time < previous_scan - MODIFY_TIME_PRECISION
