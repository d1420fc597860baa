"""Reading the whole history by create-date slices: the first run, and the reconciliation sweep.

Both walk the create dates back from today one slice at a time (poller/slices.py), commit their
progress after each slice they finished, and resume there after any interruption; a slice only
counts once a read of it saw no task twice (offset paging over a set that changed while it was
read may also have skipped one). The sweep also notices stored tasks the API no longer returns:
after a second read confirms it, each is announced by TaskVanished and kept as a tombstone.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta

import structlog

from poller import metrics, plan, schedule, slices
from poller.config import PollSettings
from poller.models import (
    BEIJING,
    Commit,
    Confirmation,
    FirstRun,
    PollState,
    Sweep,
)
from poller.outbox import Outbox
from poller.pages import PageReader, Read, ReadMode
from poller.store.base import Leadership, SnapshotStore
from poller.task_types import TaskTypeCatalog

log = structlog.get_logger(__name__)


class History:
    """The first run and the sweep of one poller; a slice read in progress is kept between cycles."""

    def __init__(self, settings: PollSettings, *, reader: PageReader, store: SnapshotStore,
                 outbox: Outbox, types: TaskTypeCatalog, clock: Callable[[], datetime]) -> None:
        self._settings = settings
        self._reader = reader
        self._store = store
        self._outbox = outbox
        self._types = types
        self._clock = clock
        self._reading: tuple[slices.Slice, Read] | None = None  # survives cycles, not restarts
        self._counts: dict[date, int] | None = None  # stored tasks per create date, per pass

    def forget(self) -> None:
        """Drop what is only in memory (another leader may have moved the cursors meanwhile)."""
        self._reading = None
        self._counts = None

    # --- the first run -----------------------------------------------------------------------

    async def first_run(self, state: PollState, lease: Leadership, *, pages: int) -> PollState:
        """Read first-run slices within `pages`; the state after the last finished slice.

        baseline records unseen tasks silently, so a task first seen later really is new;
        replay emits every task's events as if each were new. Tasks already stored (an
        interrupted first run) are diffed as usual, so a change meanwhile is not lost.
        """
        now = self._clock()
        run = state.first_run or FirstRun(mode=self._settings.start_mode, started_at=now,
                                          walk=slices.start(_today(now)))
        mode = ReadMode(silent_new=run.mode == "baseline")
        while pages > 0 and (target := slices.next_slice(run.walk)) is not None:
            read = self._read_of(target, now)
            pages -= await self._reader.read(read, lease, pages=pages, mode=mode,
                                             stop_after_full=self._max_full(target))
            if self._is_overflowing(target, read):
                run = run.model_copy(update={"walk": slices.after_overflow(run.walk, target)})
                continue
            if not read.is_complete:
                break  # go on next cycle
            self._reading = None
            if not read.stats.is_drift_free:
                metrics.SLICES_REREAD.labels("first_run").inc()
                continue  # read it again: a slice counts only after a read without repeats
            walk = slices.after_read(run.walk, target, read.stats.tasks, rows=self._reader.rows,
                                     max_pages=self._settings.sweep_slice_pages)
            run = run.model_copy(update={"walk": walk, "tasks": run.tasks + read.stats.tasks})
            state = await self._save(state.model_copy(update={"first_run": run}), lease)
            log.info("first_run_slice", slice=target.describe(), tasks=read.stats.tasks,
                     total=run.tasks)
        metrics.FIRST_RUN_PROGRESS.set(progress(run.walk.end, run.started_at))
        if slices.next_slice(run.walk) is not None:
            return state.model_copy(update={"first_run": run, "start_mode": run.mode})
        log.info("first_run_completed", mode=run.mode, tasks=run.tasks)
        # The window starts where the first run started: whatever changed since is read again.
        window_from = (run.started_at - timedelta(minutes=self._settings.lookback_minutes)).date()
        # Every task was read since the first run began: the sweep's first pass counts from there.
        return state.model_copy(update={"first_run": None, "baseline_complete": True,
                                        "start_mode": run.mode, "window_from": window_from,
                                        "sweep": Sweep(pass_started_at=run.started_at)})

    # --- the sweep ---------------------------------------------------------------------------

    async def pages_per_pass(self) -> int:
        """Requests one sweep pass costs, from the stored tasks per create date."""
        counts = await self._stored_counts()
        return schedule.pages_per_pass(counts, _today(self._clock()), rows=self._reader.rows,
                              max_pages=self._settings.sweep_slice_pages)

    async def sweep(self, state: PollState, lease: Leadership, *, pages: int) -> PollState:
        """Sweep slices within `pages`: re-read stored history, find what the window missed."""
        sweep = state.sweep
        now = self._clock()
        if sweep.end is None:  # a new pass, from today back
            sweep = sweep.model_copy(update={
                "end": _today(now), "pass_started_at": now,
                "previous_pass_started_at": sweep.pass_started_at or state.last_success_started_at})
            self._counts = None
        mode = ReadMode(sweep_window_from=state.window_from)
        while pages > 0:
            target = await self._sweep_target(sweep)
            if target is None:  # the pass reached the floor
                sweep = sweep.model_copy(update={"end": None, "passes": sweep.passes + 1})
                metrics.SWEEP_PASSES.inc()
                break
            read = self._read_of(target, now)
            pages -= await self._reader.read(read, lease, pages=pages, mode=mode,
                                             stop_after_full=self._max_full(target))
            if self._is_overflowing(target, read):
                sweep = sweep.model_copy(update={"end": target.end, "max_width": max(1, target.days // 2)})
                self._reading = None
                continue
            if not read.is_complete:
                break
            self._reading = None
            if not read.stats.is_drift_free:
                metrics.SLICES_REREAD.labels("sweep").inc()
                continue
            sweep, settled = await self._check_missing(sweep, target, read, lease)
            if not settled:
                break  # the confirmation read comes in a later cycle
            sweep = sweep.model_copy(update={"end": target.start - slices.ONE_DAY, "max_width": None})
        state = await self._save(state.model_copy(update={"sweep": sweep}), lease)
        await self._sweep_metrics(state)
        return state

    async def _sweep_target(self, sweep: Sweep) -> slices.Slice | None:
        if sweep.confirmation is not None:
            return slices.Slice(sweep.confirmation.start, sweep.confirmation.end)
        if sweep.end is None:
            return None
        capacity = schedule.slice_capacity(rows=self._reader.rows, max_pages=self._settings.sweep_slice_pages)
        target = slices.planned(await self._stored_counts(), sweep.end, capacity=capacity)
        if target is not None and sweep.max_width is not None and target.days > sweep.max_width:
            target = slices.Slice(sweep.end - timedelta(days=sweep.max_width - 1), sweep.end)
        return target

    async def _check_missing(self, sweep: Sweep, target: slices.Slice, read: Read,
                             lease: Leadership) -> tuple[Sweep, bool]:
        """Judge the stored tasks a complete, drift-free read did not return; whether the slice
        is settled (False: it is to be read once more first)."""
        stored = await self._store.created_ids(target.start, target.end, self._settings.start_date)
        missing = stored - read.seen
        confirming = sweep.confirmation
        verdict = plan.judge_missing(len(stored), missing,
                                     None if confirming is None else set(confirming.task_ids),
                                     max_fraction=self._settings.vanish_max_fraction)
        if verdict.tripped:
            metrics.VANISH_BREAKER.inc()
            log.warning("vanish_breaker_tripped", slice=target.describe(), missing=len(missing),
                        stored=len(stored), reason="the API may be serving partial data; "
                        "nothing is announced, the slice is checked again next sweep")
            return sweep.model_copy(update={"confirmation": None}), True
        if verdict.to_confirm:
            log.info("tasks_missing", slice=target.describe(), missing=len(verdict.to_confirm))
            confirmation = Confirmation(start=target.start, end=target.end,
                                        task_ids=tuple(sorted(verdict.to_confirm)))
            return sweep.model_copy(update={"confirmation": confirmation}), False
        if verdict.vanished:
            await self._vanish(sorted(verdict.vanished), lease)
        return sweep.model_copy(update={"confirmation": None}), True

    async def _vanish(self, task_ids: list[str], lease: Leadership) -> None:
        before = list((await self._store.read_snapshots(task_ids)).values())
        names = await self._types.names_for({t for s in before if (t := plan.type_of(s))}, lease)
        commit = plan.vanished(before, ctx=self._reader.context(plan.NO_WINDOW), type_names=names,
                               now=self._clock())
        last_id = await self._store.commit(commit, lease)
        await self._outbox.send(commit.records, last_id, lease)
        metrics.TASKS_VANISHED.inc(len(before))
        log.info("tasks_vanished", tasks=len(before))

    async def _sweep_metrics(self, state: PollState) -> None:
        sweep, now = state.sweep, self._clock()
        if sweep.end is not None:
            metrics.SWEEP_PROGRESS.set(slices.share_read(await self._stored_counts(), sweep.end))
        verified = sweep.previous_pass_started_at
        if verified is not None:
            metrics.STALENESS.set((now - verified).total_seconds())

    # --- shared ------------------------------------------------------------------------------

    def _read_of(self, target: slices.Slice, now: datetime) -> Read:
        """The read in progress of `target`, or a new one (a different slice drops the old)."""
        if self._reading is not None and self._reading[0] == target:
            return self._reading[1]
        read = Read(target.window(self._settings.start_date, _today(now)))
        self._reading = (target, read)
        return read

    def _max_full(self, target: slices.Slice) -> int | None:
        return self._settings.sweep_slice_pages if target.days > 1 else None

    def _is_overflowing(self, target: slices.Slice, read: Read) -> bool:
        if slices.is_overflowing(target, read.stats.full_pages, max_pages=self._settings.sweep_slice_pages):
            self._reading = None
            metrics.SLICES_SPLIT.inc()
            log.info("slice_split", slice=target.describe(), full_pages=read.stats.full_pages)
            return True
        return False

    async def _stored_counts(self) -> dict[date, int]:
        if self._counts is None:
            self._counts = await self._store.created_counts(self._settings.start_date)
        return self._counts

    async def _save(self, state: PollState, lease: Leadership) -> PollState:
        await self._store.commit(Commit(state=state), lease)
        return state


def progress(end: date, started: datetime) -> float:
    """How much of the history a walk has covered, by days from its start back to the floor."""
    total = (_today(started) - slices.FLOOR).days + 1
    return min(1.0, max(0.0, ((_today(started) - end).days) / total))


def _today(now: datetime) -> date:
    return now.astimezone(BEIJING).date()
