"""Poller: lead the store, then cycle: drain the outbox, the window, backfills, the sweep."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import structlog

from poller import metrics, schedule, window
from poller.backfills import Backfiller
from poller.config import DEFAULT_MAX_MESSAGE_BYTES, PollSettings
from poller.errors import LeadershipLost, PollerError
from poller.fetch import Page
from poller.history import History
from poller.http import HealthState
from poller.models import Commit, PollState, Window, beijing_now
from poller.outbox import Outbox
from poller.pages import PageReader, ReadMode, ScanStats, TaskSource
from poller.publish import Publisher
from poller.store.base import Leadership, SnapshotStore
from poller.task_types import TaskTypeCatalog

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ApiLimits:
    """The API client's settings the cycle plans with."""

    rows: int = 1000  # records per page (WAIQIN_PAGE_ROWS)
    rate_per_s: float = 5.0  # WAIQIN_RATE_LIMIT_PER_SECOND
    daily_budget: int | None = None  # WAIQIN_DAILY_REQUEST_BUDGET


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
                 clock: Callable[[], datetime] = beijing_now, limits: ApiLimits = ApiLimits(),
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, state_topic: bool = True) -> None:
        self._settings = settings
        self._client = client
        self._store = store
        self._health = health
        self._clock = clock
        self._limits = limits
        self._stop = asyncio.Event()
        self._last_success: datetime | None = None
        self._is_leading = False
        self._cycle_number = 0
        self._next_cycle_in_s = settings.poll_interval_s
        self._usage = _Usage(client)
        self._outbox = Outbox(store, publisher)
        self.types = TaskTypeCatalog(client, store, self._outbox, refresh_s=settings.type_refresh_s,
                                     source=source, clock=clock, max_message_bytes=max_message_bytes)
        self.pages = PageReader(client=client, store=store, outbox=self._outbox, types=self.types,
                                health=health, source=source, clock=clock, rows=limits.rows,
                                max_message_bytes=max_message_bytes, state_topic=state_topic)
        self.history = History(settings, reader=self.pages, store=store, outbox=self._outbox,
                               types=self.types, clock=clock)
        self.backfills = Backfiller(reader=self.pages, store=store, clock=clock)
        metrics.LAG.set_function(self._lag_s)
        metrics.LOOKBACK.set(settings.lookback_minutes * 60)
        metrics.SWEEP_PERIOD.set(settings.sweep_period_h * 3600)

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
        # Another leader may have changed the stored types and cursors meanwhile.
        self.types.reset()
        self.history.forget()
        self.backfills.forget()
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
                    delay = self._next_cycle_in_s - (time.monotonic() - started)
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
        """Scan one past window as the store's leader, when no daemon holds the store.

        Raises LeadershipLost when another poller keeps the store for longer than `wait_s`.
        """
        lease = self._store.leadership()
        try:
            try:
                acquired = await asyncio.wait_for(lease.acquire(self._stop), wait_s)
            except TimeoutError:
                acquired = False
            if not acquired:
                raise LeadershipLost("another poller holds the store")
            await self._outbox.drain(lease)
            await self.types.refresh(lease)
            return await self.pages.scan(win, lease, split_days=split_days, on_page=on_page)
        finally:
            await lease.release()

    async def run_cycle(self, lease: Leadership) -> ScanStats:
        """One cycle under `lease`; the stats of its window scan (empty during the first run)."""
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
            await self._usage.start_cycle(self._store, started)
            await self.types.refresh(lease)
            if state.baseline_complete:
                stats, state = await self._steady_cycle(state, started, lease)
            else:
                stats, state = ScanStats(), await self._first_run_cycle(state, started, lease)
            state = state.model_copy(update={"last_success_started_at": started})
            await self._store.commit(Commit(state=state, usage=self._usage.totals()), lease)
        self._last_success = started
        metrics.CYCLES.labels("success").inc()
        metrics.STORE_TASKS.set(await self._store.count_tasks())
        metrics.FIRST_RUN_ACTIVE.set(0 if state.baseline_complete else 1)
        if state.baseline_complete:
            metrics.FIRST_RUN_PROGRESS.set(1)
        self._health.cycle_succeeded(self._clock())
        log.info("cycle_completed", pages=stats.pages, tasks=stats.tasks, changed=stats.changed,
                 events=stats.events, repeats=stats.repeats, dead_letters=stats.dead_letters,
                 requests_today=self._usage.today,
                 window_from=state.window_from.isoformat() if state.window_from else None)
        return stats

    async def _first_run_cycle(self, state: PollState, started: datetime, lease: Leadership) -> PollState:
        plan = self._plan(started, window_requests=1, wanted=self._allowance(), sweep_pages=0,
                          pro_rata=False)
        state = await self.history.first_run(state, lease, pages=plan.extra_pages)
        # Until the history is read, the next cycle follows at once (within the budget).
        self._next_cycle_in_s = plan.interval_s if state.baseline_complete or plan.is_stretched else 0.0
        return state

    async def _steady_cycle(self, state: PollState, started: datetime, lease: Leadership
                            ) -> tuple[ScanStats, PollState]:
        before = self._usage.today
        win = window.cycle(state, started, lookback=self._lookback)
        metrics.WINDOW_DAYS.set(window.days(win))
        stats = await self.pages.scan(win, lease, mode=ReadMode(previous_scan=state.last_success_started_at))
        if not stats.is_drift_free:
            metrics.WINDOW_HELD.inc()
        state = window.advance(state, started_at=started, lookback=self._lookback,
                               drift_free=stats.is_drift_free)
        # After the window, in its page budget: backfills first, then the sweep.
        sweep_pages = await self._sweep_pages()
        plan = self._plan(started, window_requests=self._usage.today - before,
                          wanted=self._allowance() + sweep_pages, sweep_pages=sweep_pages)
        self._next_cycle_in_s = plan.interval_s
        used = await self.backfills.run(lease, pages=plan.extra_pages - plan.sweep_pages)
        if self._settings.sweep_period_h > 0:  # its share only: one pass per period
            state = await self.history.sweep(state, lease,
                                             pages=min(plan.sweep_pages, plan.extra_pages - used))
        return stats, state

    async def _sweep_pages(self) -> int:
        if self._settings.sweep_period_h <= 0:
            return 0
        pages = schedule.sweep_pages_per_cycle(await self.history.pages_per_pass(),
                                               period_h=self._settings.sweep_period_h,
                                               interval_s=self._settings.poll_interval_s)
        metrics.SWEEP_PAGES_PER_CYCLE.set(pages)
        return pages

    def _plan(self, now: datetime, *, window_requests: int, wanted: int, sweep_pages: int,
              pro_rata: bool = True) -> schedule.CyclePlan:
        plan = schedule.plan_cycle(now=now, interval_s=self._settings.poll_interval_s,
                                   window_requests=window_requests, wanted_extra=wanted,
                                   sweep_pages=sweep_pages, budget=self._limits.daily_budget,
                                   used_today=self._usage.today, pro_rata=pro_rata)
        metrics.INTERVAL.set(plan.interval_s)
        if plan.is_stretched:
            metrics.INTERVAL_STRETCHED.inc()
            log.warning("interval_stretched", interval_s=round(plan.interval_s, 1),
                        budget=self._limits.daily_budget, requests_today=self._usage.today,
                        reason="the window alone would exceed WAIQIN_DAILY_REQUEST_BUDGET")
        return plan

    def _allowance(self) -> int:
        """About one interval's worth of requests: what the first run or backfills may use."""
        return schedule.interval_allowance(self._settings.poll_interval_s, self._limits.rate_per_s)

    @property
    def _lookback(self) -> timedelta:
        return timedelta(minutes=self._settings.lookback_minutes)

    def _lag_s(self) -> float | None:
        """How stale the stream may be: absent while unknown (no success yet, or a standby)."""
        if self._last_success is None or not self._is_leading:
            return None
        return max(0.0, (self._clock() - self._last_success).total_seconds())


class _Usage:
    """API requests made on the current Beijing day: the stored count at the day's first cycle
    plus what the client sent since (so a restart does not reset the day's count)."""

    def __init__(self, client: TaskSource) -> None:
        self._client = client
        self._day: date | None = None
        self._base: Counter[str] = Counter()
        self._sent_at_base: Counter[str] = Counter()

    async def start_cycle(self, store: SnapshotStore, now: datetime) -> None:
        day = now.date()
        if day != self._day:
            self._base = Counter(await store.read_usage(day))
            self._sent_at_base = Counter(self._client.requests)
            self._day = day

    def _counts(self) -> Counter[str]:
        sent = Counter(self._client.requests)
        sent.subtract(self._sent_at_base)
        return self._base + sent

    @property
    def today(self) -> int:
        return sum(self._counts().values())

    def totals(self) -> list[tuple[date, str, int]]:
        """(day, endpoint, requests) to store."""
        if self._day is None:
            return []
        metrics.API_REQUESTS_TODAY.set(self.today)
        return [(self._day, endpoint, count) for endpoint, count in self._counts().items()]
