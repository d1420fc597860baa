"""Live backfills: the leader reads requested modify-date ranges in its page budget.

`waiqin-poller backfill` records a request in the store; the leader reads it after the window,
day by day, through the same page shell (only real changes against the store are emitted), and
keeps its progress in the request so the command can show it and a new leader can go on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, timedelta

import structlog

from poller import metrics
from poller.models import Backfill, Commit, Window
from poller.pages import PageReader, Read
from poller.store.base import Leadership, SnapshotStore

log = structlog.get_logger(__name__)


class Backfiller:
    """Runs the store's backfill requests, oldest first, a budget of pages at a time."""

    def __init__(self, *, reader: PageReader, store: SnapshotStore,
                 clock: Callable[[], datetime]) -> None:
        self._reader = reader
        self._store = store
        self._clock = clock
        self._reading: tuple[int, date, Read] | None = None  # request id, day, read in progress

    def forget(self) -> None:
        """Drop the read in progress (kept only in memory)."""
        self._reading = None

    async def run(self, lease: Leadership, *, pages: int) -> int:
        """Read pending requests within `pages`; the pages used."""
        used = 0
        for request in await self._store.backfills(active_only=True):
            while used < pages and request.state != "done":
                request, spent = await self._step(request, lease, pages - used)
                used += spent
                if spent == 0:
                    break
            if used >= pages:
                break
        return used

    async def _step(self, request: Backfill, lease: Leadership, pages: int) -> tuple[Backfill, int]:
        day = request.next_day or request.modify_from
        read = self._read_of(request.id, day)
        spent = await self._reader.read(read, lease, pages=pages)
        request = replace(request, state="running", pages=request.pages + spent)
        if read.is_complete:
            self._reading = None
            following = day + timedelta(days=1)
            finished = following > request.modify_to
            request = replace(
                request, next_day=following, tasks=request.tasks + read.stats.tasks,
                events=request.events + read.stats.events,
                state="done" if finished else "running",
                finished_at=self._clock() if finished else None)
            if finished:
                metrics.BACKFILLS_DONE.inc()
                log.info("backfill_completed", backfill=request.id, pages=request.pages,
                         tasks=request.tasks, events=request.events)
        await self._store.commit(Commit(backfill=request), lease)
        return request, spent

    def _read_of(self, request_id: int, day: date) -> Read:
        if self._reading is not None and self._reading[:2] == (request_id, day):
            return self._reading[2]
        read = Read(Window(modify_from=day, modify_to=day))
        self._reading = (request_id, day, read)
        return read
